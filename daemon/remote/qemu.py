"""The QEMU program (libvirt-qemu.so): raw monitor commands and monitor events.

These calls go around libvirt's model of the guest, which is why libvirtd
marks a guest that got a raw command as tainted; we note it the same way, in
the daemon's log and the guest's.
"""

from __future__ import annotations

import json
import logging
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from daemon.dispatch import Call
from daemon.remote._common import check_flags, dom_of
from drivers.qemu import agent
from drivers.qemu.domain import Domain, running_process
from drivers.qemu.process import append_log, log_timestamp
from protocol.errors import ErrorCode, ErrorDomain, VirError
from protocol.programs import qemu

if TYPE_CHECKING:
    from daemon.client import Client
    from drivers.events import EventBus

log = logging.getLogger(__name__)

Q = qemu().module

MONITOR_COMMAND_HMP = 1 << 0
EVENT_REGEX = 1 << 0
EVENT_NOCASE = 1 << 1


# -- raw monitor commands ---------------------------------------------------------

# (uuid, id) of the runs already marked tainted: libvirtd says it once per run.
_tainted: set[tuple[bytes, int]] = set()
_command_ids = iter(range(1, 1 << 62))


def _taint(call: Call, dom: Domain) -> None:
    key = (dom.uuid, dom.id)
    if key in _tainted:
        return
    _tainted.add(key)
    log.warning("Domain id=%d name='%s' uuid=%s is tainted: custom-monitor",
                dom.id, dom.name, dom.uuid_str)
    try:
        append_log(call.driver.dirs.log_dir / f"{dom.name}.log",
                   f"{log_timestamp()}: Domain id={dom.id} is tainted: custom-monitor\n")
    except OSError:
        pass


async def qemu_domain_monitor_command(call: Call, args: Any) -> Any:
    check_flags(args.flags, MONITOR_COMMAND_HMP, "qemuDomainQemuMonitorCommand")
    dom = dom_of(call, args.dom)
    proc = running_process(dom)
    _taint(call, dom)
    if args.flags & MONITOR_COMMAND_HMP:
        result = await proc.monitor.execute("human-monitor-command",
                                            {"command-line": args.cmd})
        return Q.qemu_domain_monitor_command_ret(str(result))
    try:
        msg = json.loads(args.cmd)
    except ValueError as e:
        raise VirError(ErrorCode.INTERNAL_ERROR,
                       f"internal error: cannot parse json {args.cmd}: {e}",
                       ErrorDomain.NONE) from None
    if not isinstance(msg, dict):
        raise VirError(ErrorCode.INTERNAL_ERROR,
                       f"internal error: cannot parse json {args.cmd}: not an object",
                       ErrorDomain.NONE)
    msg.pop("id", None)
    reply = dict(await proc.monitor.execute_raw(msg))
    reply["id"] = f"libvirt-{next(_command_ids)}"
    return Q.qemu_domain_monitor_command_ret(json.dumps(reply, separators=(",", ":")))


# -- monitor events ----------------------------------------------------------------


@dataclass
class _Filter:
    """One registration: which domain (None: all) and which events (None: all)."""

    uuid: bytes | None
    match: Callable[[str], bool] | None


@dataclass
class _Relay:
    """Monitor event registrations of all clients of one driver's bus."""

    clients: dict[Client, dict[int, _Filter]] = field(default_factory=dict)
    next_id: int = 1

    def on_event(self, kind: str, dom: Any, **data: Any) -> None:
        if kind != "qemu-monitor-event" or not self.clients:
            return
        name = data["event"]
        details = json.dumps(data["data"], separators=(",", ":")) if data["data"] else None
        handle = Q.remote_nonnull_domain(dom.name, dom.uuid, dom.id)
        for client, filters in list(self.clients.items()):
            if client.closed:
                continue
            for callback_id, f in filters.items():
                if f.uuid is not None and f.uuid != dom.uuid:
                    continue
                if f.match is not None and not f.match(name):
                    continue
                msg = Q.qemu_domain_monitor_event_msg(callback_id, handle, name,
                                                      data["seconds"], data["micros"], details)
                client.send_message(Q.QEMU_PROGRAM, Q.QEMU_PROTOCOL_VERSION,
                                    Q.QEMU_PROC_DOMAIN_MONITOR_EVENT,
                                    Q.qemu_domain_monitor_event_msg_codec.encode(msg))

    def forget(self, client: Client) -> None:
        self.clients.pop(client, None)


_relays: weakref.WeakKeyDictionary[EventBus, _Relay] = weakref.WeakKeyDictionary()


def _relay(call: Call) -> _Relay:
    bus = call.driver.bus
    relay = _relays.get(bus)
    if relay is None:
        relay = _relays[bus] = _Relay()
        bus.subscribe(relay.on_event)
    return relay


def _matcher(event: str | None, flags: int) -> Callable[[str], bool] | None:
    if event is None:
        return None
    if flags & EVENT_REGEX:
        try:
            pattern = re.compile(event, re.IGNORECASE if flags & EVENT_NOCASE else 0)
        except re.error as e:
            raise VirError(ErrorCode.INVALID_ARG,
                           f"invalid argument: failed to compile regex '{event}': {e}",
                           ErrorDomain.NONE) from None
        return lambda name: pattern.search(name) is not None
    if flags & EVENT_NOCASE:
        folded = event.casefold()
        return lambda name: name.casefold() == folded
    return lambda name: name == event


async def qemu_connect_domain_monitor_event_register(call: Call, args: Any) -> Any:
    check_flags(args.flags, EVENT_REGEX | EVENT_NOCASE,
                 "virDomainQemuMonitorEventStateRegisterID")
    uuid = None
    if args.dom is not None:
        uuid = dom_of(call, args.dom).uuid
    match = _matcher(args.event, args.flags)
    relay = _relay(call)
    filters = relay.clients.get(call.client)
    if filters is None:
        filters = relay.clients[call.client] = {}
        call.client.on_close.append(relay.forget)
    callback_id = relay.next_id
    relay.next_id += 1
    filters[callback_id] = _Filter(uuid, match)
    return Q.qemu_connect_domain_monitor_event_register_ret(callback_id)


async def qemu_connect_domain_monitor_event_deregister(call: Call, args: Any) -> None:
    filters = _relay(call).clients.get(call.client, {})
    if filters.pop(args.callbackID, None) is None:
        raise VirError(ErrorCode.INTERNAL_ERROR,
                       f"internal error: qemu monitor event callback {args.callbackID}"
                       " not registered", ErrorDomain.RPC)


# -- guest agent -------------------------------------------------------------------


async def qemu_domain_agent_command(call: Call, args: Any) -> Any:
    check_flags(args.flags, 0, "qemuDomainQemuAgentCommand")
    dom = dom_of(call, args.dom)
    running_process(dom)
    result = await agent.arbitrary_command(dom, args.cmd, args.timeout)
    return Q.qemu_domain_agent_command_ret(result)
