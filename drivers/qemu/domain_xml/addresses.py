"""Device addresses as libvirt's QEMU driver assigns them when a domain is defined.

PCI slots follow libvirt's fixed device order so a guest sees the same layout under
either daemon. On q35 every PCIe device gets its own pcie-root-port (plus one spare
for hotplug) and conventional PCI devices share a pcie-to-pci-bridge.
"""

from __future__ import annotations

from collections.abc import Iterator

from lxml import etree

from protocol.errors import ErrorCode, ErrorDomain, VirError

from .errors import xml_error
from .model import (
    Controller,
    DeviceInfo,
    DomainDef,
    DriveAddress,
    OtherDevice,
    PciAddress,
    UsbAddress,
    VirtioSerialAddress,
)
from .parse import disk_index

# Controllers for disks on a bus: units a controller has, and buses per controller.
DRIVE_LAYOUT = {"ide": (2, 2), "fdc": (2, 1), "sata": (6, 1), "scsi": (7, 1)}
_USB_PORTS = {
    "piix3-uhci": 2,
    "piix4-uhci": 2,
    "ich9-uhci1": 2,
    "ich9-uhci2": 2,
    "ich9-uhci3": 2,
    "ich9-ehci1": 6,
    "nec-xhci": 4,
    "qemu-xhci": 4,
    "vt82c686b-uhci": 2,
    "pci-ohci": 3,
}
_USB2_FUNCTION = {"ich9-ehci1": 7, "ich9-uhci1": 0, "ich9-uhci2": 1, "ich9-uhci3": 2}


def is_q35(d: DomainDef) -> bool:
    return (d.os.machine or "").startswith(("pc-q35", "q35"))


def is_i440fx(d: DomainDef) -> bool:
    m = d.os.machine or ""
    return m == "pc" or m.startswith(("pc-i440fx", "pc-0.", "pc-1."))


def assign_drive_addresses(d: DomainDef) -> None:
    for disk in d.devices.disks:
        if disk.info.address is not None or disk.bus not in DRIVE_LAYOUT:
            continue
        units, buses = DRIVE_LAYOUT[disk.bus]
        index = disk_index(disk.target)
        per_controller = units * buses
        disk.info.address = DriveAddress(
            controller=index // per_controller,
            bus=(index % per_controller) // units,
            target=0,
            unit=index % units,
        )


def assign_virtio_serial_addresses(d: DomainDef) -> None:
    used: set[tuple[int, int, int]] = set()
    chrs = [c for c in d.devices.channels if c.target_type == "virtio"]
    chrs += [c for c in d.devices.consoles if c.target_type == "virtio"]
    for c in chrs:
        a = c.info.address
        if isinstance(a, VirtioSerialAddress):
            used.add((a.controller, a.bus, a.port))
    for c in d.devices.channels:
        if c.target_type != "virtio" or c.info.address is not None:
            continue
        port = 1
        while (0, 0, port) in used:
            port += 1
        used.add((0, 0, port))
        c.info.address = VirtioSerialAddress(0, 0, port)


def _usb_infos(d: DomainDef) -> Iterator[DeviceInfo]:
    """USB devices in the order libvirt gives them ports (hubs first: others plug into them)."""
    for hub in d.devices.other("hub"):
        yield hub.info
    for disk in d.devices.disks:
        if disk.bus == "usb":
            yield disk.info
    for i in d.devices.inputs:
        if i.bus == "usb":
            yield i.info
    for s in d.devices.sounds:
        if s.model == "usb":
            yield s.info
    for r in d.devices.redirdevs:
        yield r.info


HUB_PORTS = 8


