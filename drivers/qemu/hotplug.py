"""Devices added to, removed from and changed in a guest: live over QMP, in the config, or both.

Live changes follow libvirtd's QMP sequences (``blockdev-add`` + ``device_add``,
``netdev_add`` + ``device_add``, ``device_del`` then ``DEVICE_DELETED``), so a
guest sees the same hardware appear. A removal needs the guest's consent: detach
waits a few seconds for it and otherwise returns, the device leaving the live
definition whenever QEMU reports it gone. A config attach re-parses the persistent
definition with the device added, so it gets the defaults and addresses a define
would give it; detach and update change a copy. Either is written back atomically.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import stat
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lxml import etree

from drivers import offload
from drivers.qemu import command, domain_xml, netif
from drivers.qemu.affect import live_changed, modify
from drivers.qemu.domain import not_running
from drivers.qemu.domain_xml import defaults
from drivers.qemu.domain_xml.addresses import (
    DRIVE_LAYOUT,
    assign_usb_addresses,
    assign_virtio_serial_addresses,
    hotplug_pci_address,
)
from drivers.qemu.domain_xml.aliases import assign_aliases, fill_channel_paths
from drivers.qemu.domain_xml.model import (
    CharDevice,
    Controller,
    Devices,
    Disk,
    DomainDef,
    DriveAddress,
    Interface,
    VirtioSerialAddress,
)
from drivers.qemu.domain_xml.parse import disk_index, insert_controller, insert_disk, parse_device
from drivers.qemu.volumes import resolve as resolve_volume
from protocol.errors import ErrorCode, ErrorDomain, VirError

if TYPE_CHECKING:
    from drivers.qemu.domain import Domain
    from drivers.qemu.driver import QemuDriver
    from drivers.qemu.process import QemuProcess

log = logging.getLogger(__name__)

# virDomainDeviceModifyFlags beyond the AFFECT ones (drivers/qemu/affect.py)
MODIFY_FORCE = 1 << 2

# How long detach waits for the guest to let go, as libvirtd does on x86.
UNPLUG_TIMEOUT = 5.0
TRAY_TIMEOUT = 5.0

_HOTPLUG_BUSES = ("virtio", "scsi", "ide", "sata")
_PCIE_NICS = ("virtio", "e1000e")


def _err(code: ErrorCode, message: str, domain: ErrorDomain = ErrorDomain.QEMU) -> VirError:
    return VirError(code, message, domain)


def _device_element(xml: str) -> etree._Element:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_comments=True)
    try:
        el = etree.fromstring(xml.encode(), parser)
    except etree.XMLSyntaxError as e:
        raise _err(
            ErrorCode.XML_DETAIL, f"(device_definition):{e.lineno}: {e.msg}", ErrorDomain.DOMAIN
        ) from None
    return el


def _parse(el: etree._Element) -> Devices:
    devs = parse_device(el)
    if not (
        devs.disks or devs.controllers or devs.interfaces or devs.serials or devs.consoles
        or devs.channels or devs.inputs or devs.graphics or devs.sounds or devs.videos
        or devs.redirdevs or devs.watchdogs or devs.memballoon or devs.rngs or devs.others
    ):
        raise _err(
            ErrorCode.CONFIG_UNSUPPORTED,
            f"unsupported configuration: unknown device type '{el.tag}'",
            ErrorDomain.DOMAIN,
        )
    return devs


# -- finding a device ---------------------------------------------------------------------


def _find_disk(d: DomainDef, target: str) -> Disk:
    for disk in d.devices.disks:
        if disk.target == target:
            return disk
    raise _err(ErrorCode.DEVICE_MISSING, f"device not found: no target device {target}")


def _find_net(d: DomainDef, want: Interface) -> Interface:
    """The NIC matching ``want`` by MAC and, when given, alias (libvirt's rules)."""
    found = [
        n for n in d.devices.interfaces
        if (not want.mac or n.mac == want.mac)
        and (want.info.alias is None or n.info.alias == want.info.alias)
    ]
    if len(found) > 1:
        raise _err(
            ErrorCode.OPERATION_FAILED,
            f"operation failed: multiple devices matching MAC address {want.mac} found",
        )
    if not found:
        raise _err(
            ErrorCode.DEVICE_MISSING,
            f"device not found: no device found at address '(<null>)' matching MAC address"
            f" '{want.mac or '00:00:00:00:00:00'}' and alias '{want.info.alias or '(<null>)'}'",
        )
    return found[0]


def _find_alias(d: DomainDef, alias: str) -> tuple[str, Any]:
    """(kind, device) of the device ``alias``; kind "other" for those hotplug leaves alone."""
    for kind in ("disks", "interfaces", "channels", *_SIMPLE):
        for dev in getattr(d.devices, kind):
            if dev.info.alias == alias:
                return kind, dev
    for group in (
        d.devices.serials, d.devices.sounds, d.devices.videos,
        d.devices.redirdevs, *d.devices.others.values(),
    ):
        for dev in group:
            if dev.info.alias == alias:
                return "other", dev
    raise _err(ErrorCode.INTERNAL_ERROR, f"internal error: no device found with alias {alias}")


# Kinds plugged with a plain device_add (an RNG with its backend object first).
_SIMPLE = ("controllers", "inputs", "watchdogs", "rngs")


def _simple_kind(devs: Devices) -> str | None:
    return next((kind for kind in _SIMPLE if getattr(devs, kind)), None)


def _find_simple(d: DomainDef, kind: str, want: Any) -> Any:
    """The device of ``kind`` in ``d`` that ``want`` names, by libvirt's matching rules."""
    group = getattr(d.devices, kind)
    if want.info.alias is not None:
        found = [x for x in group if x.info.alias == want.info.alias]
    elif kind == "controllers":
        found = [
            c for c in group if c.type == want.type and want.index in (c.index, -1)
            and (want.model is None or c.model == want.model)
        ]
    elif kind == "inputs":
        found = [i for i in group if i.type == want.type and i.bus == want.bus]
    elif kind == "watchdogs":
        found = [w for w in group if w.model == want.model]
    else:
        found = [
            r for r in group if r.model == want.model and r.backend_model == want.backend_model
        ]
    if want.info.address is not None:
        found = [x for x in found if x.info.address == want.info.address]
    if found:
        return found[0]
    raise _err(ErrorCode.DEVICE_MISSING, "device not found: " + {
        "controllers": f"controller {want.type}:{want.index} not found",
        "inputs": "matching input device not found",
        "watchdogs": "watchdog device not present in domain configuration",
        "rngs": "no matching RNG device was found",
    }[kind])


# -- the persistent definition ------------------------------------------------------------


def _config_with(driver: QemuDriver, d: DomainDef, el: etree._Element, devs: Devices) -> DomainDef:
    """``d`` with the device added, completed as a define would complete it."""
    if devs.disks:
        target = devs.disks[0].target
        if any(x.target == target for x in d.devices.disks):
            raise _err(
                ErrorCode.OPERATION_INVALID,
                f"Requested operation is not valid: target {target} already exists",
            )
    base, extra = d, el
    if devs.disks:
        # libvirt files a disk by its bus, filled in before it is inserted
        base, extra = copy.deepcopy(d), None
        defaults.fill_disk(devs.disks[0])
        insert_disk(base.devices.disks, devs.disks[0])
    root = etree.fromstring(domain_xml.format(base, inactive=True, secure=True).encode())
    devices = root.find("devices")
    if devices is None:
        devices = etree.SubElement(root, "devices")
    if extra is not None:
        devices.append(copy.deepcopy(extra))
    return domain_xml.parse(etree.tostring(root, encoding="unicode"), driver.caps)


def _config_without(d: DomainDef, devs: Devices) -> DomainDef:
    new = copy.deepcopy(d)
    if devs.disks:
        new.devices.disks.remove(_find_disk(new, devs.disks[0].target))
    elif devs.interfaces:
        new.devices.interfaces.remove(_find_net(new, devs.interfaces[0]))
    elif (kind := _simple_kind(devs)) is not None:
        _drop(getattr(new.devices, kind), _find_simple(new, kind, getattr(devs, kind)[0]))
    elif devs.channels:
        _drop(new.devices.channels, _find_channel(new, devs.channels[0]))
    else:
        raise _err(
            ErrorCode.OPERATION_UNSUPPORTED,
            "Operation not supported: persistent detach of device is not supported",
        )
    return new


def _config_updated(d: DomainDef, devs: Devices) -> DomainDef:
    new = copy.deepcopy(d)
    if devs.disks:
        want = devs.disks[0]
        disk = next((x for x in new.devices.disks if x.target == want.target), None)
        if disk is None:
            raise _err(
                ErrorCode.INVALID_ARG,
                f"invalid argument: target {want.target} doesn't exist.",
            )
        _take_media(disk, want)
    elif devs.interfaces:
        net = _find_net(new, devs.interfaces[0])
        net.link_state = devs.interfaces[0].link_state
    else:
        raise _err(
            ErrorCode.OPERATION_UNSUPPORTED,
            "Operation not supported: persistent update of device is not supported",
        )
    return new


def _take_media(disk: Disk, want: Disk) -> None:
    disk.type, disk.source = want.type, want.source
    disk.volume, disk.volume_type = want.volume, want.volume_type
    if want.driver.get("type"):
        disk.driver = {**disk.driver, "type": want.driver["type"]}


# -- the API ----------------------------------------------------------------------------


async def attach(driver: QemuDriver, dom: Domain, xml: str, flags: int) -> None:
    """virDomainAttachDeviceFlags."""
    async with modify(driver, dom, flags) as edit:
        el = _device_element(xml)
        if edit.config is not None:
            edit.config = _config_with(driver, edit.config, el, _parse(el))
        if edit.live is not None:
            await _attach_live(driver, dom, _parse(el))


async def detach(driver: QemuDriver, dom: Domain, xml: str, flags: int) -> None:
    """virDomainDetachDeviceFlags: waits a little for the guest, as libvirtd does."""
    async with modify(driver, dom, flags) as edit:
        devs = _parse(_device_element(xml))
        if edit.config is not None:
            edit.config = _config_without(edit.config, devs)
        if (d := edit.live) is not None:
            if devs.disks:
                kind, dev = "disks", _find_disk(d, devs.disks[0].target)
            elif devs.interfaces:
                kind, dev = "interfaces", _find_net(d, devs.interfaces[0])
            elif (simple := _simple_kind(devs)) is not None:
                kind = simple
                dev = _find_simple(d, kind, getattr(devs, kind)[0])
            elif devs.channels:
                kind, dev = "channels", _find_channel(d, devs.channels[0])
            else:
                raise _unsupported_live("detach", _el_tag(devs))
            await _unplug(driver, dom, kind, dev, wait=True)


async def detach_alias(driver: QemuDriver, dom: Domain, alias: str, flags: int) -> None:
    """virDomainDetachDeviceAlias: asks for the removal and returns; DEVICE_REMOVED tells."""
    async with modify(driver, dom, flags) as edit:
        if edit.config is not None:
            kind, dev = _find_alias(edit.config, alias)
            if kind == "other":
                raise _unsupported_live("detach", "device")
            _drop(getattr(edit.config.devices, kind), dev)
        if edit.live is not None:
            kind, dev = _find_alias(edit.live, alias)
            if kind == "other":
                raise _unsupported_live("detach", "device")
            await _unplug(driver, dom, kind, dev, wait=False)


async def update(driver: QemuDriver, dom: Domain, xml: str, flags: int) -> None:
    """virDomainUpdateDeviceFlags: CD-ROM and floppy media, NIC link state."""
    async with modify(driver, dom, flags) as edit:
        devs = _parse(_device_element(xml))
        if edit.config is not None:
            edit.config = _config_updated(edit.config, devs)
        if edit.live is not None:
            await _update_live(driver, dom, devs, force=bool(flags & MODIFY_FORCE))


def _el_tag(devs: Devices) -> str:
    """The kind of the parsed device as libvirt's messages name it."""
    for name in ("controllers", "serials", "consoles", "channels", "inputs", "graphics",
                 "sounds", "videos", "redirdevs", "watchdogs", "rngs"):
        if getattr(devs, name):
            return {"serials": "chr", "consoles": "chr", "channels": "chr"}.get(
                name, name.rstrip("s") if name != "graphics" else name
            )
    if devs.memballoon is not None:
        return "memballoon"
    return next(iter(devs.others), "device")


def _unsupported_live(what: str, tag: str) -> VirError:
    return _err(
        ErrorCode.OPERATION_UNSUPPORTED,
        f"Operation not supported: live {what} of device '{tag}' is not supported",
    )


# -- live attach ------------------------------------------------------------------------


def _proc(dom: Domain) -> QemuProcess:
    if dom.process is None or dom.live is None:
        raise not_running()
    return dom.process


async def _attach_live(driver: QemuDriver, dom: Domain, devs: Devices) -> None:
    if devs.disks:
        await _attach_disk(driver, dom, devs.disks[0])
    elif devs.interfaces:
        await _attach_net(driver, dom, devs.interfaces[0])
    elif (kind := _simple_kind(devs)) is not None:
        await _attach_simple(driver, dom, kind, getattr(devs, kind)[0])
    elif devs.channels and devs.channels[0].target_type in (None, "virtio"):
        await _attach_channel(driver, dom, devs.channels[0])
    else:
        raise _unsupported_live("attach", _el_tag(devs))


def _find_channel(d: DomainDef, want: CharDevice) -> CharDevice:
    for ch in d.devices.channels:
        if want.info.alias is not None and ch.info.alias != want.info.alias:
            continue
        if ch.target_name == want.target_name and (ch.target_type or "virtio") == (
            want.target_type or "virtio"
        ):
            return ch
    raise _err(
        ErrorCode.DEVICE_MISSING,
        "device not found: matching character device not found",
    )


def _chardev_backend(ch: CharDevice) -> dict[str, Any]:
    """``chardev-add``'s backend for a channel's source (QMP spells it unlike -chardev)."""
    src = ch.source
    if src.type == "pty":
        return {"type": "pty", "data": {}}
    if src.type == "unix":
        server = src.attrs.get("mode", "bind") == "bind"
        data: dict[str, Any] = {
            "addr": {"type": "unix", "data": {"path": src.attrs.get("path", "")}},
            "server": server,
        }
        if server:
            data["wait"] = False
        return {"type": "socket", "data": data}
    return {"type": "spicevmc", "data": {"type": "vdagent"}}


async def _attach_channel(driver: QemuDriver, dom: Domain, ch: CharDevice) -> None:
    """A virtio channel on the guest's virtio-serial bus: chardev-add, then its port."""
    proc = _proc(dom)
    d, live = dom.live, dom.live_state
    assert d is not None and live is not None
    ch.target_type = "virtio"
    if not any(c.type == "virtio-serial" for c in d.devices.controllers):
        raise _err(
            ErrorCode.INTERNAL_ERROR, "internal error: no virtio-serial controllers are available"
        )
    if ch.source.type not in ("pty", "unix", "spicevmc"):
        raise _unsupported_live("attach", "chr")
    ch.info.alias = ch.info.alias or _next_alias(d.devices.channels, "channel")
    d.devices.channels.append(ch)
    assign_virtio_serial_addresses(d)
    fill_channel_paths(d, str(driver._channel_dir(live.id, d.name)))  # noqa: SLF001
    backend = _chardev_backend(ch)
    addr = ch.info.address
    chr_id = f"char{ch.info.alias}"
    added = False
    try:
        if not isinstance(addr, VirtioSerialAddress):
            raise _err(ErrorCode.INTERNAL_ERROR, "internal error: no free virtio-serial port")
        reply = await proc.monitor.execute("chardev-add", {"id": chr_id, "backend": backend})
        added = True
        props = {
            "driver": "virtserialport", "bus": f"virtio-serial{addr.controller}.{addr.bus}",
            "nr": addr.port, "chardev": chr_id, "id": ch.info.alias,
        }
        if ch.target_name:
            props["name"] = ch.target_name
        await proc.monitor.execute("device_add", props)
    except BaseException:
        _drop(d.devices.channels, ch)
        if added:
            await _quietly(proc, "chardev-remove", {"id": chr_id})
        raise
    if isinstance(reply, dict) and reply.get("pty"):
        live.pty_paths[ch.info.alias] = str(reply["pty"])
    live.channel_states[ch.info.alias] = "disconnected"
    live_changed(driver, dom)
    driver.bus.emit("domain-device-added", dom, alias=ch.info.alias)


def _next_alias(group: list[Any], prefix: str) -> str:
    """``prefix`` and a number above every one in use, as libvirtd picks a hotplug alias."""
    used = [
        int(x.info.alias[len(prefix):]) for x in group
        if x.info.alias and x.info.alias.startswith(prefix) and x.info.alias[len(prefix):].isdigit()
    ]
    return f"{prefix}{max(used, default=-1) + 1}"


def _busy(d: DomainDef, c: Controller) -> bool:
    """Whether devices sit on controller ``c`` (QEMU would unplug them with it)."""
    if c.type == "virtio-serial":
        return any(
            isinstance(x.info.address, VirtioSerialAddress) and x.info.address.controller == c.index
            for x in (*d.devices.channels, *d.devices.consoles)
        )
    return any(
        x.bus == c.type and isinstance(x.info.address, DriveAddress)
        and x.info.address.controller == c.index
        for x in d.devices.disks
    )


async def _attach_simple(driver: QemuDriver, dom: Domain, kind: str, dev: Any) -> None:
    """Controllers (SCSI, virtio-serial), virtio and USB inputs, an i6300esb watchdog,
    random and builtin RNGs: each one device_add, an RNG's backend object before it."""
    proc = _proc(dom)
    d = dom.live
    assert d is not None
    group = getattr(d.devices, kind)
    obj: dict[str, Any] | None = None
    if kind == "controllers":
        if dev.type not in ("scsi", "virtio-serial"):
            raise _unsupported_live("attach", "controller")
        if dev.index == -1:
            dev.index = max((c.index for c in group if c.type == dev.type), default=-1) + 1
        if any(c.type == dev.type and c.index == dev.index for c in group):
            raise _err(
                ErrorCode.OPERATION_FAILED,
                f"operation failed: target {dev.type}:{dev.index} already exists",
            )
        if dev.type == "scsi" and dev.model is None:
            dev.model = "lsilogic"
        dev.info.alias = dev.info.alias or f"{dev.type}{dev.index}"
        pcie = dev.type == "virtio-serial" or dev.model == "virtio-scsi"
    elif kind == "inputs":
        if dev.bus not in ("virtio", "usb"):
            raise _unsupported_live("attach", "input")
        dev.info.alias = dev.info.alias or _next_alias(group, "input")
        pcie = True
    elif kind == "watchdogs":
        if group:
            raise _err(
                ErrorCode.OPERATION_FAILED, "operation failed: domain already has a watchdog"
            )
        if dev.model != "i6300esb":
            raise _err(
                ErrorCode.CONFIG_UNSUPPORTED,
                f"unsupported configuration: hotplug of watchdog of model '{dev.model}'"
                " is not supported",
            )
        dev.info.alias = dev.info.alias or "watchdog0"
        pcie = False
    else:
        if dev.backend_model not in ("random", "builtin"):
            raise _unsupported_live("attach", "rng")
        if dev.backend_model == "random" and not dev.backend_path:
            dev.backend_path = "/dev/random"
        dev.info.alias = dev.info.alias or _next_alias(group, "rng")
        obj = command.rng_backend_props(dev)
        pcie = True
    if kind == "inputs" and dev.bus == "usb":
        hubs = len(d.devices.other("hub"))
        group.append(dev)
        assign_usb_addresses(d)
        _drop(group, dev)
        if dev.info.address is None or len(d.devices.other("hub")) != hubs:
            raise _err(ErrorCode.INTERNAL_ERROR, "internal error: No free USB ports")
    else:
        hotplug_pci_address(d, dev.info, pcie)
    if kind == "controllers":
        insert_controller(group, dev)
        props = command.controller_props(d, dev)
    else:
        group.append(dev)
        props = (
            command.input_device_props(d, dev) if kind == "inputs"
            else command.rng_device_props(d, dev) if kind == "rngs"
            else command.watchdog_device_props(d, dev)
        )
    added = False
    try:
        if obj is not None:
            await proc.monitor.execute("object-add", obj)
            added = True
        await proc.monitor.execute("device_add", props)
        if kind == "watchdogs" and dev.action:
            action = {"shutdown": "poweroff", "dump": "pause"}.get(dev.action, dev.action)
            await proc.monitor.execute("watchdog-set-action", {"action": action})
    except BaseException:
        _drop(group, dev)
        if added:
            await _quietly(proc, "object-del", {"id": obj["id"] if obj else ""})
        raise
    live_changed(driver, dom)
    driver.bus.emit("domain-device-added", dom, alias=dev.info.alias)


async def _next_node(proc: QemuProcess, d: DomainDef) -> int:
    """N for new ``libvirt-N`` nodes: above every one QEMU has and every number the
    disks have or had at start (an empty CD-ROM has its number but no node)."""
    top = max([len(d.devices.disks)] + [x.node_index or 0 for x in d.devices.disks])
    for node in await proc.monitor.execute("query-named-block-nodes", {"flat": True}):
        parts = str(node.get("node-name", "")).split("-")
        if len(parts) == 3 and parts[0] == "libvirt" and parts[1].isdigit():
            top = max(top, int(parts[1]))
    return top + 1


async def _attach_disk(driver: QemuDriver, dom: Domain, disk: Disk) -> None:
    proc = _proc(dom)
    d = dom.live
    assert d is not None
    defaults.fill_disk(disk)
    if disk.type == "volume" and disk.volume:
        resolve_volume(driver.peers.get("storage"), disk)
    existing = next((x for x in d.devices.disks if x.target == disk.target), None)
    if existing is not None and existing.device in ("cdrom", "floppy"):
        if disk.device == existing.device:  # attach onto a drive that is there: new media
            await _change_media(driver, dom, existing, disk, force=False)
            return
    if disk.device == "floppy":
        raise _err(
            ErrorCode.OPERATION_UNSUPPORTED,
            "Operation not supported: floppy device hotplug isn't supported",
        )
    if existing is not None:
        raise _err(
            ErrorCode.XML_ERROR,
            f"XML error: target '{disk.target}' duplicated for disk sources"
            f" '{existing.source or '<null>'}' and '{disk.source or '<null>'}'",
            ErrorDomain.DOMAIN,
        )
    if disk.bus not in _HOTPLUG_BUSES:
        raise _err(
            ErrorCode.OPERATION_UNSUPPORTED,
            f"Operation not supported: disk bus '{disk.bus}' cannot be hotplugged.",
        )
    if disk.bus == "virtio":
        hotplug_pci_address(d, disk.info, True)
    else:  # QEMU itself says whether the bus takes it (IDE does not)
        units, buses = DRIVE_LAYOUT[disk.bus]
        index = max(disk_index(disk.target), 0)
        if disk.info.address is None:
            disk.info.address = DriveAddress(
                index // (units * buses), index % (units * buses) // units, 0, index % units
            )
        controller = disk.info.address.controller  # type: ignore[union-attr]
        if not any(c.type == disk.bus and c.index == controller for c in d.devices.controllers):
            raise _err(
                ErrorCode.INTERNAL_ERROR,
                f"internal error: Could not find {disk.bus} controller with index {controller}"
                " required for device",
            )
    disk.node_index = await _next_node(proc, d)
    node = f"libvirt-{disk.node_index}"
    insert_disk(d.devices.disks, disk)
    added: list[str] = []
    try:
        assign_aliases(d)
        has_image = disk.source is not None or bool(disk.net_source)
        for props in command.blockdev_props(disk, node) if has_image else ():
            await proc.monitor.execute("blockdev-add", props)
            added.append(props["node-name"])
        boot = {id(disk.info): disk.info.boot_order} if disk.info.boot_order else {}
        props = command.disk_device_props(d, disk, node if added else None, boot)
        await proc.monitor.execute("device_add", props)
    except BaseException:
        _drop(d.devices.disks, disk)
        for name in reversed(added):
            await _quietly(proc, "blockdev-del", {"node-name": name})
        raise
    live_changed(driver, dom)
    driver.bus.emit("domain-device-added", dom, alias=disk.info.alias)


async def _attach_net(driver: QemuDriver, dom: Domain, net: Interface) -> None:
    proc = _proc(dom)
    d = dom.live
    assert d is not None
    defaults.fill_interface(net)
    if net.type != "user" and net.type not in netif.TAP_TYPES:
        raise _err(
            ErrorCode.CONFIG_UNSUPPORTED,
            f"unsupported configuration: interface type '{net.type}' is not supported",
        )
    if net.info.alias is None:
        used = [
            int(n.info.alias[3:]) for n in d.devices.interfaces
            if n.info.alias and n.info.alias.startswith("net") and n.info.alias[3:].isdigit()
        ]
        net.info.alias = f"net{max(used, default=-1) + 1}"
    hotplug_pci_address(d, net.info, net.model in _PCIE_NICS)
    hostnet = f"host{net.info.alias}"
    netdev: dict[str, Any] = {"type": "user", "id": hostnet}
    fd = await netif.plug(driver, d, net)
    if fd is not None:
        fdname = f"fd-{net.info.alias}"
        try:
            await proc.monitor.send_fd(fd, fdname)
        except BaseException:
            await netif.unplug(driver, net)
            raise
        finally:
            os.close(fd)  # QEMU holds its own copy now
        netdev = {"type": "tap", "fd": fdname, "id": hostnet}
    d.devices.interfaces.append(net)
    netdev_added = False
    try:
        await proc.monitor.execute("netdev_add", netdev)
        netdev_added = True
        boot = {id(net.info): net.info.boot_order} if net.info.boot_order else {}
        await proc.monitor.execute("device_add", command.nic_device_props(d, net, hostnet, boot))
        if net.link_state == "down":
            await proc.monitor.execute("set_link", {"name": net.info.alias, "up": False})
    except BaseException:
        _drop(d.devices.interfaces, net)
        if netdev_added:
            await _quietly(proc, "netdev_del", {"id": hostnet})
        await netif.unplug(driver, net)
        raise
    live_changed(driver, dom)
    driver.bus.emit("domain-device-added", dom, alias=net.info.alias)


async def _quietly(proc: QemuProcess, cmd: str, args: dict[str, Any]) -> None:
    try:
        await proc.monitor.execute(cmd, args)
    except VirError as e:
        log.warning("%s %s: %s", cmd, args, e.message)


# -- live update --------------------------------------------------------------------------


async def _update_live(driver: QemuDriver, dom: Domain, devs: Devices, force: bool) -> None:
    d = dom.live
    assert d is not None
    if devs.disks:
        want = devs.disks[0]
        disk = next((x for x in d.devices.disks if x.target == want.target), None)
        if disk is None:
            raise _err(
                ErrorCode.INVALID_ARG, f"invalid argument: target {want.target} doesn't exist."
            )
        if disk.device not in ("cdrom", "floppy"):
            raise _err(
                ErrorCode.CONFIG_UNSUPPORTED,
                f"unsupported configuration: disk bus '{disk.bus}' cannot be updated.",
            )
        if want.type == "volume" and want.volume:
            resolve_volume(driver.peers.get("storage"), want)
        await _change_media(driver, dom, disk, want, force)
    elif devs.interfaces:
        want = devs.interfaces[0]
        net = _find_net(d, want)
        model = want.model or "rtl8139"  # the default the new definition would get
        if model != net.model:
            raise _err(
                ErrorCode.OPERATION_UNSUPPORTED,
                f"Operation not supported: cannot modify network device model from"
                f" {net.model} to {model}",
            )
        if (want.link_state or "up") != (net.link_state or "up"):
            proc = _proc(dom)
            up = want.link_state != "down"
            await proc.monitor.execute("set_link", {"name": net.info.alias, "up": up})
            net.link_state = want.link_state
            live_changed(driver, dom)
    else:
        raise _unsupported_live("update", _el_tag(devs))


async def _block_entry(proc: QemuProcess, alias: str) -> dict[str, Any] | None:
    """``query-block``'s entry for the device ``alias`` (its id, or a child's QOM path)."""
    for entry in await proc.monitor.execute("query-block"):
        qdev = str(entry.get("qdev", ""))
        if qdev == alias or qdev.startswith(f"/machine/peripheral/{alias}/"):
            return entry
    return None


def _nodes_of(entry: dict[str, Any] | None) -> list[str]:
    """The format node a device reads and, below it, the storage node we gave it."""
    if not entry or not entry.get("inserted"):
        return []
    top = str(entry["inserted"].get("node-name", ""))
    if top.endswith("-format"):
        return [top, top[: -len("-format")] + "-storage"]
    return [top] if top else []


async def _change_media(
    driver: QemuDriver, dom: Domain, disk: Disk, want: Disk, force: bool
) -> None:
    """Eject (no source) or change a CD-ROM's medium: tray open, medium out, in, tray shut."""
    proc, live = _proc(dom), dom.live
    assert live is not None
    alias = disk.info.alias or ""
    old = _nodes_of(await _block_entry(proc, alias))
    await proc.monitor.execute("blockdev-open-tray", {"id": alias, "force": force})
    deadline = asyncio.get_running_loop().time() + TRAY_TIMEOUT
    while True:
        entry = await _block_entry(proc, alias)
        if entry is None or entry.get("tray_open") or not entry.get("removable", True):
            break
        if asyncio.get_running_loop().time() > deadline:
            raise _err(
                ErrorCode.OPERATION_FAILED,
                f"operation failed: timed out waiting to open tray of '{disk.target}'",
            )
        await asyncio.sleep(0.1)
    await proc.monitor.execute("blockdev-remove-medium", {"id": alias})
    for name in old:
        await _quietly(proc, "blockdev-del", {"node-name": name})
    new = copy.deepcopy(disk)
    _take_media(new, want)
    if new.source is not None:
        new.node_index = await _next_node(proc, live)
        node = f"libvirt-{new.node_index}"
        for props in command.blockdev_props(new, node):
            await proc.monitor.execute("blockdev-add", props)
        await proc.monitor.execute(
            "blockdev-insert-medium", {"id": alias, "node-name": f"{node}-format"}
        )
        await proc.monitor.execute("blockdev-close-tray", {"id": alias})
    _take_media(disk, want)
    # libvirtd numbers even the empty source an eject leaves
    disk.node_index = new.node_index if new.source is not None else await _next_node(proc, live)
    live_changed(driver, dom)


# -- live detach ---------------------------------------------------------------------------


@dataclass
class _Unplug:
    """A device_del QEMU has not confirmed yet."""

    kind: str
    dev: Any
    nodes: list[str]
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    waiting: bool = True


_pending: weakref.WeakKeyDictionary[Domain, dict[str, _Unplug]] = weakref.WeakKeyDictionary()


async def _unplug(driver: QemuDriver, dom: Domain, kind: str, dev: Any, wait: bool) -> None:
    proc = _proc(dom)
    if kind == "controllers" and (_busy(dom.live, dev) if dom.live else False):
        raise _err(
            ErrorCode.OPERATION_FAILED,
            "operation failed: device cannot be detached: device is busy",
        )
    alias = dev.info.alias or ""
    nodes = _nodes_of(await _block_entry(proc, alias)) if kind == "disks" else []
    job = _Unplug(kind, dev, nodes, waiting=wait)
    pending = _pending.setdefault(dom, {})
    pending[alias] = job
    try:
        await proc.monitor.execute("device_del", {"id": alias})
    except BaseException:
        pending.pop(alias, None)
        raise
    if not wait:
        return
    try:
        await asyncio.wait_for(asyncio.shield(job.done), UNPLUG_TIMEOUT)
    except asyncio.TimeoutError:
        job.waiting = False  # the removal completes when QEMU says so
        if not job.done.done():
            return
    await _finish(driver, dom, alias)


def on_device_event(driver: QemuDriver, dom: Domain, name: str, data: dict[str, Any]) -> None:
    """QEMU's DEVICE_DELETED / DEVICE_UNPLUG_GUEST_ERROR for ``dom`` (from the monitor)."""
    alias = data.get("device")
    if not alias:
        return  # a device's inner part (a virtio backend), or one without an id
    job = _pending.get(dom, {}).get(alias)
    if job is not None and not _holds(dom.live, job.kind, job.dev):
        _pending[dom].pop(alias, None)  # left from an earlier run of the guest
        job = None
    if name == "DEVICE_UNPLUG_GUEST_ERROR":
        _pending.get(dom, {}).pop(alias, None)
        if job is not None and not job.done.done():
            job.done.set_exception(
                _err(ErrorCode.OPERATION_FAILED, f"operation failed: unplug of device '{alias}'"
                     " was rejected by the guest")
            )
            job.done.exception()  # retrieved: nobody may be waiting any more
        driver.bus.emit("domain-device-removal-failed", dom, alias=alias)
        return
    if job is not None and not job.done.done():
        job.done.set_result(None)
        if job.waiting:
            return  # detach itself finishes the removal
    driver._spawn(_finish_later(driver, dom, alias))  # noqa: SLF001


async def _finish_later(driver: QemuDriver, dom: Domain, alias: str) -> None:
    async with dom.lock:
        if dom.live is not None:
            await _finish(driver, dom, alias)


async def _finish(driver: QemuDriver, dom: Domain, alias: str) -> None:
    """The device is gone from the guest: free its backends and drop it from the live XML."""
    job = _pending.get(dom, {}).pop(alias, None)
    d, proc = dom.live, dom.process
    if d is None or proc is None:
        return
    if job is None:  # unplugged behind our back, or asked for by a previous daemon
        try:
            kind, dev = _find_alias(d, alias)
        except VirError:
            return
        n = dev.node_index if kind == "disks" and dev.source is not None else None
        nodes = [f"libvirt-{n}-format", f"libvirt-{n}-storage"] if n else []
    else:
        kind, dev, nodes = job.kind, job.dev, job.nodes
    if kind == "disks":
        for name in nodes:
            await _quietly(proc, "blockdev-del", {"node-name": name})
    elif kind == "interfaces":
        await _quietly(proc, "netdev_del", {"id": f"host{alias}"})
        await netif.unplug(driver, dev)
    elif kind == "rngs":
        await _quietly(proc, "object-del", {"id": f"obj{alias}"})
    elif kind == "channels":
        await _quietly(proc, "chardev-remove", {"id": f"char{alias}"})
        if dom.live_state is not None:
            dom.live_state.pty_paths.pop(alias, None)
            dom.live_state.channel_states.pop(alias, None)
    _drop(getattr(d.devices, kind, []), dev)
    live_changed(driver, dom)
    driver.bus.emit("domain-device-removed", dom, alias=alias)


def _holds(d: DomainDef | None, kind: str, dev: Any) -> bool:
    return d is not None and any(x is dev for x in getattr(d.devices, kind, []))


def _drop(group: list[Any], dev: Any) -> None:
    """Remove ``dev`` itself (not an equal twin) from ``group``."""
    for i, other in enumerate(group):
        if other is dev:
            del group[i]
            return


# -- after a daemon restart ----------------------------------------------------------------


async def refresh_from_qemu(proc: QemuProcess, d: DomainDef, taps: dict[str, str]) -> None:
    """Give a re-parsed live definition the NIC and channel aliases and disk node numbers
    QEMU has.

    The status file keeps no aliases, and numbering devices by their order, as at
    start, goes wrong once hotplug has added and removed some. Devices QEMU no
    longer has (their unplug ended while no daemon watched) leave the definition.
    ``taps`` are the tap names by alias the status file kept.
    """
    try:
        children = await proc.monitor.execute("qom-list", {"path": "/machine/peripheral"})
        ids = {c["name"] for c in children if str(c.get("type", "")).startswith("child<")}
        blocks = await proc.monitor.execute("query-block")
        macs: dict[str, str] = {}
        ports: dict[str, str] = {}  # virtio channel name -> id
        for id in ids:
            for prefix, prop, found in (("net", "mac", macs), ("channel", "name", ports)):
                if not id.startswith((prefix, "ua-")):
                    continue
                try:
                    args = {"path": f"/machine/peripheral/{id}", "property": prop}
                    found[str(await proc.monitor.execute("qom-get", args))] = id
                except VirError:
                    pass  # not that kind of device
    except VirError as e:
        log.warning("cannot learn the devices of %s from QEMU: %s", d.name, e.message)
        return
    for net in list(d.devices.interfaces):
        alias = macs.get(net.mac)
        if alias is None:
            _drop(d.devices.interfaces, net)
            continue
        net.info.alias = alias
        net.target_dev = taps.get(alias, net.target_dev)
    for ch in list(d.devices.channels):
        if ch.target_type != "virtio" or not ch.target_name:
            continue
        if ch.target_name not in ports:
            _drop(d.devices.channels, ch)
            continue
        ch.info.alias = ports[ch.target_name]
    for disk in list(d.devices.disks):
        if disk.info.alias not in ids:
            _drop(d.devices.disks, disk)
            continue
        entry = next(
            (b for b in blocks
             if b.get("qdev") == disk.info.alias
             or str(b.get("qdev", "")).startswith(f"/machine/peripheral/{disk.info.alias}/")),
            None,
        )
        nodes = _nodes_of(entry)
        parts = nodes[0].split("-") if nodes else []
        if len(parts) == 3 and parts[1].isdigit():
            disk.node_index = int(parts[1])
        if disk.type == "volume" and entry and entry.get("inserted"):
            await _volume_from_qemu(disk, entry["inserted"])


async def _volume_from_qemu(disk: Disk, inserted: dict[str, Any]) -> None:
    """A volume disk's path is what QEMU has open: the status file keeps only the
    pool and volume names, and the pool may have changed since the guest started.
    Whether it is a device is asked off the loop: its mount may hang."""
    image = inserted.get("image") or {}
    path = str(inserted.get("file") or image.get("filename") or "")
    if not path or path.startswith("json:"):
        return
    disk.source = path
    try:
        mode = (await offload.run(os.path.dirname(path), os.stat, path)).st_mode
    except (OSError, VirError):
        mode = 0
    disk.volume_type = "block" if stat.S_ISBLK(mode) else "file"
