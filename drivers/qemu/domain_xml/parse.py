"""Domain XML text -> DomainDef, as libvirt's parser reads it, before any defaults.

Unknown elements and attributes are skipped, as libvirt skips them. Values of
enumerations are checked here, with libvirt's messages; cross-field rules and
defaults are ``defaults.py``'s job.
"""

from __future__ import annotations

import copy
import re
import uuid as uuidlib

from lxml import etree

from protocol.errors import ErrorCode, ErrorDomain, VirError

from .errors import bad_attr, bad_value, internal, syntax_error, unsupported, xml_error
from .model import (
    KEPT_SECTIONS,
    OTHER_DEVICE_TAGS,
    Address,
    Audio,
    CharDevice,
    CharSource,
    Clock,
    Controller,
    Cpu,
    CpuFeature,
    DeviceInfo,
    Devices,
    Disk,
    DomainDef,
    DriveAddress,
    Feature,
    Graphics,
    Input,
    Interface,
    IsaAddress,
    Memballoon,
    NumaCell,
    Os,
    OtherDevice,
    PciAddress,
    Redirdev,
    Rng,
    Sound,
    Timer,
    UsbAddress,
    Video,
    VirtioSerialAddress,
    Watchdog,
)

DOMAIN_TYPES = frozenset(
    "none qemu kqemu kvm xen lxc uml openvz test vmware hyperv vbox phyp parallels "
    "bhyve vz armvirt hvf".split()
)
LIFECYCLE_ACTIONS = frozenset(
    "destroy restart rename-restart preserve coredump-destroy coredump-restart".split()
)
CLOCK_OFFSETS = frozenset("utc localtime variable timezone absolute".split())
CPU_MODES = frozenset("custom host-model host-passthrough maximum".split())
BOOT_DEVS = frozenset("fd cdrom hd network".split())
DISK_TYPES = frozenset("file block dir network volume nvme vhostuser".split())
DISK_DEVICES = frozenset("disk cdrom floppy lun".split())
DISK_BUSES = frozenset("ide fdc scsi virtio xen usb uml sata sd".split())
CONTROLLER_TYPES = frozenset("ide fdc scsi sata virtio-serial ccid usb pci xenbus isa nvme".split())
NET_TYPES = frozenset(
    "user ethernet vhostuser server client mcast network bridge internal direct hostdev udp "
    "vdpa null vds".split()
)
CHR_TYPES = frozenset(
    "null vc pty dev file pipe stdio udp tcp unix spicevmc spiceport nmdm qemu-vdagent dbus".split()
)
CONTROLLER_MODELS = {
    "usb": frozenset(
        "piix3-uhci piix4-uhci ehci ich9-ehci1 ich9-uhci1 ich9-uhci2 ich9-uhci3 vt82c686b-uhci "
        "pci-ohci nec-xhci qusb1 qusb2 qemu-xhci none".split()
    ),
    "scsi": frozenset(
        "auto buslogic lsilogic lsisas1068 vmpvscsi ibmvscsi virtio-scsi lsisas1078 "
        "virtio-transitional virtio-non-transitional ncr53c90 am53c974 dc390".split()
    ),
    "pci": frozenset(
        "pci-root pcie-root pci-bridge dmi-to-pci-bridge pcie-root-port "
        "pcie-switch-upstream-port pcie-switch-downstream-port pci-expander-bus "
        "pcie-expander-bus pcie-to-pci-bridge".split()
    ),
}
INPUT_TYPES = frozenset("mouse tablet keyboard passthrough evdev".split())
INPUT_BUSES = frozenset("ps2 usb xen parallels virtio none".split())
GRAPHICS_TYPES = frozenset("sdl vnc rdp desktop spice egl-headless dbus".split())
VIDEO_MODELS = frozenset(
    "vga cirrus vmvga xen vbox qxl parallels virtio gop none bochs ramfb".split()
)
SOUND_MODELS = frozenset("sb16 es1370 pcspk ac97 ich6 ich9 usb ich7".split())
WATCHDOG_MODELS = frozenset("i6300esb ib700 diag288".split())
WATCHDOG_ACTIONS = frozenset("reset shutdown poweroff pause dump none inject-nmi".split())
MEMBALLOON_MODELS = frozenset("virtio xen none virtio-transitional virtio-non-transitional".split())

