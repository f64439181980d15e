"""Event (de)registration calls (domains, storage pools, networks); delivery is
daemon/events.py's job."""

from __future__ import annotations

from typing import Any

from daemon.dispatch import Call
from daemon.events import (
    CALLBACK_EVENT_IDS,
    LEGACY_EVENT_IDS,
    NETWORK_EVENT_IDS,
    POOL_EVENT_IDS,
    EventRelay,
    Registrations,
)
from protocol.errors import ErrorCode, ErrorDomain, VirError
from protocol.programs import remote

R = remote().module

LIFECYCLE = 0  # VIR_DOMAIN_EVENT_ID_LIFECYCLE, all the oldest API knows


def _relay(call: Call) -> EventRelay:
    return call.client.server.events


def _registrations(call: Call) -> Registrations:
    return _relay(call).registrations(call.client)


def _check_id(event_id: int, valid: range) -> None:
    if event_id not in valid:
        raise VirError(ErrorCode.INTERNAL_ERROR,
                       f"internal error: unsupported event ID {event_id}", ErrorDomain.RPC)


def _add_legacy(call: Call, event_id: int) -> None:
    regs = _registrations(call)
    if regs.tracked(event_id, None):
        raise VirError(ErrorCode.INVALID_ARG,
                       "invalid argument: event callback already tracked")
    regs.legacy.add(event_id)


def _remove_legacy(call: Call, event_id: int) -> None:
    regs = _registrations(call)
    if event_id not in regs.legacy:
        raise VirError(ErrorCode.INTERNAL_ERROR,
                       f"internal error: domain event {event_id} not registered",
                       ErrorDomain.RPC)
    regs.legacy.discard(event_id)


async def connect_domain_event_register(call: Call, args: None) -> Any:
    _add_legacy(call, LIFECYCLE)
    return R.remote_connect_domain_event_register_ret(0)


async def connect_domain_event_deregister(call: Call, args: None) -> Any:
    _remove_legacy(call, LIFECYCLE)
    return R.remote_connect_domain_event_deregister_ret(0)


async def connect_domain_event_register_any(call: Call, args: Any) -> None:
    _check_id(args.eventID, LEGACY_EVENT_IDS)
    _add_legacy(call, args.eventID)


async def connect_domain_event_deregister_any(call: Call, args: Any) -> None:
    _check_id(args.eventID, LEGACY_EVENT_IDS)
    _remove_legacy(call, args.eventID)


async def connect_domain_event_callback_register_any(call: Call, args: Any) -> Any:
    _check_id(args.eventID, CALLBACK_EVENT_IDS)
    uuid = args.dom.uuid if args.dom is not None else None
    regs = _registrations(call)
    if regs.tracked(args.eventID, uuid):
        raise VirError(ErrorCode.INVALID_ARG,
                       "invalid argument: event callback already tracked")
    callback_id = _relay(call).new_callback_id()
    regs.callbacks[callback_id] = (args.eventID, uuid)
    return R.remote_connect_domain_event_callback_register_any_ret(callback_id)


async def connect_domain_event_callback_deregister_any(call: Call, args: Any) -> None:
    regs = _registrations(call)
    if regs.callbacks.pop(args.callbackID, None) is None:
        raise VirError(ErrorCode.INTERNAL_ERROR,
                       f"internal error: domain event callback {args.callbackID} "
                       f"not registered", ErrorDomain.RPC)


# -- storage pools and networks: one callback table each ------------------------------


def _register(call: Call, table: dict[int, tuple[int, bytes | None]], event_id: int,
              valid: range, what: str, uuid: bytes | None) -> int:
    if event_id not in valid:
        raise VirError(ErrorCode.INTERNAL_ERROR,
                       f"internal error: unsupported {what} event ID {event_id}",
                       ErrorDomain.RPC)
    callback_id = _relay(call).new_callback_id()
    table[callback_id] = (event_id, uuid)
    return callback_id


def _deregister(table: dict[int, tuple[int, bytes | None]], callback_id: int,
                what: str) -> None:
    if table.pop(callback_id, None) is None:
        raise VirError(ErrorCode.INTERNAL_ERROR,
                       f"internal error: {what} event callback {callback_id} not registered",
                       ErrorDomain.RPC)


async def connect_storage_pool_event_register_any(call: Call, args: Any) -> Any:
    uuid = args.pool.uuid if args.pool is not None else None
    callback_id = _register(call, _registrations(call).pool_callbacks, args.eventID,
                            POOL_EVENT_IDS, "storage pool", uuid)
    return R.remote_connect_storage_pool_event_register_any_ret(callback_id)


async def connect_storage_pool_event_deregister_any(call: Call, args: Any) -> None:
    _deregister(_registrations(call).pool_callbacks, args.callbackID, "storage pool")


async def connect_network_event_register_any(call: Call, args: Any) -> Any:
    uuid = args.net.uuid if args.net is not None else None
    callback_id = _register(call, _registrations(call).network_callbacks, args.eventID,
                            NETWORK_EVENT_IDS, "network", uuid)
    return R.remote_connect_network_event_register_any_ret(callback_id)


async def connect_network_event_deregister_any(call: Call, args: Any) -> None:
    _deregister(_registrations(call).network_callbacks, args.callbackID, "network")
