"""What libvirt's QEMU driver fills in after parsing: checks against the emulator,
defaults, and the devices a machine type brings implicitly.

The order in which implicit controllers are added matters: it is the order
``virsh dumpxml`` lists them in.
"""

from __future__ import annotations

import os
import uuid as uuidlib

from lxml import etree

from protocol.errors import ErrorCode, ErrorDomain, VirError

from ..capabilities import QemuCaps
from . import addresses
from .errors import unsupported, xml_error
from .model import (
    Audio,
    CharDevice,
    CharSource,
    Controller,
    Cpu,
    Disk,
    DomainDef,
    DriveAddress,
    Input,
    Interface,
    Memballoon,
    Video,
)
from .parse import WATCHDOG_MODELS, disk_index
from .validate import check_devices_early, validate

KNOWN_ARCHES = frozenset(
    "aarch64 alpha armv6l armv7l armv7b cris i686 ia64 lm32 loongarch64 m68k microblaze "
    "microblazeel mips mipsel mips64 mips64el openrisc parisc parisc64 ppc ppcle ppc64 "
    "ppc64le ppcemb riscv32 riscv64 s390 s390x sh4 sh4eb sparc sparc64 unicore32 x86_64 "
    "xtensa xtensaeb".split()
)
_BUS_BY_PREFIX = (
    ("hd", "ide"),
    ("sd", "scsi"),
    ("vd", "virtio"),
    ("fd", "fdc"),
    ("xvd", "xen"),
    ("ubd", "uml"),
)
_VIDEO_DEFAULTS = {
    "cirrus": {"vram": "16384", "heads": "1"},
    "vga": {"vram": "16384", "heads": "1"},
    "bochs": {"vram": "16384", "heads": "1"},
    "vmvga": {"vram": "16384", "heads": "1"},
    "qxl": {"ram": "65536", "vram": "65536", "vgamem": "16384", "heads": "1"},
    "virtio": {"heads": "1"},
}
_SUBFEATURE_ORDER = {
    "hyperv": "relaxed vapic spinlocks vpindex runtime synic stimer reset vendor_id frequencies "
    "reenlightenment tlbflush ipi evmcs avic".split(),
    "kvm": "hidden hint-dedicated poll-control pv-ipi dirty-ring".split(),
    "xen": "e820_host passthrough".split(),
}
FEATURE_ORDER = (
    "acpi apic pae hap viridian privnet hyperv kvm pvspinlock capabilities pmu vmport gic "
    "smm ioapic hpt vmcoreinfo htm nested-hv msrs ccf-assist xen cfpc sbbc ibs tcg "
    "async-teardown".split()
)


def fill(d: DomainDef, caps: QemuCaps) -> None:
    """Check ``d`` against ``caps`` and complete it as libvirtd's post-parse step does."""
    _check_emulator(d, caps)
    if not d.uuid:
        d.uuid = str(uuidlib.uuid4())
    d.current_memory = min(d.current_memory, d.memory)
    if d.vcpu_current is not None:
        if d.vcpu_current > d.vcpus:
            raise unsupported("maximum vCPU count must not be less than current vCPU count")
        if d.vcpu_current == d.vcpus:
            d.vcpu_current = None
    if d.on_reboot == "destroy" and d.on_poweroff == "restart":
        raise unsupported(
            "qemu driver doesn't support 'onReboot' set to 'destroy and "
            "'onPoweroff' set to 'reboot'",
            ErrorDomain.QEMU,
        )
    if d.devices.emulator is None:
        d.devices.emulator = caps.emulator
    order = {name: i for i, name in enumerate(FEATURE_ORDER)}
    d.features = {
        name: d.features[name]
        for name in sorted(d.features, key=lambda n: order.get(n, -1))
        if name in order
    }
    _fill_features(d)
    _check_usb_controllers(d)
    _fill_watchdogs(d)
    _check_usb_devices(d)
    check_devices_early(d)
    _fill_cpu(d)
    _fill_disks(d)
    _fill_controllers(d)
    _fill_interfaces(d)
    _fill_chardevs(d)
    _fill_inputs(d)
    _fill_graphics(d)
    _fill_videos(d)
    if d.devices.memballoon is None:
        d.devices.memballoon = Memballoon("virtio")
    for rng in d.devices.rngs:
        if rng.backend_model == "random" and not rng.backend_path:
            rng.backend_path = "/dev/random"
    _fill_kept(d)
    _add_implicit_controllers(d)
    addresses.assign_drive_addresses(d)
    addresses.assign_virtio_serial_addresses(d)
    addresses.assign_pci_addresses(d)
    addresses.assign_usb_addresses(d)
    if not d.os.boot_devs and not _any_boot_order(d):
        d.os.boot_devs = ["hd"]
    validate(d)