_UNITS = {
    "b": 1,
    "byte": 1,
    "bytes": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
    "p": 1024**5,
    "pib": 1024**5,
    "pb": 1000**5,
    "e": 1024**6,
    "eib": 1024**6,
    "eb": 1000**6,
}
GENERATED_CHANNEL_DIR = "/channel/target/domain-"  # the daemons' own channel socket dirs
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
_NIC_MODEL_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_MAC_RE = re.compile(r"^[0-9a-fA-F]{1,2}(:[0-9a-fA-F]{1,2}){5}$")
_HEX = frozenset("0123456789abcdefABCDEF")


def parse_document(xml: str) -> etree._Element:
    """The root element, or libvirt's XML_DETAIL error naming line and context."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    try:
        root = etree.fromstring(xml.encode(), parser)
    except etree.XMLSyntaxError as e:
        raise syntax_error(xml, e, "domain_definition", ErrorDomain.DOMAIN) from None
    if root.tag != "domain":
        raise xml_error(f"expecting root element of 'domain', not '{root.tag}'", ErrorDomain.XML)
    _drop_comments(root)
    return root


def _drop_comments(root: etree._Element) -> None:
    """Comments mean nothing to libvirt, except inside <metadata>, which it keeps as written."""
    for comment in list(root.iter(etree.Comment)):
        if any(a.tag == "metadata" and a.getparent() is root for a in comment.iterancestors()):
            continue
        parent, tail = comment.getparent(), comment.tail or ""
        previous = comment.getprevious()
        if previous is not None:
            previous.tail = (previous.tail or "") + tail
        else:
            parent.text = (parent.text or "") + tail
        parent.remove(comment)


def _text(el: etree._Element | None) -> str | None:
    if el is None:
        return None
    return el.text or ""


def _enum(
    el: etree._Element, attr: str, allowed: frozenset[str], tag: str | None = None
) -> str | None:
    value = el.get(attr)
    if value is not None and value not in allowed:
        raise bad_attr(tag or el.tag, attr, value)
    return value


def _int(value: str | None, xpath: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value, 0) if value.lower().startswith("0x") else int(value)
    except ValueError:
        raise bad_value(xpath, value) from None


def scale_kib(value: str, unit: str | None, xpath: str) -> int:
    """A size with libvirt's unit suffixes, in KiB rounded up (default unit KiB)."""
    try:
        number = int(value.strip())
        if number < 0:
            raise ValueError
    except ValueError:
        raise bad_value(xpath, value) from None
    scale = _UNITS.get((unit or "KiB").lower())
    if scale is None:
        raise VirError(ErrorCode.INVALID_ARG, f"invalid argument: unknown suffix '{unit}'")
    return -(-number * scale // 1024)


def normalise_uuid(text: str) -> str:
    """libvirt's reading of a UUID: 32 hex digits, dashes allowed between pairs."""
    digits = text.strip().replace("-", "")
    if len(digits) != 32 or not set(digits) <= _HEX:
        raise internal("malformed uuid element")
    d = digits.lower()
    return f"{d[:8]}-{d[8:12]}-{d[12:16]}-{d[16:20]}-{d[20:]}"


def parse_mac(text: str) -> str:
    if not _MAC_RE.match(text):
        raise xml_error(f"unable to parse mac address '{text}'")
    return ":".join(f"{int(p, 16):02x}" for p in text.split(":"))


def parse_domain(root: etree._Element) -> DomainDef:
    dtype = root.get("type")
    if dtype is None:
        raise internal("missing domain type attribute")
    if dtype not in DOMAIN_TYPES:
        raise unsupported(f"invalid domain type {dtype}")
    name = _text(root.find("name"))
    if not name:
        raise VirError(ErrorCode.NO_NAME, "missing name information", ErrorDomain.DOMAIN)
    if "/" in name:
        raise xml_error(f"name {name} cannot contain '/'")
    uuid_el = root.find("uuid")
    uuid = normalise_uuid(uuid_el.text or "") if uuid_el is not None else ""
    genid_el = root.find("genid")

    memory, current = _parse_memory(root)
    d = DomainDef(
        type=dtype,
        name=name,
        uuid=uuid,
        memory=memory,
        current_memory=current,
        vcpus=0,
        os=_parse_os(root),
        devices=Devices(),
        genid=_genid(genid_el),
        title=_text(root.find("title")),
        description=_text(root.find("description")),
    )
    metadata = root.find("metadata")
    if metadata is not None:
        d.metadata = [child for child in metadata if isinstance(child.tag, str)]
    max_mem = root.find("maxMemory")
    if max_mem is not None:
        d.max_memory = scale_kib(max_mem.text or "", max_mem.get("unit"), "./maxMemory[1]")
        d.max_memory_slots = _int(max_mem.get("slots"), "./maxMemory[1]/@slots")
    _parse_vcpu(root, d)
    iothreads = root.find("iothreads")
    if iothreads is not None:
        d.iothreads = _int(iothreads.text, "./iothreads[1]")
    features = root.find("features")
    if features is not None:
        for f in features:
            if isinstance(f.tag, str):
                children = [(c.tag, dict(c.attrib)) for c in f if isinstance(c.tag, str)]
                d.features[f.tag] = Feature(dict(f.attrib), children)
    cpu = root.find("cpu")
    if cpu is not None:
        d.cpu = _parse_cpu(cpu)
    clock = root.find("clock")
    if clock is not None:
        d.clock = _parse_clock(clock)
    for action in ("on_poweroff", "on_reboot", "on_crash"):
        value = _text(root.find(action))
        if value is not None:
            if value not in LIFECYCLE_ACTIONS:
                raise unsupported(f"unknown {action} action: {value}")
            setattr(d, action, value)
    pm = root.find("pm")
    if pm is not None:
        for child in pm:
            if child.tag in ("suspend-to-mem", "suspend-to-disk") and child.get("enabled"):
                d.pm[child.tag] = child.get("enabled")
    commandline = root.find(f"{{{QEMU_NS}}}commandline")
    if commandline is not None:
        for el in commandline:
            if el.tag == f"{{{QEMU_NS}}}arg" and el.get("value") is not None:
                d.qemu_args.append(el.get("value"))
            elif el.tag == f"{{{QEMU_NS}}}env" and el.get("name"):
                d.qemu_env.append((el.get("name"), el.get("value", "")))
    for tag in KEPT_SECTIONS:
        el = root.find(tag)
        if el is not None:
            d.kept[tag] = el
    devices = root.find("devices")
    if devices is not None:
        _parse_devices(devices, d.devices)
    return d


def _genid(el: etree._Element | None) -> str | None:
    """<genid/> asks for a fresh generation id; one with text keeps it."""
    if el is None:
        return None
    return normalise_uuid(el.text) if el.text and el.text.strip() else str(uuidlib.uuid4())


def _parse_memory(root: etree._Element) -> tuple[int, int]:
    mem = root.find("memory")
    memory = 0
    if mem is not None:
        memory = scale_kib(mem.text or "", mem.get("unit"), "./memory[1]")
    if memory == 0:
        raise xml_error("Memory size must be specified via <memory> or in the <numa> configuration")
    cur = root.find("currentMemory")
    current = memory
    if cur is not None:
        current = scale_kib(cur.text or "", cur.get("unit"), "./currentMemory[1]")
    return memory, current


def _parse_vcpu(root: etree._Element, d: DomainDef) -> None:
    vcpu = root.find("vcpu")
    if vcpu is None:
        d.vcpus = 1
        return
    try:
        d.vcpus = int((vcpu.text or "").strip())
    except ValueError:
        raise xml_error("maximum vcpus count must be an integer") from None
    if d.vcpus <= 0:
        raise internal("CPU IDs in <numa> exceed the <vcpu> count")
    current = vcpu.get("current")
    if current is not None:
        try:
            d.vcpu_current = int(current)
        except ValueError:
            raise xml_error("current vcpus count must be an integer") from None
    placement = vcpu.get("placement")
    if placement is not None:
        if placement not in ("static", "auto"):
            raise xml_error(f"Unsupported CPU placement mode '{placement}'")
        d.vcpu_placement = placement
    d.vcpu_cpuset = vcpu.get("cpuset")


def _parse_os(root: etree._Element) -> Os:
    el = root.find("os")
    type_el = el.find("type") if el is not None else None
    if type_el is None or not type_el.text:
        raise xml_error("an os <type> must be specified")
    os = Os(type=type_el.text.strip(), arch=type_el.get("arch"), machine=type_el.get("machine"))
    for boot in el.findall("boot"):
        os.boot_devs.append(_enum(boot, "dev", BOOT_DEVS) or "hd")
    os.kernel = _text(el.find("kernel"))
    os.initrd = _text(el.find("initrd"))
    os.cmdline = _text(el.find("cmdline"))
    os.dtb = _text(el.find("dtb"))
    os.firmware = el.get("firmware")
    fw = el.find("firmware")
    if fw is not None:
        os.firmware_features = [
            (f.get("enabled", "yes"), f.get("name", "")) for f in fw.findall("feature")
        ]
    loader = el.find("loader")
    if loader is not None:
        os.loader = loader.text
        os.loader_attrs = dict(loader.attrib)
    nvram = el.find("nvram")
    if nvram is not None:
        os.nvram = nvram.text
        os.nvram_attrs = dict(nvram.attrib)
    bootmenu = el.find("bootmenu")
    if bootmenu is not None:
        os.bootmenu = dict(bootmenu.attrib)
        if os.bootmenu.get("enable") == "no":
            os.bootmenu.pop("timeout", None)  # no menu, nothing to wait for
    smbios = el.find("smbios")
    if smbios is not None:
        os.smbios_mode = smbios.get("mode")
    return os


def _parse_cpu(el: etree._Element) -> Cpu:
    mode = el.get("mode", "custom")
    if mode not in CPU_MODES:
        raise unsupported(f"Invalid mode attribute '{mode}'", ErrorDomain.CPU)
    cpu = Cpu(mode=mode, match=el.get("match"), check=el.get("check"))
    cpu.migratable = el.get("migratable")
    model = el.find("model")
    if model is not None and model.text:
        cpu.model = model.text.strip()
        cpu.model_fallback = model.get("fallback")
    vendor = el.find("vendor")
    if vendor is not None:
        cpu.vendor = vendor.text
    topo = el.find("topology")
    if topo is not None:
        cpu.topology = {
            k: _int(topo.get(k), f"./cpu/topology/@{k}") or 0
            for k in ("sockets", "dies", "cores", "threads")
            if topo.get(k) is not None
        }
    cache = el.find("cache")
    if cache is not None:
        cpu.cache = dict(cache.attrib)
    for feat in el.findall("feature"):
        cpu.features.append(CpuFeature(feat.get("policy", "require"), feat.get("name", "")))
    numa = el.find("numa")
    if numa is not None:
        cpu.numa = [NumaCell(dict(c.attrib)) for c in numa.findall("cell")]
    return cpu


def _parse_clock(el: etree._Element) -> Clock:
    offset = el.get("offset", "utc")
    if offset not in CLOCK_OFFSETS:
        raise unsupported(f"unknown clock offset '{offset}'")
    attrs = {k: v for k, v in el.attrib.items() if k != "offset"}
    if offset == "variable":
        attrs = {"adjustment": attrs.get("adjustment", "0"), "basis": attrs.get("basis", "utc")}
    timers = [Timer(dict(t.attrib)) for t in el.findall("timer")]
    return Clock(offset=offset, attrs=attrs, timers=timers)


def _parse_info(el: etree._Element) -> DeviceInfo:
    info = DeviceInfo()
    boot = el.find("boot")
    if boot is not None:
        info.boot_order = _int(boot.get("order"), "./boot/@order")
    alias = el.find("alias")
    if alias is not None and (alias.get("name") or "").startswith("ua-"):
        info.alias = alias.get("name")
    rom = el.find("rom")
    if rom is not None:
        info.rom = dict(rom.attrib)
    addr = el.find("address")
    if addr is not None:
        info.address = _parse_address(addr)
    return info


def _parse_address(el: etree._Element) -> Address | None:
    kind = el.get("type")

    def num(attr: str, default: int = 0) -> int:
        value = el.get(attr)
        return default if value is None else (_int(value, f"./address/@{attr}") or 0)

    if kind == "pci":
        return PciAddress(
            domain=num("domain"),
            bus=num("bus"),
            slot=num("slot"),
            function=num("function"),
            multifunction=el.get("multifunction"),
        )
    if kind == "drive":
        return DriveAddress(num("controller"), num("bus"), num("target"), num("unit"))
    if kind == "usb":
        return UsbAddress(num("bus"), el.get("port", ""))
    if kind == "virtio-serial":
        return VirtioSerialAddress(num("controller"), num("bus"), num("port"))
    if kind == "isa":
        return IsaAddress(
            _int(el.get("iobase"), "./address/@iobase"), _int(el.get("irq"), "./address/@irq")
        )
    return None


def _parse_devices(el: etree._Element, devs: Devices) -> None:
    for child in el:
        tag = child.tag
        if not isinstance(tag, str):
            continue
        handler = _DEVICE_PARSERS.get(tag)
        if handler is not None:
            handler(child, devs)
        elif tag in OTHER_DEVICE_TAGS:
            devs.others.setdefault(tag, []).append(OtherDevice(child, _parse_info(child)))


def parse_device(el: etree._Element) -> Devices:
    """One device element alone, as attach, detach and update give it: Devices holding it."""
    wrapper = etree.Element("devices")
    wrapper.append(copy.deepcopy(el))
    devs = Devices()
    _parse_devices(wrapper, devs)
    return devs


def _emulator(el: etree._Element, devs: Devices) -> None:
    devs.emulator = (el.text or "").strip() or None


def _disk(el: etree._Element, devs: Devices) -> None:
    dtype = _enum(el, "type", DISK_TYPES) or "file"
    device = _enum(el, "device", DISK_DEVICES) or "disk"
    source_el = el.find("source")
    source = None
    net_source: dict[str, str] = {}
    hosts: list[dict[str, str]] = []
    volume: dict[str, str] = {}
    if source_el is not None and dtype == "network":
        net_source = {
            k: v for k, v in source_el.attrib.items() if k in ("protocol", "name", "query", "tls")
        }
        hosts = [dict(h.attrib) for h in source_el.findall("host")]
    elif source_el is not None and dtype == "volume":
        volume = {k: v for k, v in source_el.attrib.items() if k in ("pool", "volume", "mode")}
    elif source_el is not None:
        source = source_el.get("dev") if dtype == "block" else source_el.get("file")
    target = el.find("target")
    if target is None or not target.get("dev"):
        raise VirError(
            ErrorCode.NO_TARGET,
            f"missing target information for device {source or ''}".rstrip(),
            ErrorDomain.DOMAIN,
        )
    bus = _enum(target, "bus", DISK_BUSES) or ""
    driver = el.find("driver")
    serial = el.find("serial")
    disk = Disk(
        type=dtype,
        device=device,
        target=target.get("dev", ""),
        bus=bus,
        source=source,
        no_backing=el.find("backingStore") is not None and len(el.find("backingStore")) == 0,
        net_source=net_source,
        hosts=hosts,
        volume=volume,
        driver=dict(driver.attrib) if driver is not None else {},
        readonly=el.find("readonly") is not None,
        shareable=el.find("shareable") is not None,
        serial=serial.text if serial is not None else None,
        iotune=el.find("iotune"),
        target_extra={
            k: v for k, v in target.attrib.items() if k in ("removable", "rotation_rate")
        },
        info=_parse_info(el),
    )
    insert_disk(devs.disks, disk)


def disk_index(name: str) -> int:
    """libvirt's number for a disk name: 'vda' -> 0, 'sdb' -> 1, 'hdaa' -> 26."""
    for prefix in ("fd", "hd", "vd", "sd", "xvd", "ubd"):
        if name.startswith(prefix):
            letters = name[len(prefix) :]
            break
    else:
        return -1
    if not letters:
        return -1
    index = -1
    for ch in letters:
        if not "a" <= ch <= "z":
            return -1
        index = (index + 1) * 26 + (ord(ch) - ord("a"))
    return index


def insert_disk(disks: list[Disk], disk: Disk) -> None:
    """Keep disks grouped by bus and ordered by name within it, as libvirt does."""
    at = -1
    new_index = disk_index(disk.target)
    for i in range(len(disks) - 1, -1, -1):
        if disks[i].bus != disk.bus:
            continue
        if disk_index(disks[i].target) > new_index:
            at = i
        elif at == -1:
            at = i + 1
    disks.insert(len(disks) if at == -1 else at, disk)


def insert_controller(controllers: list[Controller], cont: Controller) -> None:
    """Keep controllers of one type ordered by index, as libvirt's parser does."""
    at = -1
    for i in range(len(controllers) - 1, -1, -1):
        cur = controllers[i]
        if cur.type != cont.type:
            continue
        if cont.index == -1:
            at = i + 1
            break
        if cur.index > cont.index:
            at = i
        elif at == -1:
            at = i + 1
    controllers.insert(len(controllers) if at == -1 else at, cont)


def _controller(el: etree._Element, devs: Devices) -> None:
    ctype = el.get("type")
    if ctype is None:
        ctype = "ide"
    elif ctype not in CONTROLLER_TYPES:
        raise bad_attr("controller", "type", ctype)
    index = _int(el.get("index"), "./controller/@index")
    model_el = el.find("model")
    target = el.find("target")
    driver = el.find("driver")
    master = el.find("master")
    model = el.get("model")
    if model is not None and model not in CONTROLLER_MODELS.get(ctype, (model,)):
        raise unsupported(f"Unknown model type '{model}'")
    cont = Controller(
        type=ctype,
        index=-1 if index is None else index,
        model=el.get("model"),
        attrs={k: el.get(k) for k in ("ports", "vectors", "maxGrantFrames") if el.get(k)},
        model_name=model_el.get("name") if model_el is not None else None,
        target=dict(target.attrib) if target is not None else {},
        driver=dict(driver.attrib) if driver is not None else {},
        master_startport=_int(master.get("startport"), "./master/@startport")
        if master is not None
        else None,
        info=_parse_info(el),
    )
    insert_controller(devs.controllers, cont)


def _interface(el: etree._Element, devs: Devices) -> None:
    ntype = _enum(el, "type", NET_TYPES, "interface") or "user"
    mac_el = el.find("mac")
    mac = parse_mac(mac_el.get("address", "")) if mac_el is not None else ""
    source = el.find("source")
    target = el.find("target")
    model = el.find("model")
    if model is not None and not _NIC_MODEL_RE.match(model.get("type", "")):
        raise VirError(
            ErrorCode.INVALID_ARG,
            "invalid argument: Model name contains invalid characters",
            ErrorDomain.DOMAIN,
        )
    driver = el.find("driver")
    link = el.find("link")
    mtu = el.find("mtu")
    target_dev = target.get("dev") if target is not None else None
    target_managed = target.get("managed") if target is not None else None
    if target_dev and ntype != "ethernet" and target_dev.startswith(("vnet", "macvtap", "macvlan")):
        target_dev = None  # libvirt's own generated names are not part of the definition
    attrs = dict(source.attrib) if source is not None else {}
    if ntype == "network":  # a live XML's portid and bridge are the run's, not the definition's
        attrs = {k: v for k, v in attrs.items() if k in ("network", "portgroup")}
    devs.interfaces.append(
        Interface(
            type=ntype,
            mac=mac,
            source=attrs,
            target_dev=target_dev,
            target_managed=target_managed,
            model=model.get("type") if model is not None else None,
            driver=dict(driver.attrib) if driver is not None else {},
            link_state=link.get("state") if link is not None else None,
            mtu=_int(mtu.get("size"), "./mtu/@size") if mtu is not None else None,
            info=_parse_info(el),
        )
    )


def _chr(el: etree._Element, kind: str) -> CharDevice:
    stype = el.get("type", "pty")
    if stype not in CHR_TYPES:
        raise unsupported(f"unknown type presented to host for character device: {stype}")
    source = el.find("source")
    attrs = {}
    if source is not None and stype != "pty":
        attrs = {
            k: v
            for k, v in source.attrib.items()
            if k in ("mode", "path", "host", "service", "append")
        }
        if kind == "channel" and stype == "unix" and GENERATED_CHANNEL_DIR in attrs.get("path", ""):
            attrs = {}  # a socket path the daemon made up at start is not part of the definition
    target = el.find("target")
    dev = CharDevice(kind=kind, source=CharSource(stype, attrs), info=_parse_info(el))
    protocol = el.find("protocol")
    if stype == "tcp":
        dev.protocol = protocol.get("type", "raw") if protocol is not None else "raw"
    log = el.find("log")
    if log is not None and log.get("file"):
        dev.log = {k: v for k, v in log.attrib.items() if k in ("file", "append")}
    if target is not None:
        dev.target_type = target.get("type")
        dev.target_port = _int(target.get("port"), "./target/@port")
        dev.target_name = target.get("name")
        model = target.find("model")
        if model is not None:
            dev.target_model = model.get("name")
    return dev


def _serial(el: etree._Element, devs: Devices) -> None:
    devs.serials.append(_chr(el, "serial"))


def _console(el: etree._Element, devs: Devices) -> None:
    devs.consoles.append(_chr(el, "console"))


def _channel(el: etree._Element, devs: Devices) -> None:
    devs.channels.append(_chr(el, "channel"))


def _input(el: etree._Element, devs: Devices) -> None:
    itype = _enum(el, "type", INPUT_TYPES, "input") or "mouse"
    bus = _enum(el, "bus", INPUT_BUSES, "input") or ("usb" if itype == "tablet" else "ps2")
    source = el.find("source")
    devs.inputs.append(
        Input(itype, bus, _parse_info(el), dict(source.attrib) if source is not None else {})
    )


def _graphics(el: etree._Element, devs: Devices) -> None:
    gtype = _enum(el, "type", GRAPHICS_TYPES) or "vnc"
    g = Graphics(type=gtype, attrs={k: v for k, v in el.attrib.items() if k != "type"})
    for child in el:
        if not isinstance(child.tag, str):
            continue
        if child.tag == "listen":
            g.listens.append(dict(child.attrib))
        elif gtype == "spice" and child.tag in _SPICE_CHILDREN:
            g.children.append((child.tag, dict(child.attrib)))
    devs.graphics.append(g)


_SPICE_CHILDREN = (
    "channel image jpeg zlib playback streaming mouse clipboard filetransfer gl".split()
)


def _video(el: etree._Element, devs: Devices) -> None:
    model_el = el.find("model")
    model = "default"
    attrs: dict[str, str] = {}
    primary = False
    if model_el is not None:
        model = model_el.get("type") or "default"
        if model not in VIDEO_MODELS and model != "default":
            raise unsupported(f"unknown video model '{model}'")
        attrs = {
            k: v
            for k, v in model_el.attrib.items()
            if k in ("ram", "vram", "vram64", "vgamem", "heads")
        }
        primary = model_el.get("primary") == "yes"
    accel = model_el.find("acceleration") if model_el is not None else None
    video = Video(model, attrs, primary, dict(accel.attrib) if accel is not None else {})
    video.info = _parse_info(el)
    devs.videos.append(video)


def _sound(el: etree._Element, devs: Devices) -> None:
    model = _enum(el, "model", SOUND_MODELS, "sound") or ""
    codecs = [c.get("type", "duplex") for c in el.findall("codec")]
    devs.sounds.append(Sound(model, codecs, _parse_info(el)))


def _audio(el: etree._Element, devs: Devices) -> None:
    devs.audios.append(Audio(_int(el.get("id"), "./audio/@id") or 0, el.get("type", "none")))


def _memballoon(el: etree._Element, devs: Devices) -> None:
    if devs.memballoon is not None:
        raise internal("only a single memory balloon device is supported")
    model = _enum(el, "model", MEMBALLOON_MODELS) or "virtio"
    stats = el.find("stats")
    devs.memballoon = Memballoon(
        model=model,
        attrs={k: el.get(k) for k in ("autodeflate", "freePageReporting") if el.get(k)},
        stats_period=_int(stats.get("period"), "./stats/@period") if stats is not None else None,
        info=_parse_info(el),
    )


def _rng(el: etree._Element, devs: Devices) -> None:
    backend = el.find("backend")
    rate = el.find("rate")
    model = backend.get("model", "random") if backend is not None else "random"
    rng = Rng(
        model=el.get("model", "virtio"),
        backend_model=model,
        rate=dict(rate.attrib) if rate is not None else {},
        info=_parse_info(el),
    )
    if model == "egd" and backend is not None:
        rng.backend_chr = _chr(backend, "backend")
    elif backend is not None:
        rng.backend_path = (backend.text or "").strip() or None
    devs.rngs.append(rng)


def _watchdog(el: etree._Element, devs: Devices) -> None:
    if devs.watchdogs:
        raise internal("only a single watchdog device is supported")
    model = el.get("model", "i6300esb")  # checked once the definition is read
    action = _enum(el, "action", WATCHDOG_ACTIONS)
    devs.watchdogs.append(Watchdog(model, action, _parse_info(el)))


def _redirdev(el: etree._Element, devs: Devices) -> None:
    chr = _chr(el, "redirdev")
    devs.redirdevs.append(Redirdev(el.get("bus", "usb"), chr.source, chr.protocol, chr.info))


_DEVICE_PARSERS = {
    "emulator": _emulator,
    "disk": _disk,
    "controller": _controller,
    "interface": _interface,
    "serial": _serial,
    "console": _console,
    "channel": _channel,
    "input": _input,
    "graphics": _graphics,
    "video": _video,
    "sound": _sound,
    "audio": _audio,
    "memballoon": _memballoon,
    "rng": _rng,
    "watchdog": _watchdog,
    "redirdev": _redirdev,
}
