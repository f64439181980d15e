"""Starting and stopping a defined interface through netlink, as ifup and ifdown
did for netcf: virtual devices (bridge, bond, vlan) made and deleted, members
taken in and let go, MTU, static addresses and a default route set.

A start that fails part way deletes the devices it made, so nothing is left
half built. The kernel's refusals name the step that failed.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
from collections.abc import Awaitable

from drivers.interface import netlink, rtnl
from drivers.interface.iface_xml import BOND_MODES, InterfaceDef
from protocol.errors import ErrorCode, ErrorDomain, VirError


class _Failed(Exception):
    """One step failed; the text says which and why."""


async def _step(what: str, change: Awaitable[object]) -> None:
    try:
        await change
    except netlink.NetlinkError as e:
        raise _Failed(f"{what}: {e.describe()}") from None


def _internal(message: str) -> VirError:
    return VirError(ErrorCode.INTERNAL_ERROR, f"internal error: {message}",
                    ErrorDomain.INTERFACE)


async def start(d: InterfaceDef) -> None:
    """Make the device if it is virtual, take in its members, set MTU and static
    addresses, bring it up. DHCP is refused: the daemon runs no DHCP client."""
    for proto in d.protocols:
        if proto.dhcp:
            raise VirError(ErrorCode.CONFIG_UNSUPPORTED,
                           f"unsupported configuration: failed to create (start) interface "
                           f"{d.name}: DHCP ({proto.family}) on host interfaces is not "
                           f"supported, use static addresses", ErrorDomain.INTERFACE)
        _check_addresses(d.name, proto.family, [ip.address for ip in proto.ips]
                         + ([proto.gateway] if proto.gateway else []))
    created: list[int] = []
    try:
        index = await _device(d, created)
        for member in d.members:
            await _enslave(member, index, d, created)
        if d.mtu:
            await _step(f"cannot set MTU of {d.name}", netlink.set_link(index, mtu=d.mtu))
        for proto in d.protocols:
            for ip in proto.ips:
                await _step(f"cannot add address {ip.address} to {d.name}",
                            netlink.add_addr(index, ip.address, ip.prefix))
        await _step(f"cannot bring up {d.name}", netlink.set_link(index, state="up"))
        for proto in d.protocols:
            if proto.gateway:
                await _step(f"cannot add a route via {proto.gateway}",
                            netlink.default_route(index, proto.gateway))
    except (_Failed, netlink.NetlinkError) as e:
        for made in reversed(created):
            with contextlib.suppress(netlink.NetlinkError):
                await netlink.delete_link(made)
        detail = e.describe() if isinstance(e, netlink.NetlinkError) else str(e)
        raise _internal(f"failed to create (start) interface {d.name}: {detail}") from None


def _check_addresses(name: str | None, family: str, addresses: list[str]) -> None:
    version = 4 if family == "ipv4" else 6
    for text in addresses:
        try:
            ok = ipaddress.ip_address(text).version == version
        except ValueError:
            ok = False
        if not ok:
            raise _internal(f"failed to create (start) interface {name}: '{text}' is not an "
                            f"{family} address")


async def _device(d: InterfaceDef, created: list[int]) -> int:
    """The index of ``d``'s device, made first when it is a missing virtual one."""
    name = d.name or ""
    index = _index(name)
    if d.type == "ethernet" or (index is not None and d.type != "bridge"):
        if index is None:
            raise _Failed(f"device {name} does not exist")
        return index
    if d.type == "bridge":
        attrs: dict[str, int] = {}
        if d.delay is not None:
            try:
                attrs["br_forward_delay"] = round(float(d.delay) * 100)
            except ValueError:
                raise _Failed(f"invalid bridge forward delay '{d.delay}'") from None
        if d.stp is not None:
            attrs["br_stp_state"] = int(d.stp)
        if index is None:
            return await _add(name, "bridge", created, **attrs)
        if attrs:
            await _step(f"cannot configure bridge {name}",
                        netlink.set_link(index, kind="bridge", **attrs))
        return index
    if d.type == "bond":
        attrs = {}
        bond = d.bond
        if bond is not None and bond.mode:
            attrs["bond_mode"] = BOND_MODES.index(bond.mode)
        if bond is not None and bond.monitor == "mii":
            attrs.update(bond_miimon=bond.freq, bond_updelay=bond.updelay,
                         bond_downdelay=bond.downdelay)
        elif bond is not None and bond.monitor == "arp":
            attrs["bond_arp_interval"] = bond.interval
        return await _add(name, "bond", created, **attrs)
    parent = _index(d.vlan_dev or "")
    if parent is None:
        raise _Failed(f"device {d.vlan_dev} does not exist")
    try:
        vid = int(d.vlan_tag or "")
    except ValueError:
        raise _Failed(f"invalid vlan tag '{d.vlan_tag}'") from None
    return await _add(name, "vlan", created, link=parent, vlan_id=vid)


def _index(name: str) -> int | None:
    link = rtnl.get(name)
    return link.index if link is not None else None


async def _add(name: str, kind: str, created: list[int], **attrs: int) -> int:
    try:
        index = await netlink.add_link(name, kind, **attrs)
    except netlink.NetlinkError as e:
        detail = e.describe()
        if e.code == errno.EOPNOTSUPP:
            detail += f" (this kernel has no {kind} support)"
        raise _Failed(f"cannot create {kind} device {name}: {detail}") from None
    created.append(index)
    return index


async def _enslave(member: InterfaceDef, master: int, top: InterfaceDef,
                   created: list[int]) -> None:
    index = await _device(member, created)
    for sub in member.members:  # a bond inside a bridge
        await _enslave(sub, index, member, created)
    if top.type == "bond":  # the kernel takes only bond slaves that are down
        await _step(f"cannot bring down {member.name}", netlink.set_link(index, state="down"))
    if top.mtu:
        await _step(f"cannot set MTU of {member.name}", netlink.set_link(index, mtu=top.mtu))
    await _step(f"cannot attach {member.name} to {top.name}",
                netlink.set_link(index, master=master))
    await _step(f"cannot bring up {member.name}", netlink.set_link(index, state="up"))


async def stop(d: InterfaceDef, snap: rtnl.Snapshot) -> None:
    """ifdown: ports let go and brought down, the virtual devices this definition
    made deleted; an ethernet device loses its configured addresses and goes down."""
    link = snap.links[d.name or ""]
    try:
        if d.type in ("bridge", "bond"):
            for port in snap.ports(link):
                await _step(f"cannot detach {port.name}", netlink.set_link(port.index, master=0))
                await _step(f"cannot bring down {port.name}",
                            netlink.set_link(port.index, state="down"))
                if port.kind in ("bond", "vlan") and any(m.name == port.name for m in d.members):
                    await _step(f"cannot delete {port.name}", netlink.delete_link(port.index))
        if d.type != "ethernet":
            await _step(f"cannot delete {d.name}", netlink.delete_link(link.index))
            return
        for proto in d.protocols:
            for ip in proto.ips:
                await _step(f"cannot remove address {ip.address}",
                            netlink.del_addr(link.index, ip.address, ip.prefix))
        await _step(f"cannot bring down {d.name}", netlink.set_link(link.index, state="down"))
    except _Failed as e:
        raise _internal(f"failed to destroy (stop) interface {d.name}: {e}") from None


async def bring_up(index: int) -> None:
    """Only IFF_UP, for a link that a rolled back transaction found up."""
    try:
        await netlink.set_link(index, state="up")
    except netlink.NetlinkError as e:
        raise _internal(e.describe()) from None
