"""The changes the interface driver makes to links: links made, set and
deleted, addresses added and removed, a default route (through drivers.netlink).
Reading the links is rtnl.py's job.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from drivers.interface import rtnl
from drivers.netlink import NetlinkError, run

__all__ = ["NetlinkError", "add_addr", "add_link", "default_route", "del_addr", "delete_link",
           "set_link"]


async def add_link(name: str, kind: str, **attrs: Any) -> int:
    await run(lambda ipr: ipr.link("add", ifname=name, kind=kind, **attrs))
    link = rtnl.get(name)
    if link is None:
        raise NetlinkError(errno.ENODEV)
    return link.index


async def set_link(index: int, **attrs: Any) -> None:
    await run(lambda ipr: ipr.link("set", index=index, **attrs))


async def delete_link(index: int) -> None:
    await run(lambda ipr: ipr.link("del", index=index))


def _prefix(address: str, prefix: int) -> int:
    """A host prefix when none was given, as ip(8) assumes."""
    return prefix or (128 if ":" in address else 32)


async def add_addr(index: int, address: str, prefix: int) -> None:
    prefix = _prefix(address, prefix)
    try:
        await run(lambda ipr: ipr.addr("add", index=index, address=address, prefixlen=prefix))
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise


async def del_addr(index: int, address: str, prefix: int) -> None:
    prefix = _prefix(address, prefix)
    try:
        await run(lambda ipr: ipr.addr("del", index=index, address=address, prefixlen=prefix))
    except NetlinkError as e:
        if e.code not in (errno.EADDRNOTAVAIL, errno.ENODEV):
            raise


async def default_route(index: int, gateway: str) -> None:
    family = socket.AF_INET6 if ":" in gateway else socket.AF_INET
    dst = "::/0" if family == socket.AF_INET6 else "0.0.0.0/0"
    await run(lambda ipr: ipr.route("replace", dst=dst, gateway=gateway, oif=index,
                                     family=family))