def _fill_features(d: DomainDef) -> None:
    for name, feature in d.features.items():
        rank = _SUBFEATURE_ORDER.get(name)
        if rank is None:
            feature.children = []
            continue
        feature.children = sorted(
            (c for c in feature.children if c[0] in rank), key=lambda c: rank.index(c[0])
        )
        if name == "hyperv":
            feature.attrs.setdefault("mode", "custom")


def _fill_kept(d: DomainDef) -> None:
    """The few defaults libvirt adds inside the sections and devices we keep as written."""
    if d.vcpu_placement == "auto" and "numatune" not in d.kept:
        numatune = etree.Element("numatune")
        etree.SubElement(numatune, "memory", mode="strict", placement="auto")
        d.kept["numatune"] = numatune  # memory follows the CPUs numad picks
    seclabel = d.kept.get("seclabel")
    if seclabel is not None and seclabel.get("type") == "none" and seclabel.get("model") is None:
        seclabel.set("model", "none")
    if seclabel is not None and seclabel.get("type", "dynamic") == "dynamic":
        for child in seclabel.findall("label") + seclabel.findall("imagelabel"):
            seclabel.remove(child)  # chosen at each start
    for port, parallel in enumerate(d.devices.other("parallel")):
        if parallel.element.find("target") is None:
            etree.SubElement(parallel.element, "target", port=str(port))


def _fill_watchdogs(d: DomainDef) -> None:
    for wd in d.devices.watchdogs:
        if wd.model not in WATCHDOG_MODELS:
            raise unsupported(f"unknown watchdog model '{wd.model}'")
        wd.action = wd.action or "reset"


def _usb_disabled(d: DomainDef) -> bool:
    return any(c.type == "usb" and c.model == "none" for c in d.devices.controllers)


def _check_usb_controllers(d: DomainDef) -> None:
    """model='none' says there is no USB: no other USB controller may say otherwise."""
    if _usb_disabled(d) and sum(c.type == "usb" for c in d.devices.controllers) > 1:
        raise VirError(
            ErrorCode.XML_DETAIL,
            "Can't add another USB controller: USB is disabled for this domain",
            ErrorDomain.DOMAIN,
        )


def _check_usb_devices(d: DomainDef) -> None:
    """USB devices need a USB controller."""
    devs = d.devices
    if not _usb_disabled(d):
        return
    if any(i.bus == "usb" for i in devs.inputs):
        raise unsupported("Can't add USB input device. USB bus is disabled")
    if devs.other("hub"):
        raise unsupported("Can't add USB hub: USB is disabled for this domain")
    if any(disk.bus == "usb" for disk in devs.disks) or devs.redirdevs:
        raise unsupported(
            "USB is disabled for this domain, but USB devices are present in the domain XML",
            ErrorDomain.QEMU,
        )


