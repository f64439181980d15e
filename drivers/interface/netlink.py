"""The kernel's links and addresses as plain data, read over rtnetlink, and the
few changes the interface driver makes to them.

Everything is read fresh for each call: netlink dumps are cheap (a few ms), and
a cache would only have to learn about links that others add and remove.

pyroute2 drives its netlink socket through an asyncio datagram endpoint, which
uvloop cannot open for AF_NETLINK; so all netlink work runs on one thread of its
own, on a plain selector loop that pyroute2 is handed explicitly.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

T = TypeVar("T")

_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")

IFF_UP = 0x1


@dataclass
class Addr:
    family: int  # socket.AF_INET or AF_INET6
    address: str
    prefix: int
    scope: int  # 0 global, 253 link, 254 host


@dataclass
class Link:
    index: int
    name: str
    mac: str
    mtu: int
    operstate: str  # the kernel's operstate, lower case ("up", "down", "unknown", ...)
    up: bool  # administratively up (IFF_UP)
    kind: str | None  # "bridge", "bond", "vlan", "tun", "veth", ... or None
    master: int | None
    parent: int | None  # IFLA_LINK: a vlan's real device
    stp_state: int = 0
    forward_delay: int = 0  # centiseconds, as the kernel keeps it
    vlan_id: int | None = None
    bond: dict[str, Any] = field(default_factory=dict)
    addrs: list[Addr] = field(default_factory=list)


@dataclass
class Snapshot:
    """All links of this network namespace at one moment, by name."""

    links: dict[str, Link]

    def by_index(self, index: int | None) -> Link | None:
        for link in self.links.values():
            if link.index == index:
                return link
        return None

    def ports(self, link: Link) -> list[Link]:
        """The links enslaved to ``link``, in name order."""
        return sorted((lk for lk in self.links.values() if lk.master == link.index),
                      key=lambda lk: lk.name.encode())


def _link(msg: Any) -> Link:
    info = msg.get("IFLA_LINKINFO")
    kind = info.get("IFLA_INFO_KIND") if info is not None else None
    data = info.get("IFLA_INFO_DATA") if info is not None else None
    link = Link(index=msg["index"], name=msg.get("IFLA_IFNAME"),
                mac=msg.get("IFLA_ADDRESS") or "", mtu=msg.get("IFLA_MTU") or 0,
                operstate=(msg.get("IFLA_OPERSTATE") or "unknown").lower(),
                up=bool(msg["flags"] & IFF_UP), kind=kind,
                master=msg.get("IFLA_MASTER"), parent=msg.get("IFLA_LINK"))
    if data is not None and kind == "bridge":
        link.stp_state = data.get("IFLA_BR_STP_STATE") or 0
        link.forward_delay = data.get("IFLA_BR_FORWARD_DELAY") or 0
    elif data is not None and kind == "vlan":
        link.vlan_id = data.get("IFLA_VLAN_ID")
    elif data is not None and kind == "bond":
        link.bond = {name: value for name, value in data["attrs"]}
    return link


async def _run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_THREAD, functools.partial(fn, *args, **kwargs))


class _Socket:
    """An IPRoute on a selector loop of its own; made, used and closed on _THREAD."""

    def __init__(self) -> None:
        self.loop = asyncio.SelectorEventLoop()
        self.ipr = IPRoute(use_event_loop=self.loop)

    def close(self) -> None:
        try:
            self.ipr.close()
        finally:
            self.loop.close()


def _snapshot() -> Snapshot:
    sock = _Socket()
    try:
        links = {}
        for msg in sock.ipr.get_links():
            link = _link(msg)
            links[link.name] = link
        by_index = {link.index: link for link in links.values()}
        for msg in sock.ipr.get_addr():
            owner = by_index.get(msg["index"])
            address = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
            if owner is not None and address:
                owner.addrs.append(Addr(msg["family"], address, msg["prefixlen"], msg["scope"]))
    finally:
        sock.close()
    return Snapshot(links)


async def snapshot() -> Snapshot:
    return await _run(_snapshot)


def link_speed(name: str) -> int:
    """The speed the kernel reports (as libvirt reads it, -1 wraps to 2**32-1); 0
    when the device has none."""
    try:
        with open(f"/sys/class/net/{name}/speed") as f:
            text = f.read().strip()
        return int(text) & 0xFFFFFFFF
    except (OSError, ValueError):
        return 0


def describe(e: NetlinkError) -> str:
    return os.strerror(e.code) if e.code else str(e)


class Session:
    """One netlink socket for a sequence of changes (``async with Session() as nl``)."""

    async def __aenter__(self) -> Self:
        self._sock = await _run(_Socket)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await _run(self._sock.close)

    async def index(self, name: str) -> int | None:
        found = await _run(self._sock.ipr.link_lookup, ifname=name)
        return found[0] if found else None

    async def add(self, name: str, kind: str, **attrs: Any) -> int:
        await _run(self._sock.ipr.link, "add", ifname=name, kind=kind, **attrs)
        index = await self.index(name)
        if index is None:
            raise NetlinkError(errno.ENODEV)
        return index

    async def set(self, index: int, **attrs: Any) -> None:
        await _run(self._sock.ipr.link, "set", index=index, **attrs)

    async def delete(self, index: int) -> None:
        await _run(self._sock.ipr.link, "del", index=index)

    async def add_addr(self, index: int, address: str, prefix: int) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        if not prefix:
            prefix = 128 if family == socket.AF_INET6 else 32
        try:
            await _run(self._sock.ipr.addr, "add", index=index, address=address,
                       prefixlen=prefix)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise

    async def del_addr(self, index: int, address: str, prefix: int) -> None:
        try:
            await _run(self._sock.ipr.addr, "del", index=index, address=address,
                       prefixlen=prefix)
        except NetlinkError as e:
            if e.code not in (errno.EADDRNOTAVAIL, errno.ENODEV):
                raise

    async def default_route(self, index: int, gateway: str) -> None:
        family = socket.AF_INET6 if ":" in gateway else socket.AF_INET
        dst = "::/0" if family == socket.AF_INET6 else "0.0.0.0/0"
        await _run(self._sock.ipr.route, "replace", dst=dst, gateway=gateway, oif=index,
                   family=family)