def assign_usb_addresses(d: DomainDef) -> None:
    """Ports on the root hubs first, then on USB hubs; hubs are added when ports run out."""
    usb = [
        c
        for c in d.devices.controllers
        if c.type == "usb" and c.model != "none" and c.master_startport is None
    ]
    if not usb:
        return
    ports = {c.index: int(c.attrs.get("ports", 0)) or _USB_PORTS.get(c.model or "", 2) for c in usb}
    hubs = d.devices.others.setdefault("hub", [])
    count = len(list(_usb_infos(d)))
    available = sum(ports.values()) + HUB_PORTS * len(hubs)
    if count > available:
        needed = -(-(count - available + 1) // (HUB_PORTS - 1))
        hubs += [OtherDevice(etree.Element("hub", type="usb")) for _ in range(needed)]
    if not hubs:
        del d.devices.others["hub"]
    used = {
        (i.address.bus, i.address.port) for i in _usb_infos(d) if isinstance(i.address, UsbAddress)
    }
    for info in _usb_infos(d):
        if info.address is not None:
            continue
        info.address = _free_usb_port(ports, hubs, used)
        if info.address is not None:
            used.add((info.address.bus, info.address.port))


def _free_usb_port(
    ports: dict[int, int], hubs: list[OtherDevice], used: set[tuple[int, str]]
) -> UsbAddress | None:
    for bus in sorted(ports):
        for port in range(1, ports[bus] + 1):
            if (bus, str(port)) not in used:
                return UsbAddress(bus, str(port))
    for hub in hubs:
        a = hub.info.address
        if isinstance(a, UsbAddress):
            for port in range(1, HUB_PORTS + 1):
                if (a.bus, f"{a.port}.{port}") not in used:
                    return UsbAddress(a.bus, f"{a.port}.{port}")
    return None


class _PciBuses:
    """Which (bus, slot, function) are taken, and the next free slot for a device."""

    def __init__(self) -> None:
        self.used: set[tuple[int, int, int]] = set()
        self.root_slots = range(1, 32)

    def take(self, addr: PciAddress) -> None:
        key = (addr.bus, addr.slot, addr.function)
        if key in self.used:
            raise xml_error(
                f"Attempted double use of PCI Address "
                f"{addr.domain:04x}:{addr.bus:02x}:{addr.slot:02x}.{addr.function:x}"
            )
        self.used.add(key)

    def slot_free(self, bus: int, slot: int) -> bool:
        return not any((bus, slot, f) in self.used for f in range(8))

    def next_on_root(self, function: int = 0) -> PciAddress:
        for slot in self.root_slots:
            if self.slot_free(0, slot):
                addr = PciAddress(bus=0, slot=slot, function=function)
                self.take(addr)
                return addr
        raise xml_error("No more available PCI slots")


def _wants_pci(info: DeviceInfo) -> bool:
    return info.address is None


def _pci_devices(d: DomainDef) -> Iterator[tuple[DeviceInfo, bool]]:
    """Devices needing a PCI slot, in the order libvirt hands them out (primary video aside),
    each with whether it is a PCI Express device (on q35 those go on root ports)."""
    devs = d.devices
    for fs in devs.other("filesystem"):
        driver = fs.element.find("driver")
        if driver is None or driver.get("type") != "mtp":
            yield fs.info, True
    for net in devs.interfaces:
        yield net.info, net.model in ("virtio", "e1000e")
    for s in devs.sounds:
        if s.model not in ("sb16", "pcspk", "usb"):
            yield s.info, False  # HDA and AC97 are conventional PCI
    for c in devs.controllers:
        if c.type in ("pci", "fdc", "ccid") or (c.type == "usb" and c.model == "none"):
            continue
        if c.type == "ide" and c.index == 0:
            continue
        pcie = c.type in ("virtio-serial", "sata") or c.model in (
            "qemu-xhci",
            "nec-xhci",
            "virtio-scsi",
        )
        yield c.info, pcie
    for disk in devs.disks:
        if disk.bus == "virtio":
            yield disk.info, True
    if devs.memballoon is not None and devs.memballoon.model != "none":
        yield devs.memballoon.info, True
    for r in devs.rngs:
        yield r.info, True
    for w in devs.watchdogs:
        if w.model == "i6300esb":
            yield w.info, False
    for v in devs.videos:
        if v.model not in ("none", "ramfb"):
            yield v.info, v.model == "virtio"
    for shmem in devs.other("shmem"):
        yield shmem.info, False
    for i in devs.inputs:
        if i.bus == "virtio":
            yield i.info, True
    for vsock in devs.other("vsock"):
        yield vsock.info, True


def _collect_existing(d: DomainDef, buses: _PciBuses) -> None:
    for info in _all_infos(d):
        if isinstance(info.address, PciAddress):
            buses.take(info.address)


def _all_infos(d: DomainDef) -> Iterator[DeviceInfo]:
    devs = d.devices
    for group in (
        devs.disks,
        devs.controllers,
        devs.interfaces,
        devs.sounds,
        devs.videos,
        devs.rngs,
        devs.watchdogs,
        devs.inputs,
        devs.serials,
        devs.channels,
        devs.redirdevs,
        *devs.others.values(),
    ):
        for dev in group:
            yield dev.info
    if devs.memballoon is not None:
        yield devs.memballoon.info


def assign_pci_addresses(d: DomainDef) -> None:
    if is_i440fx(d):
        _assign_i440fx(d)
    elif is_q35(d):
        _assign_q35(d)


def _assign_i440fx(d: DomainDef) -> None:
    buses = _PciBuses()
    for function in (0, 3):  # PIIX3's ISA bridge and power management
        buses.take(PciAddress(0, 1, function))
    _collect_existing(d, buses)
    for c in d.devices.controllers:
        if c.info.address is None and c.index == 0:
            if c.type == "usb" and c.model == "piix3-uhci":
                c.info.address = PciAddress(0, 1, 2)
            elif c.type == "ide":
                c.info.address = PciAddress(0, 1, 1)
    for function in (1, 2):  # PIIX3's IDE and USB, whether or not the guest uses them
        buses.used.add((0, 1, function))
    _place_primary_video(d, buses, 2)
    for info, _ in _pci_devices(d):
        if not _wants_pci(info):
            continue
        c = _controller_of(d, info)
        if c is not None and c.model in _USB2_FUNCTION:
            _place_usb2(d, c, buses)
            continue
        info.address = buses.next_on_root()


def _controller_of(d: DomainDef, info: DeviceInfo) -> Controller | None:
    for c in d.devices.controllers:
        if c.info is info:
            return c
    return None


def _place_usb2(d: DomainDef, c: Controller, buses: _PciBuses) -> None:
    """USB2 companions share one slot, each at its model's function."""
    function = _USB2_FUNCTION[c.model or ""]
    multi = "on" if c.model == "ich9-uhci1" else None
    for other in d.devices.controllers:
        a = other.info.address
        if (
            other is not c
            and other.index == c.index
            and other.model in _USB2_FUNCTION
            and isinstance(a, PciAddress)
        ):
            c.info.address = PciAddress(a.bus, a.slot, function, multifunction=multi)
            buses.take(c.info.address)
            return
    c.info.address = buses.next_on_root(function)
    c.info.address.multifunction = multi


def _place_primary_video(d: DomainDef, buses: _PciBuses, slot: int) -> None:
    if not d.devices.videos:
        return
    video = d.devices.videos[0]
    if video.model in ("none", "ramfb") or video.info.address is not None:
        return
    if buses.slot_free(0, slot):
        video.info.address = PciAddress(0, slot, 0)
        buses.take(video.info.address)
    else:
        video.info.address = buses.next_on_root()


def _assign_q35(d: DomainDef) -> None:
    buses = _PciBuses()
    for function in (0, 3):  # ISA bridge and SMBus, always present
        buses.take(PciAddress(0, 0x1F, function))
    _collect_existing(d, buses)
    for c in d.devices.controllers:
        if c.type == "sata" and c.index == 0 and c.info.address is None:
            c.info.address = PciAddress(0, 0x1F, 2)
            buses.take(c.info.address)
    _place_primary_video(d, buses, 1)
    for s in d.devices.sounds:
        if s.model == "ich9" and s.info.address is None and buses.slot_free(0, 0x1B):
            s.info.address = PciAddress(0, 0x1B, 0)
            buses.take(s.info.address)
            break

    explicit_pci = [c for c in d.devices.controllers if c.type == "pci" and c.index > 0]
    next_bus = max((c.index for c in explicit_pci), default=0) + 1
    free_ports = [c.index for c in explicit_pci if c.model == "pcie-root-port"]
    for c in explicit_pci:
        if c.info.address is None:
            c.info.address = buses.next_on_root()
    taken_ports = {i.address.bus for i in _all_infos(d) if isinstance(i.address, PciAddress)}
    free_ports = [p for p in free_ports if p not in taken_ports]
    # First pass, as libvirt's: number the buses the devices need, in device order.
    # A conventional PCI device needs a pcie-to-pci-bridge, itself behind a root port.
    wanted = [(info, pcie) for info, pcie in _pci_devices(d) if _wants_pci(info)]
    first_new = next_bus
    bridges: list[int] = []
    bridge_room = 0
    needs_port = 0
    for _, pcie in wanted:
        if pcie and needs_port < len(free_ports):
            needs_port += 1
        elif pcie:
            next_bus += 1
        else:
            if bridge_room == 0:
                bridges.append(next_bus + 1)
                next_bus += 2
                bridge_room = 31
            bridge_room -= 1
    count = next_bus - first_new
    if count and not explicit_pci:
        count += 1  # one spare root port for hotplug
    new = range(first_new, first_new + count)
    # Second pass: bridges (controllers) take the lowest root ports, then devices follow.
    ports = free_ports + [i for i in new if i not in bridges]
    parent = {bridge: ports.pop(0) for bridge in bridges}
    slots = iter((bridge, slot) for bridge in bridges for slot in range(1, 32))
    for info, pcie in wanted:
        if pcie:
            info.address = PciAddress(bus=ports.pop(0), slot=0)
        else:
            bus, slot = next(slots)
            info.address = PciAddress(bus=bus, slot=slot)
    for index in new:
        if index in parent:
            bridge = Controller(
                type="pci", index=index, model="pcie-to-pci-bridge", model_name="pcie-pci-bridge"
            )
            bridge.info.address = PciAddress(bus=parent[index], slot=0)
            d.devices.controllers.append(bridge)
        else:
            _add_root_port(d, buses, index)


def _add_root_port(d: DomainDef, buses: _PciBuses, index: int) -> None:
    """A pcie-root-port on bus 0; new ports fill the functions of one slot before the next."""
    addr = None
    for slot in buses.root_slots:
        ports_here = [
            c
            for c in d.devices.controllers
            if c.model == "pcie-root-port"
            and isinstance(c.info.address, PciAddress)
            and c.info.address.bus == 0
            and c.info.address.slot == slot
        ]
        if ports_here and len(ports_here) < 8:
            function = len(ports_here)
            if (0, slot, function) not in buses.used:
                addr = PciAddress(0, slot, function)
                if function == 1:
                    ports_here[0].info.address.multifunction = "on"
                break
        if not ports_here and buses.slot_free(0, slot):
            addr = PciAddress(0, slot, 0)
            break
    if addr is None:
        raise xml_error("No more available PCI slots")
    buses.take(addr)
    port = Controller(
        type="pci",
        index=index,
        model="pcie-root-port",
        model_name="pcie-root-port",
        target={"chassis": str(index), "port": hex((addr.slot << 3) + addr.function)},
    )
    port.info.address = addr
    d.devices.controllers.append(port)


def hotplug_pci_address(d: DomainDef, info: DeviceInfo, pcie: bool) -> None:
    """A PCI slot for a device plugged into a running guest, where its QEMU can take it.

    Nothing new can appear under a running guest's buses, so on q35 a PCI Express
    device needs a free pcie-root-port and a conventional one a free slot on a
    pcie-to-pci-bridge; on i440fx any free slot of bus 0 will do.
    """
    if info.address is not None:
        return
    buses = _PciBuses()
    _collect_existing(d, buses)
    if is_q35(d):
        ports = [c.index for c in d.devices.controllers if c.model == "pcie-root-port"]
        bridges = [c.index for c in d.devices.controllers if c.model == "pcie-to-pci-bridge"]
        for bus in ports if pcie else []:
            if buses.slot_free(bus, 0) and not any(b == bus for b, _, _ in buses.used):
                info.address = PciAddress(bus=bus, slot=0)
                return
        for bus in bridges:
            for slot in range(1, 32):
                if buses.slot_free(bus, slot):
                    info.address = PciAddress(bus=bus, slot=slot)
                    return
    elif is_i440fx(d):
        buses.used.update((0, 1, f) for f in range(8))  # PIIX3's own functions
        for slot in buses.root_slots:
            if buses.slot_free(0, slot):
                info.address = PciAddress(bus=0, slot=slot)
                return
    raise VirError(ErrorCode.INTERNAL_ERROR, "internal error: No more available PCI slots",
                   ErrorDomain.QEMU)
