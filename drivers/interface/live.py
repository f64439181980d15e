"""What libvirtd 9.0's udev backend shows of a live link, built from netlink.

Its rules, kept here: bridge ports and tun/tap devices are left out of lists;
a link is active when its operstate is "up"; the type comes from the link kind;
a bridge shows its STP state and forward delay as the kernel keeps them
(centiseconds) and its ports except guests' ``vnetN`` taps; ``<link>`` carries
the speed only for links that are up. Addresses are shown only for links with a
definition of ours (netcf's live view), never for the others (udev shows none).
"""

from __future__ import annotations

import socket

from drivers.interface.iface_xml import (
    BOND_MODES,
    Bond,
    InterfaceDef,
    IPAddr,
    LinkState,
    Protocol,
)
from drivers.interface.rtnl import Link, Snapshot, link_speed

_KINDS = ("bridge", "bond", "vlan")  # link kinds with a type of their own; others: ethernet


def listed(snap: Snapshot, link: Link) -> bool:
    """Whether the udev backend lists ``link`` at all."""
    master = snap.by_index(link.master)
    return link.kind != "tun" and not (master is not None and master.kind == "bridge")


def describe(snap: Snapshot, link: Link, addresses: bool = False) -> InterfaceDef:
    """The live definition of ``link``; ``addresses`` adds its ``<protocol>``s."""
    kind = link.kind if link.kind is not None and link.kind in _KINDS else "ethernet"
    speed = link_speed(link.name) if link.operstate == "up" else 0
    d = InterfaceDef(kind, link.name, mtu=link.mtu, link=LinkState(speed, link.operstate),
                     mac=link.mac)
    if d.type == "bridge":
        d.stp = link.stp_state != 0
        d.delay = str(link.forward_delay)
        d.members = [describe(snap, port) for port in snap.ports(link)
                     if not _guest_tap(port.name)]
    elif d.type == "bond":
        d.bond = _bond(link)
        d.members = [describe(snap, port) for port in snap.ports(link)]
    elif d.type == "vlan":
        parent = snap.by_index(link.parent)
        d.vlan_tag = str(link.vlan_id) if link.vlan_id is not None else "0"
        d.vlan_dev = parent.name if parent is not None else None
    if addresses:
        d.protocols = _protocols(link)
    return d


def _guest_tap(name: str) -> bool:
    return len(name) >= 5 and name.startswith("vnet") and name[4].isdigit()


def _bond(link: Link) -> Bond:
    opts = link.bond

    def num(key: str) -> int:
        value = opts.get(key)
        return value if isinstance(value, int) else 0

    mode = num("mode")
    bond = Bond(mode=BOND_MODES[mode] if "mode" in opts and mode < len(BOND_MODES) else None)
    if num("arp_interval") > 0:
        bond.monitor, bond.interval = "arp", num("arp_interval")
        targets = opts.get("arp_ip_target")
        bond.target = " ".join(targets) if isinstance(targets, list) else ""
    elif num("miimon") > 0:
        bond.monitor, bond.freq = "mii", num("miimon")
        bond.downdelay, bond.updelay = num("downdelay"), num("updelay")
        bond.carrier = "netif" if num("use_carrier") else "ioctl"
    return bond


def _protocols(link: Link) -> list[Protocol]:
    protos = []
    for family, name in ((socket.AF_INET, "ipv4"), (socket.AF_INET6, "ipv6")):
        ips = [IPAddr(a.address, a.prefix) for a in link.addrs
               if a.family == family and not (family == socket.AF_INET6 and a.scope == 253)]
        if ips:
            protos.append(Protocol(name, ips=ips))
    return protos
