"""The kernel's links and addresses as plain data, read with rtnetlink dumps.

Every call reads afresh: a dump of a few dozen links takes well under a
millisecond, and a cache would only have to learn about links that others add
and remove. The reading is done here on a plain netlink socket and decodes only
the attributes the driver shows: pyroute2 decodes every attribute of every link
and took 1-4 ms per request (it still makes the changes, see netlink.py). The
kernel answers a dump from within recv(), so nothing here waits on anything.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import struct
from dataclasses import dataclass, field

IFF_UP = 0x1

_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_RTM_NEWLINK, _RTM_GETLINK, _RTM_NEWADDR, _RTM_GETADDR = 16, 18, 20, 22
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_IFLA_ADDRESS, _IFLA_IFNAME, _IFLA_MTU, _IFLA_LINK = 1, 3, 4, 5
_IFLA_MASTER, _IFLA_OPERSTATE, _IFLA_LINKINFO = 10, 16, 18
_IFLA_INFO_KIND, _IFLA_INFO_DATA = 1, 2
_IFLA_BR_FORWARD_DELAY, _IFLA_BR_STP_STATE = 1, 5
_IFLA_VLAN_ID = 1
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
#: IFLA_BOND_* numbers of the bond options shown, by our own names.
_BOND_ATTRS = {1: "mode", 3: "miimon", 4: "updelay", 5: "downdelay", 6: "use_carrier",
               7: "arp_interval", 8: "arp_ip_target", 9: "arp_validate"}
_OPERSTATES = ("unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up")

_HDR = struct.Struct("=IHHII")  # nlmsghdr
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg
_RTA = struct.Struct("=HH")
_seq = itertools.count(1)


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
    bond: dict[str, object] = field(default_factory=dict)
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


class KernelError(OSError):
    """The kernel refused a request (an NLMSG_ERROR with this errno)."""


def _attrs(data: bytes | memoryview, offset: int = 0) -> dict[int, memoryview]:
    """The attributes from ``offset`` to the end, by type (nested flag dropped)."""
    view = memoryview(data)
    found = {}
    while offset + 4 <= len(view):
        length, kind = _RTA.unpack_from(view, offset)
        if length < 4:
            break
        found[kind & 0x3FFF] = view[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return found


def _u32(raw: memoryview | None) -> int:
    return struct.unpack_from("=I", raw)[0] if raw is not None and len(raw) >= 4 else 0


def _text(raw: memoryview) -> str:
    return bytes(raw).split(b"\0", 1)[0].decode(errors="replace")


def _link(body: memoryview) -> Link:
    _family, _type, index, flags, _change = _IFINFO.unpack_from(body)
    a = _attrs(body, _IFINFO.size)
    mac = a.get(_IFLA_ADDRESS)
    state = a.get(_IFLA_OPERSTATE)
    link = Link(index=index, name=_text(a[_IFLA_IFNAME]),
                mac=":".join(f"{b:02x}" for b in mac) if mac is not None else "",
                mtu=_u32(a.get(_IFLA_MTU)),
                operstate=_OPERSTATES[state[0]] if state is not None and
                state[0] < len(_OPERSTATES) else "unknown",
                up=bool(flags & IFF_UP), kind=None,
                master=_u32(a[_IFLA_MASTER]) if _IFLA_MASTER in a else None,
                parent=_u32(a[_IFLA_LINK]) if _IFLA_LINK in a else None)
    if _IFLA_LINKINFO in a:
        info = _attrs(a[_IFLA_LINKINFO])
        link.kind = _text(info[_IFLA_INFO_KIND]) if _IFLA_INFO_KIND in info else None
        data = _attrs(info[_IFLA_INFO_DATA]) if _IFLA_INFO_DATA in info else {}
        if link.kind == "bridge":
            link.forward_delay = _u32(data.get(_IFLA_BR_FORWARD_DELAY))
            link.stp_state = _u32(data.get(_IFLA_BR_STP_STATE))
        elif link.kind == "vlan" and _IFLA_VLAN_ID in data:
            link.vlan_id = struct.unpack_from("=H", data[_IFLA_VLAN_ID])[0]
        elif link.kind == "bond":
            link.bond = _bond(data)
    return link


def _bond(data: dict[int, memoryview]) -> dict[str, object]:
    out: dict[str, object] = {}
    for number, name in _BOND_ATTRS.items():
        raw = data.get(number)
        if raw is None:
            continue
        if name == "arp_ip_target":
            out[name] = [socket.inet_ntop(socket.AF_INET, bytes(v))
                         for v in _attrs(raw).values() if len(v) == 4]
        else:
            out[name] = raw[0] if len(raw) == 1 else _u32(raw)
    return out


def _addr(body: memoryview) -> tuple[int, Addr] | None:
    family, prefix, _flags, scope, index = _IFADDR.unpack_from(body)
    a = _attrs(body, _IFADDR.size)
    raw = a.get(_IFA_LOCAL) or a.get(_IFA_ADDRESS)
    if raw is None or family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return index, Addr(family, socket.inet_ntop(family, bytes(raw)), prefix, scope)


def _request(kind: int, flags: int, body: bytes) -> list[tuple[int, memoryview]]:
    """Send one request, return the (type, body) of every answer up to its end."""
    seq = next(_seq)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        sock.send(_HDR.pack(_HDR.size + len(body), kind, flags | _NLM_F_REQUEST, seq, 0) + body)
        answers: list[tuple[int, memoryview]] = []
        while True:
            data = memoryview(sock.recv(1 << 16))
            offset = 0
            while offset + _HDR.size <= len(data):
                length, mtype, _f, mseq, _pid = _HDR.unpack_from(data, offset)
                body_view = data[offset + _HDR.size:offset + length]
                offset += (length + 3) & ~3
                if mseq != seq:
                    continue
                if mtype == _NLMSG_DONE:
                    return answers
                if mtype == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", body_view)[0]
                    if code:
                        raise KernelError(code, os.strerror(code))
                    return answers
                answers.append((mtype, body_view))
            if not flags & _NLM_F_DUMP and answers:
                return answers


def snapshot(addresses: bool = False) -> Snapshot:
    """Every link; with their addresses when asked (a second dump)."""
    links = {}
    for mtype, body in _request(_RTM_GETLINK, _NLM_F_DUMP, _IFINFO.pack(0, 0, 0, 0, 0)):
        if mtype == _RTM_NEWLINK:
            link = _link(body)
            links[link.name] = link
    if addresses:
        by_index = {link.index: link for link in links.values()}
        for mtype, body in _request(_RTM_GETADDR, _NLM_F_DUMP, _IFADDR.pack(0, 0, 0, 0, 0)):
            found = _addr(body) if mtype == _RTM_NEWADDR else None
            if found is not None and found[0] in by_index:
                by_index[found[0]].addrs.append(found[1])
    return Snapshot(links)


def get(name: str) -> Link | None:
    """One link by name, or None."""
    raw = name.encode() + b"\0"
    attr = _RTA.pack(_RTA.size + len(raw), _IFLA_IFNAME) + raw
    attr += b"\0" * (-len(attr) % 4)
    try:
        answers = _request(_RTM_GETLINK, 0, _IFINFO.pack(0, 0, 0, 0, 0) + attr)
    except KernelError as e:
        if e.errno in (errno.ENODEV, errno.ERANGE):  # ERANGE: a name too long to exist
            return None
        raise
    return _link(answers[0][1]) if answers else None


def link_speed(name: str) -> int:
    """The speed the kernel reports (as libvirt reads it, -1 wraps to 2**32-1); 0
    when the device has none."""
    try:
        with open(f"/sys/class/net/{name}/speed") as f:
            text = f.read().strip()
        return int(text) & 0xFFFFFFFF
    except (OSError, ValueError):
        return 0
