"""The Linux bridge of a virtual network, through netlink (drivers.netlink).

A bridge we make carries the alias ``aiovirtd network NAME``: after a crash
that mark is the proof that a leftover bridge is ours to take back. A bridge
of that name without the mark, or with ports still attached, is someone
else's (or still in use), and starting the network says how to free the name.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivers.netlink import Links, NetlinkError, run
from drivers.network.dnsmasq import interface
from protocol.errors import ErrorCode, ErrorDomain, VirError

if TYPE_CHECKING:
    from drivers.network.network_xml import NetworkDef, RouteDef

SYSCTL = Path("/proc/sys/net")


def mark(net: NetworkDef) -> str:
    return f"aiovirtd network {net.name}"


def _system_error(message: str, err: NetlinkError | OSError) -> VirError:
    code = err.code if isinstance(err, NetlinkError) else err.errno
    return VirError(ErrorCode.SYSTEM_ERROR, f"{message}: {os.strerror(code or 0)}",
                    ErrorDomain.NONE)


def _link(ipr: Links, name: str) -> Any:
    """The link message of ``name``, None when there is none."""
    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            return None
        raise


def _ports(ipr: Links, index: int) -> list[str]:
    return [link.get("ifname") for link in ipr.get_links() if link.get("master") == index]


def _ours(link: Any, net: NetworkDef) -> bool:
    info = link.get("IFLA_LINKINFO")
    kind = info.get("IFLA_INFO_KIND") if info else None
    return kind == "bridge" and link.get("ifalias") == mark(net)


async def state(net: NetworkDef) -> tuple[bool, list[str]]:
    """Whether the network's bridge is there and marked ours, and its ports."""
    def look(ipr: Links) -> tuple[bool, list[str]]:
        link = _link(ipr, net.bridge)
        if link is None:
            return False, []
        return _ours(link, net), _ports(ipr, link["index"])
    return await run(look)


async def claim(net: NetworkDef) -> None:
    """Make sure the bridge name is free: a leftover bridge of ours with nothing
    on it is deleted, any other device of that name is refused."""
    name = net.bridge

    def look(ipr: Links) -> tuple[bool, list[str]] | None:
        link = _link(ipr, name)
        if link is None:
            return None
        ours, ports = _ours(link, net), _ports(ipr, link["index"])
        if ours and not ports:
            ipr.link("del", index=link["index"])
            return None
        return ours, ports

    found = await run(look)
    if found is None:
        return
    ours, ports = found
    prefix = f"error creating bridge interface {name}: {os.strerror(errno.EEXIST)}: "
    if not ours:
        raise VirError(ErrorCode.SYSTEM_ERROR,
                       f"{prefix}bridge '{name}' already exists and is not in use by this "
                       f"daemon; remove it with 'ip link delete {name}' or choose another "
                       "<bridge name=...>", ErrorDomain.NONE)
    raise VirError(ErrorCode.SYSTEM_ERROR,
                   f"{prefix}bridge '{name}' was left by an earlier run of this daemon "
                   f"and still has ports ({', '.join(ports)}); detach them with "
                   f"'ip link set DEV nomaster' or remove it with 'ip link delete {name}'",
                   ErrorDomain.NONE)


def check_routes(net: NetworkDef, table: str | None = None) -> None:
    """Refuse, as libvirtd does, an IPv4 subnet (or static route) that the host
    already routes somewhere: the network would cut that route off. ``table`` is
    /proc/net/route's text."""
    if table is None:
        try:
            table = Path("/proc/net/route").read_text()
        except OSError:
            return
    for line in table.splitlines()[1:]:
        words = line.split()
        try:
            dest, mask = (ipaddress.IPv4Address(int.from_bytes(bytes.fromhex(w), "little"))
                          for w in (words[1], words[7]))
            routed = ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)
        except (IndexError, ValueError):
            continue
        if any(ip.network == routed for ip in net.ipv4()):
            raise VirError(ErrorCode.INTERNAL_ERROR, "internal error: Network is already in "
                           f"use by interface {words[0]}", ErrorDomain.NONE)
        for route in net.routes:
            mine = _route_dst(route)
            if mine == routed:
                raise VirError(ErrorCode.INTERNAL_ERROR,
                               f"internal error: Route address '{mine.network_address}' "
                               f"conflicts with IP address for '{words[0]}'", ErrorDomain.NONE)