def _check_emulator(d: DomainDef, caps: QemuCaps) -> None:
    if d.type not in ("qemu", "kvm"):
        raise unsupported(
            f"Emulator '{caps.emulator}' does not support virt type '{d.type}'", ErrorDomain.QEMU
        )
    if d.os.type != "hvm":
        raise unsupported(
            f"Emulator '{caps.emulator}' does not support os type '{d.os.type}'", ErrorDomain.QEMU
        )
    arch = d.os.arch or caps.arch
    if arch not in KNOWN_ARCHES:
        raise unsupported(f"Unknown architecture {arch}")
    if arch != caps.arch:
        raise unsupported(f"No guest options available for arch '{arch}'", ErrorDomain.CAPABILITIES)
    d.os.arch = arch
    d.os.machine = caps.canonical_machine(d.os.machine)
    if not caps.has_machine(d.os.machine) or not (addresses.is_i440fx(d) or addresses.is_q35(d)):
        raise xml_error("No PCI buses available")
    machine = caps.machines.get(d.os.machine)
    if machine is not None and d.vcpus > machine.max_cpus:
        raise unsupported(
            f"Maximum CPUs greater than specified machine type limit {machine.max_cpus}",
            ErrorDomain.QEMU,
        )
    topo = d.cpu.topology if d.cpu else None
    if (
        topo
        and topo.get("sockets", 1)
        * topo.get("dies", 1)
        * topo.get("cores", 1)
        * topo.get("threads", 1)
        != d.vcpus
    ):
        raise unsupported("CPU topology doesn't match maximum vcpu count", ErrorDomain.QEMU)
    if addresses.is_q35(d) and (
        any(disk.bus == "ide" for disk in d.devices.disks)
        or any(c.type == "ide" for c in d.devices.controllers)
    ):
        raise unsupported(
            "IDE controllers are unsupported for this QEMU binary or machine type", ErrorDomain.QEMU
        )


def _fill_cpu(d: DomainDef) -> None:
    cpu = d.cpu or Cpu()
    d.cpu = cpu
    if cpu.mode == "custom":
        if cpu.model is None:
            cpu.model = "qemu64"
            cpu.model_fallback = cpu.model_fallback or "forbid"
            cpu.check = cpu.check or "none"
        cpu.match = cpu.match or "exact"
        cpu.check = cpu.check or (
            "none" if d.type == "qemu" else "partial"
        )  # TCG: no host to check
        cpu.model_fallback = cpu.model_fallback or "allow"
    elif cpu.mode == "host-model":
        cpu.check = cpu.check or "partial"
    elif cpu.mode == "host-passthrough":
        cpu.check = cpu.check or "none"
        cpu.migratable = cpu.migratable or "on"
    elif cpu.mode == "maximum":
        cpu.check = cpu.check or "none"
    if cpu.topology is not None:
        cpu.topology = {
            "sockets": cpu.topology.get("sockets", 1),
            "dies": cpu.topology.get("dies", 1),
            "cores": cpu.topology.get("cores", 1),
            "threads": cpu.topology.get("threads", 1),
        }


def _fill_disks(d: DomainDef) -> None:
    for disk in d.devices.disks:
        fill_disk(disk)


def fill_disk(disk: Disk) -> None:
    """Bus from the target's name, driver qemu and format raw unless given (a volume
    disk gets its format when it is resolved, as in libvirt)."""
    if not disk.bus:
        disk.bus = next((bus for p, bus in _BUS_BY_PREFIX if disk.target.startswith(p)), "ide")
    driver = {"name": disk.driver.get("name", "qemu")}
    if disk.type != "volume":
        driver["type"] = disk.driver.get("type", "raw")
    driver.update(disk.driver)
    disk.driver = driver


def _default_usb_model(d: DomainDef) -> str:
    return "qemu-xhci" if addresses.is_q35(d) else "piix3-uhci"


def _next_index(d: DomainDef, ctype: str) -> int:
    return max((c.index for c in d.devices.controllers if c.type == ctype), default=-1) + 1


