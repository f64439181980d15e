"""Small pieces the handler modules share: handles both ways, flag checks, drivers.

The leading underscore keeps this module's functions out of the dispatch table.
"""

from __future__ import annotations

from typing import Any

from daemon.dispatch import Call
from drivers.qemu.domain import Domain
from protocol.errors import ErrorCode, ErrorDomain, VirError
from protocol.programs import remote

R = remote().module


def handle_of(dom: Domain) -> Any:
    """The wire handle of a domain: its name, uuid and current id (-1 when off)."""
    return R.remote_nonnull_domain(dom.name, dom.uuid, dom.id)


def dom_of(call: Call, handle: Any) -> Domain:
    """The domain a wire handle names; a stale handle gets libvirt's NO_DOMAIN."""
    return call.driver.lookup_by_uuid(handle.uuid, handle.name)


def check_flags(flags: int, allowed: int, api: str,
                domain: ErrorDomain = ErrorDomain.QEMU) -> None:
    """libvirt's answer to flags a call does not know, named after the driver function."""
    if flags & ~allowed:
        raise VirError(
            ErrorCode.INVALID_ARG,
            f"unsupported flags (0x{flags & ~allowed:x}) in function {api}",
            domain,
        )


def server_driver(call: Call, name: str) -> Any:
    """The server's driver ``name``; without one, the call is not supported, as
    libvirtd answers when that driver is not loaded."""
    driver = call.client.server.driver(name)
    if driver is None:
        raise VirError(ErrorCode.NO_SUPPORT,
                       f"this function is not supported by the connection driver: "
                       f"{call.procedure.api}")
    return driver


def rpc_limit(value: int, limit: int, text: str) -> None:
    """A count beyond what the protocol allows: refused as libvirt's RPC layer refuses it."""
    if value > limit:
        raise VirError(ErrorCode.RPC, text, ErrorDomain.RPC)