def _route_dst(route: RouteDef) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    mask = route.prefix if route.prefix is not None else route.netmask
    try:
        return ipaddress.ip_network(f"{route.address}/{mask}", strict=False)
    except ValueError:
        return None


def _sysctl(path: Path, value: str) -> None:
    path.write_text(f"{value}\n")


def _ipv6_sysctls(net: NetworkDef) -> None:
    """IPv6 off on a bridge without IPv6 addresses; never router advertisements
    or autoconfiguration from guests on one with them."""
    conf = SYSCTL / "ipv6/conf" / net.bridge
    if not (conf / "disable_ipv6").exists():
        return
    v6 = any(ip.is_v6 for ip in net.ips)
    for field, value in (("disable_ipv6", "0" if v6 else "1"), ("accept_ra", "0"),
                         ("autoconf", "0")):
        try:
            _sysctl(conf / field, value)
        except OSError as e:
            raise _system_error(f"cannot write to '{conf / field}' on bridge "
                                f"'{net.bridge}'", e) from None


def enable_forwarding(net: NetworkDef) -> None:
    """Forwarding on for each family the network has (nat, route, open)."""
    try:
        if net.ipv4():
            _sysctl(SYSCTL / "ipv4/ip_forward", "1")
        if net.ipv6_addrs():
            _sysctl(SYSCTL / "ipv6/conf/all/forwarding", "1")
    except OSError as e:
        raise _system_error("failed to enable IP forwarding", e) from None


def _build(ipr: Links, net: NetworkDef) -> None:
    name = net.bridge
    spec: dict[str, Any] = {"ifname": name, "kind": "bridge",
                            "br_stp_state": 1 if net.stp else 0,
                            "br_forward_delay": net.delay * 100}
    if net.mac:
        spec["address"] = net.mac
    try:
        ipr.link("add", **spec)
    except NetlinkError as e:
        raise _system_error(f"error creating bridge interface {name}", e) from None
    index = _link(ipr, name)["index"]
    ipr.link("set", index=index, ifalias=mark(net))
    if net.mtu:
        try:
            ipr.link("set", index=index, mtu=net.mtu)
        except NetlinkError as e:
            raise _system_error(f"cannot set interface MTU on '{name}'", e) from None
    _ipv6_sysctls(net)
    for ip in net.ips:
        iface = interface(ip)
        extra = {"broadcast": str(iface.network.broadcast_address)} \
            if iface.version == 4 and iface.network.prefixlen < 31 else {}
        try:
            ipr.addr("add", index=index, address=str(iface.ip),
                     prefixlen=iface.network.prefixlen, **extra)
        except NetlinkError as e:
            raise _system_error(f"Failed to add IP address {iface} to {name}", e) from None
    try:
        ipr.link("set", index=index, state="up")
    except NetlinkError as e:
        raise _system_error(f"failed to set interface {name} up", e) from None
    for route in net.routes:
        # libvirtd goes on without a route it could not add
        dst = _route_dst(route)
        if dst is None:
            continue
        with contextlib.suppress(NetlinkError):
            ipr.route("add", dst=str(dst), gateway=route.gateway, oif=index,
                      priority=route.metric or 1)


async def create(net: NetworkDef) -> None:
    """The bridge with its MAC, MTU, STP, addresses and routes, up."""
    await run(lambda ipr: _build(ipr, net))


async def delete(net: NetworkDef) -> None:
    """Down and gone; only a bridge that is ours, and nothing when it is already gone."""
    def drop(ipr: Links) -> None:
        link = _link(ipr, net.bridge)
        if link is None or link.get("ifalias") != mark(net):
            return
        with contextlib.suppress(NetlinkError):
            ipr.link("set", index=link["index"], state="down")
        with contextlib.suppress(NetlinkError):
            ipr.link("del", index=link["index"])
    await run(drop)