_COMPANION_PORT = {"ich9-uhci1": 0, "ich9-uhci2": 2, "ich9-uhci3": 4}


def _fill_controllers(d: DomainDef) -> None:
    for c in d.devices.controllers:
        if c.index == -1 and c.type == "usb" and c.model in _COMPANION_PORT:
            # a USB1 companion joins the USB2 controller before it
            ehci = [o for o in d.devices.controllers if o.model == "ich9-ehci1" and o.index >= 0]
            if ehci:
                c.index = ehci[-1].index
                if c.master_startport is None:
                    c.master_startport = _COMPANION_PORT[c.model]
        if c.index == -1:
            c.index = _next_index(d, c.type)
        if c.model is None:
            if c.type == "usb":
                c.model = _default_usb_model(d)
            elif c.type == "scsi":
                c.model = "lsilogic"
            elif c.type == "pci" and c.index == 0:
                c.model = "pcie-root" if addresses.is_q35(d) else "pci-root"


def _has_controller(d: DomainDef, ctype: str, index: int = 0) -> bool:
    return any(c.type == ctype and c.index == index for c in d.devices.controllers)


def _maybe_add(d: DomainDef, ctype: str, index: int = 0, model: str | None = None) -> None:
    if not _has_controller(d, ctype, index):
        d.devices.controllers.append(Controller(type=ctype, index=index, model=model))


def _add_implicit_controllers(d: DomainDef) -> None:
    """The machine's own controllers first, then those the devices need, as libvirt adds them."""
    if not any(c.type == "usb" for c in d.devices.controllers):
        _maybe_add(d, "usb", 0, _default_usb_model(d))
    if addresses.is_q35(d):
        _maybe_add(d, "sata", 0)
        _maybe_add(d, "pci", 0, "pcie-root")
    else:
        _maybe_add(d, "pci", 0, "pci-root")
    for bus, ctype, model in (
        ("scsi", "scsi", "lsilogic"),
        ("fdc", "fdc", None),
        ("ide", "ide", None),
        ("sata", "sata", None),
    ):
        needed = set()
        for disk in d.devices.disks:
            if disk.bus == bus:
                units, buses = addresses.DRIVE_LAYOUT[bus]
                a = disk.info.address
                needed.add(
                    a.controller
                    if isinstance(a, DriveAddress)
                    else disk_index(disk.target) // (units * buses)
                )
        for index in sorted(needed):
            _maybe_add(d, ctype, index, model)
    if any(c.target_type == "virtio" for c in d.devices.channels + d.devices.consoles):
        _maybe_add(d, "virtio-serial", 0)


def _fill_interfaces(d: DomainDef) -> None:
    for net in d.devices.interfaces:
        fill_interface(net)


def fill_interface(net: Interface) -> None:
    """A random MAC in QEMU's 52:54:00 range and the rtl8139 model unless given."""
    if not net.mac:
        net.mac = "52:54:00:" + ":".join(f"{b:02x}" for b in os.urandom(3))
    if net.model is None:
        net.model = "rtl8139"


