"""The changes the interface driver makes to links, through pyroute2: links made,
set and deleted, addresses added and removed, a default route.

pyroute2 drives its netlink socket through an asyncio datagram endpoint, which
uvloop cannot open for AF_NETLINK; so this work runs on one thread of its own,
on a plain selector loop that pyroute2 is handed explicitly. Reading the links
is rtnl.py's job.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from drivers.interface import rtnl

__all__ = ["NetlinkError", "add_addr", "add_link", "default_route", "del_addr", "delete_link",
           "describe", "set_link"]

T = TypeVar("T")

_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")


class _Socket:
    """The one IPRoute, on a selector loop of its own, made and used on _THREAD only."""

    ipr: IPRoute | None = None

    @classmethod
    def get(cls) -> IPRoute:
        if cls.ipr is None:
            cls.ipr = IPRoute(use_event_loop=asyncio.SelectorEventLoop())
        return cls.ipr

    @classmethod
    def reset(cls) -> None:
        """After a failure that is not the kernel's answer: start afresh next time."""
        ipr, cls.ipr = cls.ipr, None
        if ipr is not None:
            loop = ipr.event_loop
            try:
                ipr.close()
            finally:
                loop.close()


def _on_thread(fn: Callable[[IPRoute], T]) -> T:
    try:
        return fn(_Socket.get())
    except NetlinkError:
        raise
    except Exception:
        _Socket.reset()
        raise


async def _run(fn: Callable[[IPRoute], T]) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_THREAD, _on_thread, fn)


def describe(e: NetlinkError) -> str:
    return os.strerror(e.code) if e.code else str(e)


async def add_link(name: str, kind: str, **attrs: Any) -> int:
    await _run(lambda ipr: ipr.link("add", ifname=name, kind=kind, **attrs))
    link = rtnl.get(name)
    if link is None:
        raise NetlinkError(errno.ENODEV)
    return link.index


async def set_link(index: int, **attrs: Any) -> None:
    await _run(lambda ipr: ipr.link("set", index=index, **attrs))


async def delete_link(index: int) -> None:
    await _run(lambda ipr: ipr.link("del", index=index))


def _prefix(address: str, prefix: int) -> int:
    """A host prefix when none was given, as ip(8) assumes."""
    return prefix or (128 if ":" in address else 32)


async def add_addr(index: int, address: str, prefix: int) -> None:
    prefix = _prefix(address, prefix)
    try:
        await _run(lambda ipr: ipr.addr("add", index=index, address=address, prefixlen=prefix))
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise


async def del_addr(index: int, address: str, prefix: int) -> None:
    prefix = _prefix(address, prefix)
    try:
        await _run(lambda ipr: ipr.addr("del", index=index, address=address, prefixlen=prefix))
    except NetlinkError as e:
        if e.code not in (errno.EADDRNOTAVAIL, errno.ENODEV):
            raise


async def default_route(index: int, gateway: str) -> None:
    family = socket.AF_INET6 if ":" in gateway else socket.AF_INET
    dst = "::/0" if family == socket.AF_INET6 else "0.0.0.0/0"
    await _run(lambda ipr: ipr.route("replace", dst=dst, gateway=gateway, oif=index,
                                     family=family))
