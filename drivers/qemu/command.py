"""The QEMU 7.2 command line for a domain, laid out as libvirtd 9.0 builds it.

Same options, same order, same device ids, so guests see the same hardware and
QMP ids match libvirt's aliases. What libvirt does through its security and cgroup
layers (master key secret, tap fds it opened, seccomp beyond ``-sandbox``) is left
out; QEMU runs in the foreground as a plain child of the driver.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Mapping
from typing import Any

from protocol.errors import ErrorCode, ErrorDomain, VirError

from .capabilities import QemuCaps
from .domain_xml.addresses import is_q35
from .domain_xml.aliases import assign_aliases, fill_channel_paths, scsi_has_luns
from .domain_xml.model import (
    CharDevice,
    CharSource,
    Controller,
    DeviceInfo,
    Disk,
    DomainDef,
    DriveAddress,
    Input,
    Interface,
    PciAddress,
    Rng,
    UsbAddress,
    VirtioSerialAddress,
    Watchdog,
)

_CONTROLLER_ORDER = ("pci", "usb", "scsi", "ide", "sata", "virtio-serial", "ccid")
_USB_DRIVERS = {
    "piix3-uhci": "piix3-usb-uhci",
    "piix4-uhci": "piix4-usb-uhci",
    "ich9-ehci1": "ich9-usb-ehci1",
    "ich9-uhci1": "ich9-usb-uhci1",
    "ich9-uhci2": "ich9-usb-uhci2",
    "ich9-uhci3": "ich9-usb-uhci3",
    "qemu-xhci": "qemu-xhci",
    "nec-xhci": "nec-usb-xhci",
    "pci-ohci": "pci-ohci",
}
_SCSI_DRIVERS = {
    "virtio-scsi": "virtio-scsi-pci",
    "lsilogic": "lsi",
    "lsisas1068": "mptsas1068",
    "lsisas1078": "megasas",
}
_NIC_DRIVERS = {"virtio": "virtio-net-pci"}
_CACHE_MODES = {  # cache mode -> (direct, no-flush, write-cache)
    "none": (True, False, True),
    "writeback": (False, False, True),
    "writethrough": (False, False, False),
    "directsync": (True, False, False),
    "unsafe": (False, True, True),
}


def _json(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _pci_props(d: DomainDef, addr: PciAddress) -> dict[str, Any]:
    """Where a PCI device plugs in: QEMU names bus 0 pci.0 (pcie.0 on q35)."""
    if addr.bus == 0:
        bus = "pcie.0" if is_q35(d) else "pci.0"
    else:
        bus = f"pci.{addr.bus}"
    props: dict[str, Any] = {"bus": bus}
    if addr.multifunction == "on":
        props["multifunction"] = True
    props["addr"] = (
        f"0x{addr.slot:x}" if addr.function == 0 else f"0x{addr.slot:x}.0x{addr.function:x}"
    )
    return props


def _addr_props(d: DomainDef, info: DeviceInfo) -> dict[str, Any]:
    return _pci_props(d, info.address) if isinstance(info.address, PciAddress) else {}


def build_argv(
    d: DomainDef,
    caps: QemuCaps,
    *,
    monitor_path: str,
    pidfile: str | None = None,
    channel_dir: str | None = None,
    vnc_port: int | None = None,
    spice_port: int | None = None,
    net_fds: Mapping[str, int] | None = None,
) -> list[str]:
    """argv for ``d``, which gets its aliases and channel socket paths (the live XML shows them).

    ``vnc_port``/``spice_port`` are the ports picked for autoport graphics (VNC falls back
    to QEMU's own search from 5900). ``net_fds`` maps an interface alias to a tap fd the
    caller opened; without one, bridge/network/ethernet interfaces get the tap named by
    ``<target dev>``, which the caller should set on the live definition (libvirtd shows
    it there) and attach to its bridge; QEMU creates a missing one, unattached and down.
    """
    assign_aliases(d)
    a: list[str] = [caps.emulator, "-name", f"guest={d.name},debug-threads=on", "-S"]
    machine = _machine(d, a)
    a += ["-machine", machine]
    a += ["-accel", "kvm" if d.type == "kvm" else "tcg"]
    a += ["-cpu", _cpu(d)]
    if d.os.loader and d.os.loader_attrs.get("type", "rom") == "rom":
        a += ["-bios", d.os.loader]
    if d.os.loader_attrs.get("secure") == "yes":
        a += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
    _memory(d, a)
    a += ["-overcommit", "mem-lock=off"]
    a += ["-smp", _smp(d)]
    for n in range(1, (d.iothreads or 0) + 1):
        a += ["-object", _json({"qom-type": "iothread", "id": f"iothread{n}"})]
    _numa(d, a)
    a += ["-uuid", d.uuid]
    if d.genid:
        a += ["-device", _json({"driver": "vmgenid", "guid": d.genid, "id": "vmgenid0"})]
    if not d.devices.graphics:
        a += ["-display", "none"]
    a += ["-no-user-config", "-nodefaults"]
    a += ["-chardev", f"socket,id=charmonitor,path={monitor_path},server=on,wait=off"]
    a += ["-mon", "chardev=charmonitor,id=monitor,mode=control"]
    if pidfile:
        a += ["-pidfile", pidfile]
    _clock(d, a)
    a.append("-no-shutdown")
    if "acpi" not in d.features:
        a.append("-no-acpi")
    _pm(d, a)
    a += ["-boot", _boot(d)]
    if d.os.kernel:
        a += ["-kernel", d.os.kernel]
    if d.os.initrd:
        a += ["-initrd", d.os.initrd]
    if d.os.cmdline:
        a += ["-append", d.os.cmdline]
    _controllers(d, a)
    _hubs(d, a)
    _disks(d, a)
    _filesystems(d, a)
    _interfaces(d, a, net_fds or {})
    _chardevs(d, a, channel_dir)
    _inputs(d, a)
    for audio in d.devices.audios:
        a += ["-audiodev", _json({"id": f"audio{audio.id}", "driver": audio.type})]
    _graphics(d, a, vnc_port, spice_port)
    _videos(d, a)
    _sounds(d, a)
    _watchdogs(d, a)
    _redirdevs(d, a)
    mb = d.devices.memballoon
    if mb is not None and mb.model == "virtio":
        props = {"driver": "virtio-balloon-pci", "id": mb.info.alias}
        if mb.attrs.get("autodeflate") == "on":
            props["deflate-on-oom"] = True
        if mb.attrs.get("freePageReporting") in ("on", "off"):
            props["free-page-reporting"] = mb.attrs["freePageReporting"] == "on"
        a += ["-device", _json({**props, **_addr_props(d, mb.info)})]
    _rngs(d, a)
    vmcoreinfo = d.features.get("vmcoreinfo")
    if vmcoreinfo is not None and vmcoreinfo.attrs.get("state", "on") == "on":
        a += ["-device", _json({"driver": "vmcoreinfo"})]
    a += d.qemu_args  # <qemu:commandline>; its <qemu:env> is the caller's to set
    a += ["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
    _panics_and_vsock(d, a)
    a += ["-msg", "timestamp=on"]
    return a


def _machine(d: DomainDef, a: list[str]) -> str:
    parts = [d.os.machine or "", "usb=off"]
    ioapic = d.features.get("ioapic")
    if ioapic is not None and ioapic.attrs.get("driver") == "kvm":
        parts.append("kernel_irqchip=on")
    elif ioapic is not None and ioapic.attrs.get("driver") == "qemu":
        parts.append("kernel_irqchip=split")
    vmport = d.features.get("vmport")
    if vmport is not None:
        parts.append(f"vmport={vmport.attrs.get('state', 'on')}")
    smm = d.features.get("smm")
    if smm is not None:
        parts.append(f"smm={smm.attrs.get('state', 'on')}")
    parts.append("dump-guest-core=off")
    if not (d.cpu and d.cpu.numa):
        parts.append("memory-backend=pc.ram")
    if d.os.loader and d.os.loader_attrs.get("type") == "pflash":
        for n, (path, readonly) in enumerate(
            ((d.os.loader, d.os.loader_attrs.get("readonly") == "yes"), (d.os.nvram, False))
        ):
            if not path:
                continue
            node = f"libvirt-pflash{n}"
            a += [
                "-blockdev",
                _json(
                    {
                        "driver": "file",
                        "filename": path,
                        "node-name": f"{node}-storage",
                        "auto-read-only": True,
                        "discard": "unmap",
                    }
                ),
            ]
            a += [
                "-blockdev",
                _json(
                    {
                        "node-name": f"{node}-format",
                        "read-only": readonly,
                        "driver": "raw",
                        "file": f"{node}-storage",
                    }
                ),
            ]
            parts.append(f"pflash{n}={node}-format")
    return ",".join(parts)


def _cpu(d: DomainDef) -> str:
    cpu = d.cpu
    if cpu is None:
        return "qemu64"
    if cpu.mode in ("host-passthrough", "host-model", "maximum"):
        # libvirt expands host-model from the host CPU; "host" is the nearest we have.
        parts = ["host" if d.type == "kvm" and cpu.mode != "maximum" else "max"]
        if cpu.migratable and cpu.mode != "host-model":
            parts.append(f"migratable={cpu.migratable}")
        if cpu.cache.get("mode") == "passthrough":
            parts += ["host-cache-info=on", "l3-cache=off"]
    else:
        parts = [cpu.model or "qemu64"]
        for f in cpu.features:
            parts.append(f"{f.name}={'off' if f.policy in ('disable', 'forbid') else 'on'}")
    return ",".join(parts + _cpu_flags(d))


def _cpu_flags(d: DomainDef) -> list[str]:
    """CPU properties libvirt derives from <clock> timers and <features>."""
    flags = []
    for t in d.clock.timers:
        if t.attrs.get("name") == "hypervclock" and t.attrs.get("present") == "yes":
            flags.append("hv-time=on")
        elif t.attrs.get("name") == "kvmclock" and t.attrs.get("present"):
            flags.append(f"kvmclock={'on' if t.attrs['present'] == 'yes' else 'off'}")
    apic = d.features.get("apic")
    if apic is not None and apic.attrs.get("eoi"):
        flags.append(f"kvm-pv-eoi={apic.attrs['eoi']}")
    pvspinlock = d.features.get("pvspinlock")
    if pvspinlock is not None:
        flags.append(f"kvm-pv-unhalt={pvspinlock.attrs.get('state', 'on')}")
    hyperv = d.features.get("hyperv")
    if hyperv is not None:
        for name, attrs in hyperv.children:
            if attrs.get("state") != "on":
                continue
            if name == "spinlocks":
                flags.append(f"hv-spinlocks={int(attrs.get('retries', '4095')):#x}")
            elif name == "vendor_id":
                flags.append(f"hv-vendor-id={attrs.get('value', '')}")
            else:
                flags.append(f"hv-{name}=on")
    kvm = d.features.get("kvm")
    if kvm is not None:
        for name, attrs in kvm.children:
            state = attrs.get("state", "on")
            flags.append(
                f"kvm={'off' if state == 'on' else 'on'}"
                if name == "hidden"
                else f"kvm-{name}={state}"
            )
    pmu = d.features.get("pmu")
    if pmu is not None:
        flags.append(f"pmu={pmu.attrs.get('state', 'on')}")
    return flags


def _mib(kib: int) -> int:
    return -(-kib // 1024)


def _memory(d: DomainDef, a: list[str]) -> None:
    mib = _mib(d.memory)
    if d.max_memory:
        a += ["-m", f"size={mib * 1024}k,slots={d.max_memory_slots or 0},maxmem={d.max_memory}k"]
    else:
        a += ["-m", str(mib)]
    if not (d.cpu and d.cpu.numa):
        a += [
            "-object",
            _json({"qom-type": "memory-backend-ram", "id": "pc.ram", "size": mib * 1024 * 1024}),
        ]


def _smp(d: DomainDef) -> str:
    current = d.vcpu_current or d.vcpus
    topo = d.cpu.topology if d.cpu and d.cpu.topology else None
    parts = [str(current)]
    if current != d.vcpus:
        parts.append(f"maxcpus={d.vcpus}")
    if topo:
        parts.append(f"sockets={topo['sockets']}")
        parts.append(f"dies={topo['dies']}")
        parts.append(f"cores={topo['cores']}")
        parts.append(f"threads={topo['threads']}")
    else:
        parts += [f"sockets={d.vcpus}", "cores=1", "threads=1"]
    return ",".join(parts)


def _numa(d: DomainDef, a: list[str]) -> None:
    if not (d.cpu and d.cpu.numa):
        return
    from .domain_xml.parse import scale_kib

    for n, cell in enumerate(d.cpu.numa):
        kib = scale_kib(
            cell.attrs.get("memory", "0"), cell.attrs.get("unit"), "./cpu/numa/cell/@memory"
        )
        a += [
            "-object",
            _json({"qom-type": "memory-backend-ram", "id": f"ram-node{n}", "size": kib * 1024}),
        ]
        cell_id = cell.attrs.get("id", str(n))
        a += [
            "-numa",
            f"node,nodeid={cell_id},cpus={cell.attrs.get('cpus', '')},memdev=ram-node{n}",
        ]


def _clock(d: DomainDef, a: list[str]) -> None:
    if d.clock.offset == "variable":
        # the guest's clock is the host's plus an offset, fixed now at start
        basis = d.clock.attrs.get("basis", "utc")
        start = time.time() + int(d.clock.attrs.get("adjustment", "0"))
        at = time.localtime(start) if basis == "localtime" else time.gmtime(start)
        rtc = f"base={time.strftime('%Y-%m-%dT%H:%M:%S', at)}"
    else:  # offset='timezone' runs on local time too, with TZ set in QEMU's environment
        rtc = f"base={'utc' if d.clock.offset == 'utc' else 'localtime'}"
    extra: list[str] = []
    for t in d.clock.timers:
        name = t.attrs.get("name")
        if name == "rtc" and t.attrs.get("tickpolicy") == "catchup":
            rtc += ",driftfix=slew"
        elif name == "pit" and t.attrs.get("tickpolicy") == "delay":
            extra += ["-global", "kvm-pit.lost_tick_policy=delay"]
        elif name == "hpet" and t.attrs.get("present") == "no":
            extra.append("-no-hpet")
    a += ["-rtc", rtc, *extra]


def _pm(d: DomainDef, a: list[str]) -> None:
    device = "ICH9-LPC" if is_q35(d) else "PIIX4_PM"
    for key, prop in (("suspend-to-mem", "disable_s3"), ("suspend-to-disk", "disable_s4")):
        if key in d.pm:
            a += ["-global", f"{device}.{prop}={1 if d.pm[key] == 'no' else 0}"]


def _boot(d: DomainDef) -> str:
    parts = []
    menu = d.os.bootmenu
    if menu.get("enable") == "yes":
        parts.append("menu=on")
        if menu.get("timeout"):
            parts.append(f"splash-time={menu['timeout']}")
    elif menu.get("enable") == "no":
        parts.append("menu=off")
    parts.append("strict=on")
    return ",".join(parts)


def _boot_indexes(d: DomainDef) -> dict[int, int]:
    """Per-device bootindex (by id of DeviceInfo): explicit orders, or <os><boot> mapped onto
    the first device of each kind, as libvirt does for QEMU."""
    indexes: dict[int, int] = {}
    devs = d.devices
    explicit = [x for x in (*devs.disks, *devs.interfaces) if x.info.boot_order is not None]
    if explicit:
        for x in explicit:
            indexes[id(x.info)] = x.info.boot_order or 0
        return indexes
    kinds = {"hd": "disk", "cdrom": "cdrom", "fd": "floppy"}
    for n, dev in enumerate(d.os.boot_devs, 1):
        if dev == "network":
            target = next((i.info for i in devs.interfaces), None)
        else:
            target = next((x.info for x in devs.disks if x.device == kinds[dev]), None)
        if target is not None and id(target) not in indexes:
            indexes[id(target)] = n
    return indexes


def _controllers(d: DomainDef, a: list[str]) -> None:
    for ctype in _CONTROLLER_ORDER:
        conts = [c for c in d.devices.controllers if c.type == ctype]
        if ctype == "pci":
            conts.sort(key=lambda c: c.index)
        for c in conts:
            props = controller_props(d, c)
            if props is not None:
                a += ["-device", _json(props)]


def controller_props(d: DomainDef, c: Controller) -> dict[str, Any] | None:
    """A controller's device; None for those the machine has built in."""
    addr = _addr_props(d, c.info)
    if c.type == "pci":
        if c.model == "pcie-to-pci-bridge":
            return {"driver": "pcie-pci-bridge", "id": c.info.alias, **addr}
        if c.model != "pcie-root-port":
            return None
        return {
            "driver": "pcie-root-port",
            "port": int(c.target.get("port", "0"), 0),
            "chassis": int(c.target.get("chassis", "0")),
            "id": c.info.alias,
            **addr,
        }
    if c.type == "usb":
        if c.model in (None, "none"):
            return None
        props: dict[str, Any] = {"driver": _USB_DRIVERS.get(c.model, c.model)}
        if c.master_startport is not None:  # a companion has no id of its own
            return {
                **props,
                "masterbus": f"{_usb_alias(d, c.index)}.0",
                "firstport": c.master_startport,
                **addr,
            }
        ports = c.attrs.get("ports")
        if ports and c.model in ("qemu-xhci", "nec-xhci"):
            props["p2"] = int(ports)
            props["p3"] = int(ports)
        return {**props, "id": c.info.alias, **addr}
    if c.type == "scsi":
        props = {"driver": _SCSI_DRIVERS.get(c.model or "", c.model), "id": c.info.alias}
        if c.driver.get("queues"):
            props["num_queues"] = int(c.driver["queues"])
        return {**props, **addr}
    if c.type == "virtio-serial":
        return {"driver": "virtio-serial-pci", "id": c.info.alias, **addr}
    if c.type == "sata" and not (is_q35(d) and c.index == 0):
        return {"driver": "ahci", "id": c.info.alias, **addr}
    return None


def _usb_alias(d: DomainDef, index: int) -> str:
    for c in d.devices.controllers:
        if c.type == "usb" and c.index == index and c.master_startport is None:
            return c.info.alias or "usb"
    return "usb"


def _disks(d: DomainDef, a: list[str]) -> None:
    boot = _boot_indexes(d)
    total = len(d.devices.disks)
    for n, disk in enumerate(d.devices.disks):
        node = f"libvirt-{total - n}"
        has_image = disk.source is not None or bool(disk.net_source)
        if has_image:
            disk.node_index = total - n
            for props in blockdev_props(disk, node):
                a += ["-blockdev", _json(props)]
        a += ["-device", _json(disk_device_props(d, disk, node if has_image else None, boot))]


def blockdev_props(disk: Disk, node: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The storage and format nodes of ``disk``'s image, named ``node``-storage/-format
    (the arguments of ``-blockdev`` and of QMP ``blockdev-add`` alike)."""
    drv = disk.driver
    cache = _cache(disk)
    storage: dict[str, Any]
    if disk.net_source.get("protocol") == "nbd":
        host = disk.hosts[0] if disk.hosts else {}
        server = {"type": "inet", "host": host.get("name", ""), "port": host.get("port", "10809")}
        if host.get("transport") == "unix":
            server = {"type": "unix", "path": host.get("socket", "")}
        storage = {"driver": "nbd", "server": server}
        if disk.net_source.get("name"):
            storage["export"] = disk.net_source["name"]
    else:
        storage = {
            "driver": "host_device" if disk.source_type == "block" else "file",
            "filename": disk.source,
        }
    if drv.get("io") in ("native", "threads", "io_uring"):
        storage["aio"] = drv["io"]
    storage["node-name"] = f"{node}-storage"
    if cache is not None:
        storage["cache"] = {"direct": cache[0], "no-flush": cache[1]}
    storage["auto-read-only"] = True
    storage["discard"] = "unmap"
    fmt: dict[str, Any] = {"node-name": f"{node}-format", "read-only": disk.readonly}
    if drv.get("discard") in ("unmap", "ignore"):
        fmt["discard"] = drv["discard"]
    if drv.get("detect_zeroes") in ("on", "off", "unmap"):
        fmt["detect-zeroes"] = drv["detect_zeroes"]
    if cache is not None:
        fmt["cache"] = {"direct": cache[0], "no-flush": cache[1]}
    fmt["driver"] = drv.get("type", "raw")
    fmt["file"] = f"{node}-storage"
    return storage, fmt


def _cache(disk: Disk) -> tuple[bool, bool, bool] | None:
    """The cache mode in effect: a writable shared disk bypasses the host cache."""
    mode = disk.driver.get("cache")
    if mode is None and disk.shareable and not disk.readonly:
        mode = "none"
    return _CACHE_MODES.get(mode or "")


def disk_device_props(
    d: DomainDef, disk: Disk, node: str | None, boot: Mapping[int, int]
) -> dict[str, Any]:
    """The ``-device`` (or ``device_add``) properties of ``disk``, its image in ``node``."""
    addr = disk.info.address
    props: dict[str, Any]
    if disk.bus == "virtio":
        props = {"driver": "virtio-blk-pci"}
        if disk.driver.get("iothread"):
            props["iothread"] = f"iothread{disk.driver['iothread']}"
        props.update(_addr_props(d, disk.info))
        if disk.shareable:
            props["share-rw"] = True
    elif disk.bus in ("ide", "sata") and isinstance(addr, DriveAddress):
        props = {"driver": "ide-cd" if disk.device == "cdrom" else "ide-hd"}
        if disk.bus == "ide":
            props["bus"] = f"ide.{addr.bus}"
            props["unit"] = addr.unit
        elif addr.controller == 0 and is_q35(d):
            props["bus"] = f"ide.{addr.unit}"  # q35's own AHCI
        else:
            props["bus"] = f"sata{addr.controller}.{addr.unit}"
        if disk.shareable:
            props["share-rw"] = True
    elif disk.bus == "scsi" and isinstance(addr, DriveAddress):
        props = {
            "driver": "scsi-cd" if disk.device == "cdrom" else "scsi-hd",
            "bus": f"scsi{addr.controller}.{addr.bus}",
        }
        if scsi_has_luns(d, addr.controller):
            props.update({"channel": addr.bus, "scsi-id": addr.target, "lun": addr.unit})
        else:  # an old parallel SCSI bus: one device per id
            props["scsi-id"] = addr.unit
        props["device_id"] = disk.serial if disk.serial is not None else f"drive-{disk.info.alias}"
        if disk.shareable:
            props["share-rw"] = True
    elif disk.bus == "fdc" and isinstance(addr, DriveAddress):
        props = {"driver": "floppy", "unit": addr.unit}
    elif disk.bus == "usb":
        props = {"driver": "usb-storage", **_usb_props(disk.info)}
    else:
        props = {"driver": disk.bus}
    if node is not None:
        props["drive"] = f"{node}-format"
    props["id"] = disk.info.alias
    if disk.bus == "usb":
        props["removable"] = disk.target_extra.get("removable") == "on"
    if id(disk.info) in boot:
        props["bootindex"] = boot[id(disk.info)]
    cache = _cache(disk)
    if cache is not None and disk.bus in ("virtio", "scsi", "ide", "sata"):
        props["write-cache"] = "on" if cache[2] else "off"
    if disk.serial is not None:
        props["serial"] = disk.serial
    error_policy = disk.driver.get("error_policy")
    if error_policy in ("stop", "report", "ignore", "enospace"):
        props["werror"] = error_policy
        props["rerror"] = disk.driver.get(
            "rerror_policy", error_policy if error_policy != "enospace" else "report"
        )
    return props


def _interfaces(d: DomainDef, a: list[str], net_fds: Mapping[str, int]) -> None:
    boot = _boot_indexes(d)
    for n, net in enumerate(d.devices.interfaces):
        hostnet = f"host{net.info.alias}"
        a += ["-netdev", _json(netdev_props(net, hostnet, n, net_fds))]
        a += ["-device", _json(nic_device_props(d, net, hostnet, boot))]


def nic_device_props(
    d: DomainDef, net: Interface, hostnet: str, boot: Mapping[int, int]
) -> dict[str, Any]:
    """The NIC's ``-device`` (or ``device_add``) properties, on netdev ``hostnet``."""
    props: dict[str, Any] = {"driver": _NIC_DRIVERS.get(net.model or "", net.model)}
    if net.mtu and net.model == "virtio":  # the guest learns the MTU from the device
        props["host_mtu"] = net.mtu
    props.update(netdev=hostnet, id=net.info.alias, mac=net.mac)
    if id(net.info) in boot:
        props["bootindex"] = boot[id(net.info)]
    return {**props, **_addr_props(d, net.info), **_rom_props(net.info)}


def _rom_props(info: DeviceInfo) -> dict[str, Any]:
    props: dict[str, Any] = {}
    if info.rom.get("bar") in ("on", "off"):
        props["rombar"] = 1 if info.rom["bar"] == "on" else 0
    if info.rom.get("file") is not None:
        props["romfile"] = info.rom["file"]
    return props


def netdev_props(
    net: Interface, hostnet: str, n: int, net_fds: Mapping[str, int]
) -> dict[str, Any]:
    if net.type == "user":
        return {"type": "user", "id": hostnet}
    fd = net_fds.get(net.info.alias or "")
    if fd is not None:
        return {"type": "tap", "fd": str(fd), "id": hostnet}
    # without a name from the caller: one from the MAC, which guests on a host do not share
    ifname = net.target_dev or f"vn{net.mac.replace(':', '')[6:]}{n}"
    return {"type": "tap", "ifname": ifname, "script": "no", "downscript": "no", "id": hostnet}


def _chardev(c: CharDevice, chr_id: str) -> str:
    opts = _chardev_backend(c, chr_id)
    if c.log.get("file"):
        opts += f",logfile={c.log['file']}"
        if c.log.get("append") in ("on", "off"):
            opts += f",logappend={c.log['append']}"
    return opts


def _chardev_backend(c: CharDevice, chr_id: str) -> str:
    src = c.source
    if src.type == "pty":
        return f"pty,id={chr_id}"
    if src.type == "unix":
        server = src.attrs.get("mode", "bind") == "bind"
        opts = f"socket,id={chr_id},path={src.attrs.get('path', '')}"
        return opts + (",server=on,wait=off" if server else "")
    if src.type == "file":
        append = f",append={src.attrs['append']}" if src.attrs.get("append") else ""
        return f"file,id={chr_id},path={src.attrs.get('path', '')}{append}"
    if src.type == "spicevmc":
        return f"spicevmc,id={chr_id},name=vdagent"
    if src.type == "tcp":
        server = src.attrs.get("mode") == "bind"
        host, port = src.attrs.get("host", ""), src.attrs.get("service", "")
        opts = f"socket,id={chr_id},host={host},port={port}"
        if c.protocol == "telnet":
            opts += ",telnet=on"
        return opts + (",server=on,wait=off" if server else "")
    return f"{src.type},id={chr_id}"


def _chardevs(d: DomainDef, a: list[str], channel_dir: str | None) -> None:
    devs = d.devices
    for s in devs.serials:
        chr_id = f"char{s.info.alias}"
        a += ["-chardev", _chardev(s, chr_id)]
        if s.target_type == "isa-serial":
            a += [
                "-device",
                _json(
                    {
                        "driver": "isa-serial",
                        "chardev": chr_id,
                        "id": s.info.alias,
                        "index": s.target_port or 0,
                    }
                ),
            ]
    for par in devs.other("parallel"):
        chr_id = f"char{par.info.alias}"
        source = par.element.find("source")
        attrs = {k: v for k, v in source.attrib.items()} if source is not None else {}
        par_chr = CharDevice("parallel", CharSource(par.element.get("type", "pty"), attrs))
        a += ["-chardev", _chardev(par_chr, chr_id)]
        a += ["-device", _json({"driver": "isa-parallel", "chardev": chr_id, "id": par.info.alias})]
    if channel_dir:
        fill_channel_paths(d, channel_dir)
    for ch in devs.channels:
        chr_id = f"char{ch.info.alias}"
        a += ["-chardev", _chardev(ch, chr_id)]
        addr = ch.info.address
        if ch.target_type == "virtio" and isinstance(addr, VirtioSerialAddress):
            props = {
                "driver": "virtserialport",
                "bus": f"virtio-serial{addr.controller}.{addr.bus}",
                "nr": addr.port,
                "chardev": chr_id,
                "id": ch.info.alias,
            }
            if ch.target_name:
                props["name"] = ch.target_name
            a += ["-device", _json(props)]
    for c in devs.consoles:
        if c.target_type != "virtio":
            continue  # a serial console is the serial device itself
        chr_id = f"char{c.info.alias}"
        a += ["-chardev", _chardev(c, chr_id)]
        a += ["-device", _json({"driver": "virtconsole", "chardev": chr_id, "id": c.info.alias})]


def _hubs(d: DomainDef, a: list[str]) -> None:
    for hub in d.devices.other("hub"):
        a += ["-device", _json({"driver": "usb-hub", "id": hub.info.alias, **_usb_props(hub.info)})]


def _filesystems(d: DomainDef, a: list[str]) -> None:
    """9p shares, and virtiofs ones whose virtiofsd the caller runs on ``fsN-fs.sock``."""
    for fs in d.devices.other("filesystem"):
        el, alias = fs.element, fs.info.alias
        driver, source, target = el.find("driver"), el.find("source"), el.find("target")
        path = source.get("dir", "") if source is not None else ""
        tag = target.get("dir", "") if target is not None else ""
        if driver is not None and driver.get("type") == "virtiofs":
            socket_path = (
                source.get("socket") if source is not None else None
            ) or f"{alias}-fs.sock"
            a += ["-chardev", f"socket,id=chr-vu-{alias},path={socket_path}"]
            props = {"driver": "vhost-user-fs-pci", "id": alias, "chardev": f"chr-vu-{alias}"}
            props["tag"] = tag
        else:
            model = el.get("accessmode", "passthrough")
            a += ["-fsdev", f"local,security_model={model},id=fsdev-{alias},path={path}"]
            props = {"driver": "virtio-9p-pci", "id": alias, "fsdev": f"fsdev-{alias}"}
            props["mount_tag"] = tag
        a += ["-device", _json({**props, **_addr_props(d, fs.info)})]


def _panics_and_vsock(d: DomainDef, a: list[str]) -> None:
    for panic in d.devices.other("panic"):
        if panic.element.get("model", "isa") == "isa":
            a += ["-device", _json({"driver": "pvpanic"})]
    for vsock in d.devices.other("vsock"):
        cid = vsock.element.find("cid")
        address = cid.get("address") if cid is not None else None
        props = {"driver": "vhost-vsock-pci", "id": vsock.info.alias}
        props["guest-cid"] = int(address) if address else 3  # auto: the caller should pick one
        a += ["-device", _json({**props, **_addr_props(d, vsock.info)})]


def _usb_props(info: DeviceInfo) -> dict[str, Any]:
    addr = info.address
    if isinstance(addr, UsbAddress):
        return {"bus": f"usb.{addr.bus}", "port": addr.port}
    return {}


_INPUT_DRIVERS = {
    ("tablet", "usb"): "usb-tablet",
    ("mouse", "usb"): "usb-mouse",
    ("keyboard", "usb"): "usb-kbd",
    ("tablet", "virtio"): "virtio-tablet-pci",
    ("mouse", "virtio"): "virtio-mouse-pci",
    ("keyboard", "virtio"): "virtio-keyboard-pci",
    ("passthrough", "virtio"): "virtio-input-host-pci",
}


def _inputs(d: DomainDef, a: list[str]) -> None:
    """USB and virtio input devices; PS/2 ones are the machine's own."""
    for inp in d.devices.inputs:
        props = input_device_props(d, inp)
        if props is not None:
            a += ["-device", _json(props)]


def input_device_props(d: DomainDef, inp: Input) -> dict[str, Any] | None:
    """A USB or virtio input's device; None for PS/2, which the machine has built in."""
    driver = _INPUT_DRIVERS.get((inp.type, inp.bus))
    if driver is None:
        return None
    props: dict[str, Any] = {"driver": driver, "id": inp.info.alias}
    if inp.type == "passthrough":
        props["evdev"] = inp.source.get("evdev", "")
    where = _usb_props(inp.info) if inp.bus == "usb" else _addr_props(d, inp.info)
    return {**props, **where}


def free_port(address: str = "127.0.0.1", first: int = 5900, last: int = 65535) -> int:
    """The first port from ``first`` nobody listens on at ``address``, as libvirtd picks them."""
    for port in range(first, last + 1):
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
            try:
                s.bind((address, port))
            except OSError:
                continue
            return port
    raise VirError(
        ErrorCode.INTERNAL_ERROR, "internal error: Unable to find an unused port", ErrorDomain.QEMU
    )


def _listen_address(attrs: dict[str, str], listens: list[dict[str, str]]) -> str:
    for ln in listens:
        if ln.get("address"):
            return ln["address"]
    return attrs.get("listen") or "127.0.0.1"


def _graphics(d: DomainDef, a: list[str], vnc_port: int | None, spice_port: int | None) -> None:
    audio = f"audio{d.devices.audios[0].id}" if d.devices.audios else None
    for g in d.devices.graphics:
        addr = _listen_address(g.attrs, g.listens)
        if g.type == "vnc" and g.listens and g.listens[0].get("type") == "none":
            a += ["-vnc", f"none,audiodev={audio}" if audio else "none"]
        elif g.type == "vnc":
            port = (
                vnc_port if g.attrs.get("autoport") == "yes" else int(g.attrs.get("port", "5900"))
            )
            host = f"[{addr}]" if ":" in addr else addr
            opts = f"{host}:{(port or 5900) - 5900}"
            if port is None:
                opts += ",to=100"
            websocket = g.attrs.get("websocket")
            if websocket == "-1":  # autoport: libvirtd picks one from 5700 as well
                websocket = str(free_port(addr, 5700))
            if websocket:
                opts += f",websocket={websocket}"
            if g.attrs.get("sharePolicy"):
                opts += f",share={g.attrs['sharePolicy']}"
            if g.attrs.get("passwd"):
                opts += ",password=on"  # the password itself is set over QMP
            if audio:
                opts += f",audiodev={audio}"
            a += ["-vnc", opts]
            if g.attrs.get("keymap"):
                a += ["-k", g.attrs["keymap"]]
        elif g.type == "spice":
            port = spice_port if g.attrs.get("autoport") == "yes" else g.attrs.get("port")
            if port is None and g.attrs.get("autoport") == "yes":
                port = free_port(addr)  # SPICE, unlike VNC, cannot search for one itself
            opts = [f"port={port or 0}"]
            if g.listens and g.listens[0].get("type") != "none":
                opts.append(f"addr={addr}")
            if not g.attrs.get("passwd"):
                opts.append("disable-ticketing=on")  # else the password comes over QMP
            for tag, cattrs in g.children:
                if tag == "image" and "compression" in cattrs:
                    opts.append(f"image-compression={cattrs['compression']}")
            opts.append("seamless-migration=on")
            a += ["-spice", ",".join(opts)]


def _videos(d: DomainDef, a: list[str]) -> None:
    for v in d.devices.videos:
        addr = _addr_props(d, v.info)
        heads = int(v.attrs.get("heads", "1"))
        if v.model == "qxl":
            props = {
                "driver": "qxl-vga" if v.primary else "qxl",
                "id": v.info.alias,
                "max_outputs": heads,
                "ram_size": int(v.attrs.get("ram", "65536")) * 1024,
                "vram_size": int(v.attrs.get("vram", "65536")) * 1024,
                "vram64_size_mb": int(v.attrs.get("vram64", "0")) // 1024,
                "vgamem_mb": int(v.attrs.get("vgamem", "16384")) // 1024,
            }
        elif v.model == "vga":
            props = {
                "driver": "VGA",
                "id": v.info.alias,
                "vgamem_mb": int(v.attrs.get("vram", "16384")) // 1024,
            }
        elif v.model == "cirrus":
            props = {"driver": "cirrus-vga", "id": v.info.alias}
        elif v.model == "virtio":
            driver = "virtio-vga" if v.primary else "virtio-gpu-pci"
            props = {"driver": driver, "id": v.info.alias, "max_outputs": heads}
        elif v.model == "bochs":
            props = {
                "driver": "bochs-display",
                "id": v.info.alias,
                "vgamem": int(v.attrs.get("vram", "16384")) * 1024,
            }
        else:
            continue
        a += ["-device", _json({**props, **addr})]


def _sounds(d: DomainDef, a: list[str]) -> None:
    audio = f"audio{d.devices.audios[0].id}" if d.devices.audios else None
    for s in d.devices.sounds:
        addr = _addr_props(d, s.info)
        if s.model in ("ich6", "ich9", "ich7"):
            driver = {"ich6": "intel-hda", "ich9": "ich9-intel-hda", "ich7": "intel-hda"}[s.model]
            a += ["-device", _json({"driver": driver, "id": s.info.alias, **addr})]
            for cad, codec in enumerate(s.codecs or ["duplex"]):
                props = {
                    "driver": f"hda-{codec}",
                    "id": f"{s.info.alias}-codec{cad}",
                    "bus": f"{s.info.alias}.0",
                    "cad": cad,
                }
                if audio:
                    props["audiodev"] = audio
                a += ["-device", _json(props)]
        elif s.model in ("ac97", "es1370"):
            props = {"driver": "AC97" if s.model == "ac97" else "ES1370", "id": s.info.alias}
            if audio:
                props["audiodev"] = audio
            a += ["-device", _json({**props, **addr})]


def _redirdevs(d: DomainDef, a: list[str]) -> None:
    for r in d.devices.redirdevs:
        chr_id = f"char{r.info.alias}"
        if r.source.type == "spicevmc":
            a += ["-chardev", f"spicevmc,id={chr_id},name=usbredir"]
        else:
            a += [
                "-chardev",
                _chardev(CharDevice("redirdev", r.source, protocol=r.protocol), chr_id),
            ]
        a += [
            "-device",
            _json(
                {"driver": "usb-redir", "chardev": chr_id, "id": r.info.alias, **_usb_props(r.info)}
            ),
        ]


def _watchdogs(d: DomainDef, a: list[str]) -> None:
    for w in d.devices.watchdogs:
        if w.model == "i6300esb":
            a += ["-device", _json(watchdog_device_props(d, w))]
        elif w.model == "ib700":
            a += ["-device", _json({"driver": "ib700", "id": w.info.alias})]
        if w.action:
            # libvirt itself dumps the guest, after QEMU pauses it
            action = {"shutdown": "poweroff", "dump": "pause"}.get(w.action, w.action)
            a += ["-watchdog-action", action]


def watchdog_device_props(d: DomainDef, w: Watchdog) -> dict[str, Any]:
    """The i6300esb's device, the one watchdog on PCI."""
    return {"driver": "i6300esb", "id": w.info.alias, **_addr_props(d, w.info)}


def _rngs(d: DomainDef, a: list[str]) -> None:
    for r in d.devices.rngs:
        obj = f"obj{r.info.alias}"
        if r.backend_model in ("random", "builtin"):
            a += ["-object", _json(rng_backend_props(r))]
        elif r.backend_chr is not None:
            chr_id = f"char{r.info.alias}"
            a += ["-chardev", _chardev(r.backend_chr, chr_id)]
            a += ["-object", _json({"qom-type": "rng-egd", "id": obj, "chardev": chr_id})]
        else:
            continue
        a += ["-device", _json(rng_device_props(d, r))]


def rng_backend_props(r: Rng) -> dict[str, Any]:
    """The ``-object`` (or ``object-add``) of a random or builtin RNG backend."""
    if r.backend_model == "builtin":
        return {"qom-type": "rng-builtin", "id": f"obj{r.info.alias}"}
    return {
        "qom-type": "rng-random",
        "id": f"obj{r.info.alias}",
        "filename": r.backend_path or "/dev/urandom",
    }


def rng_device_props(d: DomainDef, r: Rng) -> dict[str, Any]:
    props: dict[str, Any] = {
        "driver": "virtio-rng-pci", "rng": f"obj{r.info.alias}", "id": r.info.alias
    }
    if r.rate.get("bytes"):
        props["max-bytes"] = int(r.rate["bytes"])
        props["period"] = int(r.rate.get("period", "1000"))
    return {**props, **_addr_props(d, r.info)}