def _fill_chardevs(d: DomainDef) -> None:
    devs = d.devices
    for s in devs.serials:
        s.target_type = s.target_type or "isa-serial"
        if s.target_port is None:
            used = [o.target_port for o in devs.serials if o.target_port is not None]
            s.target_port = max(used) + 1 if used else 0
        if s.target_type == "isa-serial":
            s.target_model = s.target_model or "isa-serial"
    for i, c in enumerate(devs.consoles):
        if c.target_type is None:
            c.target_type = "serial"
        if c.target_port is None or c.target_type != "serial":
            c.target_port = i  # libvirt numbers non-serial consoles by position, as written
        if i == 0 and c.target_type == "serial" and devs.serials:
            c.target_port = devs.serials[0].target_port  # the console is the first serial port
    if devs.consoles and devs.consoles[0].target_type == "serial":
        first = devs.consoles[0]
        if not devs.serials:
            devs.serials.append(
                CharDevice(
                    kind="serial",
                    source=CharSource(first.source.type, dict(first.source.attrs)),
                    protocol=first.protocol,
                    log=dict(first.log),
                    target_type="isa-serial",
                    target_port=0,
                    target_model="isa-serial",
                )
            )
        else:
            first.source = CharSource(
                devs.serials[0].source.type, dict(devs.serials[0].source.attrs)
            )
            first.protocol = devs.serials[0].protocol
            first.log = dict(devs.serials[0].log)
    if devs.serials and (not devs.consoles or devs.consoles[0].target_type != "serial"):
        # the first serial port is always the first console too
        serial = devs.serials[0]
        devs.consoles.insert(
            0,
            CharDevice(
                kind="console",
                source=CharSource(serial.source.type, dict(serial.source.attrs)),
                protocol=serial.protocol,
                log=dict(serial.log),
                target_type="serial",
                target_port=serial.target_port,
            ),
        )
    if any(c.target_type == "serial" for c in devs.consoles[1:]):
        raise unsupported("Only the first console can be a serial port")
    for ch in devs.channels:
        ch.target_type = ch.target_type or "virtio"


def _fill_inputs(d: DomainDef) -> None:
    for itype in ("mouse", "keyboard"):
        if not any(i.type == itype and i.bus == "ps2" for i in d.devices.inputs):
            d.devices.inputs.append(Input(itype, "ps2"))


def _fill_graphics(d: DomainDef) -> None:
    """Ports, autoport and listen as libvirt completes them (attribute order is format's job)."""
    for g in d.devices.graphics:
        a = g.attrs
        listen_none = bool(g.listens) and g.listens[0].get("type") == "none"
        if g.type == "vnc" and listen_none:
            a.pop("port", None)  # nothing listens, so no port
            a.pop("autoport", None)
        elif g.type == "vnc":
            if a.get("port") in (None, "-1", "0") or a.get("autoport") == "yes":
                a.update(port="-1", autoport="yes")
            else:
                a.setdefault("autoport", "no")
        elif g.type == "spice":
            if a.get("autoport") == "yes":
                a.pop("port", None)
                a.pop("tlsPort", None)
            elif "port" in a or "tlsPort" in a:
                a.setdefault("autoport", "no")
            elif not g.listens and "listen" not in a:
                g.listens = [{"type": "none"}]  # no port at all: nothing to listen on
        if g.type not in ("vnc", "spice"):
            continue
        if not g.listens:
            g.listens = [{"type": "address", **({"address": a["listen"]} if "listen" in a else {})}]
        elif (
            "listen" not in a
            and g.listens[0].get("type") == "address"
            and g.listens[0].get("address")
        ):
            a["listen"] = g.listens[0]["address"]
    if not d.devices.audios:
        graphics = d.devices.graphics
        kind = "spice" if graphics and graphics[-1].type == "spice" else "none"
        d.devices.audios.append(Audio(1, kind))


def _fill_videos(d: DomainDef) -> None:
    devs = d.devices
    if not devs.videos and devs.graphics:
        devs.videos.append(Video("default"))
    if len(devs.videos) > 1 and any(v.model == "none" for v in devs.videos):
        raise unsupported(
            "a 'none' video type must be the only video device defined for the domain"
        )
    for i, v in enumerate(devs.videos):
        if v.model == "default":
            v.model = "cirrus"
        attrs = dict(_VIDEO_DEFAULTS.get(v.model, {}))
        attrs.update(v.attrs)
        if v.model == "cirrus":
            attrs["vram"] = "16384"  # QEMU's cirrus has exactly 16 MiB
        v.attrs = attrs
        if i == 0 and v.model != "none":
            v.primary = True


def _any_boot_order(d: DomainDef) -> bool:
    devs = d.devices
    return any(dev.info.boot_order is not None for dev in (*devs.disks, *devs.interfaces))
