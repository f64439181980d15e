"""The host side of a guest's NICs: network ports, taps, link states and leases.

A ``type='network'`` NIC takes a port of the network driver (``peers["network"]``),
which names the bridge its tap joins; a ``type='bridge'`` NIC joins the bridge
it names. Ports are given back when the NIC goes (unplug, guest stop), and a
restarted daemon plugs the port it saved again, as libvirtd does, which also puts
a tap back on its bridge after the network was restarted.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid as uuidlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from drivers.qemu.domain_xml.model import DomainDef, Interface
from drivers.qemu.process import open_tap, tap_to_bridge
from protocol.errors import ErrorCode, ErrorDomain, VirError

if TYPE_CHECKING:
    from drivers.qemu.driver import QemuDriver
    from drivers.qemu.process import QemuProcess

log = logging.getLogger(__name__)

TAP_TYPES = ("network", "bridge", "ethernet")

# libvirtd counts its vnetN names up instead of taking the lowest free one, so
# a name just given back is not handed to the next NIC (tools still on the old one).
_last_tap = -1


def _tap_name() -> str:
    """The next unused ``vnetN`` after the last one given."""
    global _last_tap
    for _ in range(1 << 16):
        _last_tap = (_last_tap + 1) % (1 << 16)
        name = f"vnet{_last_tap}"
        try:
            socket.if_nametoindex(name)
        except OSError:
            return name
    raise VirError(ErrorCode.INTERNAL_ERROR, "internal error: no free vnet name",
                   ErrorDomain.NONE)


def reserve_tap(name: str) -> None:
    """Count a tap a guest found at daemon start has as given."""
    global _last_tap
    if name.startswith("vnet") and name[4:].isdigit():
        _last_tap = max(_last_tap, int(name[4:]))


def _network_driver(driver: QemuDriver, name: str) -> Any:
    network = driver.peers.get("network")
    if network is None:
        raise VirError(ErrorCode.NO_NETWORK,
                       f"Network not found: no network with matching name '{name}'",
                       ErrorDomain.NETWORK)
    return network


async def _plug_port(driver: QemuDriver, d: DomainDef, net: Interface) -> Any:
    """A port of the NIC's network (the one it had, if it had one); ``net`` learns it."""
    name = net.source.get("network", "")
    again = uuidlib.UUID(net.portid).bytes if net.portid else None
    port = await _network_driver(driver, name).plug(
        name, d.name, uuidlib.UUID(d.uuid).bytes, net.mac, again)
    net.portid, net.bridge = str(uuidlib.UUID(bytes=port.uuid)), port.bridge
    return port


async def plug(driver: QemuDriver, d: DomainDef, net: Interface) -> int | None:
    """Connect one NIC of ``d`` on the host: the tap fd QEMU gets (None for user NICs).

    ``net`` learns its tap name and, on a network, its port and bridge.
    """
    if net.type == "user":
        return None
    if net.type not in TAP_TYPES:
        raise VirError(
            ErrorCode.CONFIG_UNSUPPORTED,
            f"unsupported configuration: interface type '{net.type}' is not supported",
            ErrorDomain.QEMU,
        )
    bridge, mtu = None, net.mtu
    if net.type == "network":
        port = await _plug_port(driver, d, net)
        bridge, mtu = port.bridge, net.mtu or port.mtu
    elif net.type == "bridge":
        bridge = net.source.get("bridge")
    try:
        fd, net.target_dev = open_tap(net.target_dev or _tap_name(), net.mac, bridge, mtu)
    except BaseException:
        await unplug(driver, net)
        raise
    return fd


async def plug_all(driver: QemuDriver, d: DomainDef) -> dict[str, int]:
    """Tap fds of all of ``d``'s NICs by alias; on a failure nothing stays plugged."""
    fds: dict[str, int] = {}
    try:
        for net in d.devices.interfaces:
            fd = await plug(driver, d, net)
            if fd is not None:
                fds[net.info.alias or ""] = fd
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        await unplug_all(driver, d.devices.interfaces)
        raise
    return fds


async def unplug(driver: QemuDriver, net: Interface) -> None:
    """Give the NIC's port back; a port its network already dropped (net-destroy) is no error.

    The tap goes by itself when QEMU closes it.
    """
    portid, net.portid = net.portid, None
    if portid is not None:
        await release_ports(driver, [portid])


async def release_ports(driver: QemuDriver, portids: Iterable[str]) -> None:
    """Give back ports by UUID: also those of a guest that died while no daemon watched
    (its status file named them)."""
    network = driver.peers.get("network")
    if network is None:
        return
    for portid in portids:
        try:
            await network.unplug(uuidlib.UUID(portid).bytes)
        except VirError as e:
            log.info("network port %s: %s", portid, e.message)


async def unplug_all(driver: QemuDriver, nets: Iterable[Interface]) -> None:
    for net in list(nets):
        await unplug(driver, net)


async def set_link_states(proc: QemuProcess, d: DomainDef) -> None:
    """QEMU starts every NIC with its link up: take down those the definition says."""
    for net in d.devices.interfaces:
        if net.link_state == "down":
            await proc.monitor.execute("set_link", {"name": net.info.alias, "up": False})


def _master(dev: str) -> str | None:
    try:
        return os.path.basename(os.readlink(f"/sys/class/net/{dev}/master"))
    except OSError:
        return None


async def reattach(
    driver: QemuDriver, d: DomainDef, ports: dict[str, str], bridges: dict[str, str]
) -> None:
    """After a daemon restart: plug the saved ports again and put taps back on their bridges.

    A network gone or stopped meanwhile leaves the guest running without its
    port (logged), as a restarted libvirtd does.
    """
    for net in d.devices.interfaces:
        if net.target_dev:
            reserve_tap(net.target_dev)
        bridge = net.source.get("bridge") if net.type == "bridge" else None
        if net.type == "network":
            net.portid = ports.get(net.info.alias or "")
            net.bridge = bridges.get(net.info.alias or "")
            try:
                bridge = (await _plug_port(driver, d, net)).bridge
            except VirError as e:
                log.warning("%s: NIC %s keeps no port: %s", d.name, net.mac, e.message)
                continue
        if bridge and net.target_dev and _master(net.target_dev) != bridge:
            try:
                tap_to_bridge(net.target_dev, bridge)
            except OSError as e:
                log.warning("%s: cannot put %s back on %s: %s",
                            d.name, net.target_dev, bridge, e.strerror)


def lease_interfaces(driver: QemuDriver, d: DomainDef) -> list[tuple[str, str, list[Any]]]:
    """(tap name, MAC, leases) of each network NIC that has leases, as libvirtd's
    ``--source lease`` lists them: other NICs are left out, a missing network fails."""
    found = []
    for net in d.devices.interfaces:
        if net.type != "network":
            continue
        name = net.source.get("network", "")
        leases = _network_driver(driver, name).leases(name, net.mac)
        if leases:
            found.append((net.target_dev or "", net.mac, leases))
    return found
