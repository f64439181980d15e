"""DomainDef -> the XML text libvirtd prints for it, byte for byte.

Built by appending strings to a list, as XMLDesc is on the hot path: about 80,000
formats a second for a minimal guest, 10,000 for a q35 guest with thirty devices.
"""

from __future__ import annotations

from dataclasses import replace

from lxml import etree

from .addresses import is_i440fx
from .model import (
    Address,
    CharDevice,
    Controller,
    DeviceInfo,
    Disk,
    DomainDef,
    DriveAddress,
    Interface,
    IsaAddress,
    LiveState,
    PciAddress,
    UsbAddress,
    VirtioSerialAddress,
)
from .parse import QEMU_NS, insert_controller

_ESCAPES = str.maketrans({"<": "&lt;", ">": "&gt;", "&": "&amp;", "'": "&apos;", '"': "&quot;"})
# Attribute order where libvirt's differs from how a user may have written them.
ORDER: dict[str, tuple[str, ...]] = {
    "disk/driver": (
        "name", "type", "cache", "error_policy", "rerror_policy", "io", "ioeventfd", "event_idx",
        "copy_on_read", "discard", "iothread", "detect_zeroes", "queues", "queue_size",
    ),
    "graphics/vnc": (
        "port", "autoport", "websocket", "listen", "keymap", "sharePolicy", "passwd",
        "passwdValidTo", "connected",
    ),
    "graphics/spice": (
        "port", "tlsPort", "autoport", "listen", "keymap", "defaultMode", "passwd",
        "passwdValidTo", "connected",
    ),
    "nvram": ("template", "format"),
    "chr/source": ("mode", "host", "service", "path", "append"),
    "timer": ("name", "track", "tickpolicy", "frequency", "mode", "present"),
    "controller/driver": ("queues", "cmd_per_lun", "max_sectors", "ioeventfd", "iothread"),
    "controller/target": ("chassisNr", "chassis", "port", "busNr", "index"),
    "interface/source": ("network", "portgroup", "portid", "bridge", "dev", "mode"),
    "interface/driver": (
        "name", "txmode", "ioeventfd", "event_idx", "queues", "rx_queue_size", "tx_queue_size",
    ),
    "video/model": ("ram", "vram", "vram64", "vgamem", "heads"),
}  # fmt: skip
_SPICE_CHILD_ORDER = (
    "channel image jpeg zlib playback streaming mouse clipboard filetransfer gl".split()
)


def esc(value: object) -> str:
    return str(value).translate(_ESCAPES)


def _attrs(pairs: dict[str, str], order: list[str] | tuple[str, ...] | None = None) -> str:
    """Attributes in libvirt's order: ``order`` first, the rest as given."""
    if order is None:
        return "".join(f" {k}='{esc(v)}'" for k, v in pairs.items())
    known = [k for k in order if k in pairs]
    rest = [k for k in pairs if k not in order]
    return "".join(f" {k}='{esc(pairs[k])}'" for k in known + rest)


def format_domain(
    d: DomainDef,
    *,
    inactive: bool = True,
    secure: bool = False,
    live: LiveState | None = None,
    migratable: bool = False,
) -> str:
    """The XML of ``d``: inactive, live (with ``live``'s facts), or migratable (implies
    inactive: what an older libvirtd on the other host would add itself is left out)."""
    if migratable:
        d, inactive = _migratable(d), True
    out: list[str] = []
    w = out.append
    domain_id = f" id='{live.id}'" if live is not None and not inactive else ""
    ns = f" xmlns:qemu='{QEMU_NS}'" if d.qemu_args or d.qemu_env else ""
    w(f"<domain type='{d.type}'{domain_id}{ns}>\n")
    w(f"  <name>{esc(d.name)}</name>\n")
    w(f"  <uuid>{d.uuid}</uuid>\n")
    if d.genid:
        w(f"  <genid>{d.genid}</genid>\n")
    if d.title is not None:
        w(f"  <title>{esc(d.title)}</title>\n")
    if d.description is not None:
        w(f"  <description>{esc(d.description)}</description>\n")
    if d.metadata:
        w("  <metadata>\n")
        for el in d.metadata:
            w(_format_foreign(el, "    "))
        w("  </metadata>\n")
    if d.max_memory is not None:
        slots = f" slots='{d.max_memory_slots}'" if d.max_memory_slots is not None else ""
        w(f"  <maxMemory{slots} unit='KiB'>{d.max_memory}</maxMemory>\n")
    w(f"  <memory unit='KiB'>{d.memory}</memory>\n")
    w(f"  <currentMemory unit='KiB'>{d.current_memory}</currentMemory>\n")
    if d.kept:
        w(_kept(d, "blkiotune") + _kept(d, "memtune") + _kept(d, "memoryBacking"))
    cpuset = f" cpuset='{esc(d.vcpu_cpuset)}'" if d.vcpu_cpuset else ""
    current = f" current='{d.vcpu_current}'" if d.vcpu_current is not None else ""
    w(f"  <vcpu placement='{d.vcpu_placement}'{cpuset}{current}>{d.vcpus}</vcpu>\n")
    if d.kept:
        w(_kept(d, "vcpus"))
    if d.iothreads:
        w(f"  <iothreads>{d.iothreads}</iothreads>\n")
    if d.kept:
        w(
            _kept(d, "iothreadids")
            + _kept(d, "cputune")
            + _kept(d, "numatune")
            + _kept(d, "resource")
        )
    if live is not None and not inactive and live.partition and "resource" not in d.kept:
        w(f"  <resource>\n    <partition>{esc(live.partition)}</partition>\n  </resource>\n")
    if d.kept:
        w(_kept(d, "sysinfo"))
    _format_os(d, w)
    if d.kept:
        w(_kept(d, "idmap"))
    if d.features:
        w("  <features>\n")
        for name, feature in d.features.items():
            if feature.children:
                w(f"    <{name}{_attrs(feature.attrs)}>\n")
                for child, attrs in feature.children:
                    w(f"      <{child}{_attrs(attrs, ('state',))}/>\n")
                w(f"    </{name}>\n")
            else:
                w(f"    <{name}{_attrs(feature.attrs)}/>\n")
        w("  </features>\n")
    _format_cpu(d, w)
    _format_clock(d, w)
    w(f"  <on_poweroff>{d.on_poweroff}</on_poweroff>\n")
    w(f"  <on_reboot>{d.on_reboot}</on_reboot>\n")
    w(f"  <on_crash>{d.on_crash}</on_crash>\n")
    if d.pm:
        w("  <pm>\n")
        for key in ("suspend-to-mem", "suspend-to-disk"):
            if key in d.pm:
                w(f"    <{key} enabled='{d.pm[key]}'/>\n")
        w("  </pm>\n")
    if d.kept:
        w(_kept(d, "perf"))
    _format_devices(d, w, inactive, secure, live)
    if d.kept:
        w(_kept(d, "seclabel") + _kept(d, "keywrap") + _kept(d, "launchSecurity"))
    if ns:
        w("  <qemu:commandline>\n")
        w("".join(f"    <qemu:arg value='{esc(arg)}'/>\n" for arg in d.qemu_args))
        w("".join(f"    <qemu:env name='{esc(k)}' value='{esc(v)}'/>\n" for k, v in d.qemu_env))
        w("  </qemu:commandline>\n")
    w("</domain>\n")
    return "".join(out)


def _migratable(d: DomainDef) -> DomainDef:
    """``d`` without the devices libvirt adds implicitly and old versions did not print."""
    controllers: list[Controller] = []
    for c in d.devices.controllers:
        implicit_usb = (
            c.type == "usb"
            and c.index == 0
            and c.model == "piix3-uhci"
            and c.info.address == PciAddress(0, 1, 2)
            and is_i440fx(d)
        )
        if not implicit_usb and not (c.type == "pci" and c.model == "pci-root"):
            insert_controller(controllers, c)
    inputs = list(d.devices.inputs)
    keyboard = next((i for i in inputs if i.type == "keyboard" and i.bus == "ps2"), None)
    if keyboard is not None:
        inputs.remove(keyboard)
    audios = d.devices.audios
    if len(audios) == 1 and audios[0].id == 1 and audios[0].type in ("none", "spice"):
        audios = []
    devices = replace(d.devices, controllers=controllers, inputs=inputs, audios=audios)
    return replace(d, devices=devices)


def _format_foreign(el: etree._Element, indent: str) -> str:
    """Metadata as libxml2 re-indents it: one element per line, two spaces a level."""
    copy = etree.fromstring(etree.tostring(el))
    for node in copy.iter():
        if len(node) and node.text is not None and not node.text.strip():
            node.text = None
        if node.tail is not None and not node.tail.strip():
            node.tail = None
    text = etree.tostring(copy, pretty_print=True, encoding="unicode")
    return "".join(f"{indent}{line}\n" for line in text.rstrip("\n").split("\n"))


def _format_kept(el: etree._Element, ind: str, tail: str = "") -> str:
    """An element we keep as written, printed the way libvirt prints its own XML.

    ``tail`` (boot order, alias, address) replaces those children of the original.
    """
    attrs = "".join(f" {k}='{esc(v)}'" for k, v in el.attrib.items())
    children = [c for c in el if isinstance(c.tag, str) and c.tag not in _INFO_TAGS]
    text = (el.text or "").strip()
    if not children and not tail:
        return (
            f"{ind}<{el.tag}{attrs}>{esc(text)}</{el.tag}>\n"
            if text
            else f"{ind}<{el.tag}{attrs}/>\n"
        )
    inner = "".join(_format_kept(c, ind + "  ") for c in children)
    return f"{ind}<{el.tag}{attrs}>\n{inner}{tail}{ind}</{el.tag}>\n"


_INFO_TAGS = ("address", "alias", "boot", "rom")


def _kept(d: DomainDef, tag: str) -> str:
    el = d.kept.get(tag)
    return _format_kept(el, "  ") if el is not None else ""


def _others(d: DomainDef, tag: str, inactive: bool) -> str:
    return "".join(
        _format_kept(o.element, "    ", _info(o.info, "      ", inactive))
        for o in d.devices.other(tag)
    )


def _format_os(d: DomainDef, w) -> None:
    os = d.os
    firmware = f" firmware='{os.firmware}'" if os.firmware else ""
    w(f"  <os{firmware}>\n")
    w(f"    <type arch='{os.arch}' machine='{os.machine}'>{os.type}</type>\n")
    if os.firmware_features:
        w("    <firmware>\n")
        for enabled, name in os.firmware_features:
            w(f"      <feature enabled='{enabled}' name='{esc(name)}'/>\n")
        w("    </firmware>\n")
    if os.loader is not None or os.loader_attrs:
        order = ("readonly", "secure", "type", "format")
        if os.loader:
            w(f"    <loader{_attrs(os.loader_attrs, order)}>{esc(os.loader)}</loader>\n")
        else:
            w(f"    <loader{_attrs(os.loader_attrs, order)}/>\n")
    if os.nvram is not None or os.nvram_attrs:
        if os.nvram:
            w(f"    <nvram{_attrs(os.nvram_attrs, ORDER['nvram'])}>{esc(os.nvram)}</nvram>\n")
        else:
            w(f"    <nvram{_attrs(os.nvram_attrs, ORDER['nvram'])}/>\n")
    for tag, value in (
        ("kernel", os.kernel),
        ("initrd", os.initrd),
        ("cmdline", os.cmdline),
        ("dtb", os.dtb),
    ):
        if value is not None:
            w(f"    <{tag}>{esc(value)}</{tag}>\n")
    for dev in os.boot_devs:
        w(f"    <boot dev='{dev}'/>\n")
    if os.bootmenu:
        w(f"    <bootmenu{_attrs(os.bootmenu, ('enable', 'timeout'))}/>\n")
    if os.smbios_mode:
        w(f"    <smbios mode='{os.smbios_mode}'/>\n")
    w("  </os>\n")


def _format_cpu(d: DomainDef, w) -> None:
    cpu = d.cpu
    if cpu is None:
        return
    head = f"  <cpu mode='{cpu.mode}'"
    if cpu.mode == "custom" and cpu.match:
        head += f" match='{cpu.match}'"
    if cpu.check:
        head += f" check='{cpu.check}'"
    if cpu.migratable:
        head += f" migratable='{cpu.migratable}'"
    body: list[str] = []
    if cpu.model is not None:
        fallback = f" fallback='{cpu.model_fallback}'" if cpu.model_fallback else ""
        body.append(f"    <model{fallback}>{esc(cpu.model)}</model>\n")
    if cpu.vendor:
        body.append(f"    <vendor>{esc(cpu.vendor)}</vendor>\n")
    if cpu.topology:
        t = cpu.topology
        body.append(
            f"    <topology sockets='{t['sockets']}' dies='{t['dies']}' "
            f"cores='{t['cores']}' threads='{t['threads']}'/>\n"
        )
    if cpu.cache:
        body.append(f"    <cache{_attrs(cpu.cache, ('level', 'mode'))}/>\n")
    for f in cpu.features:
        body.append(f"    <feature policy='{f.policy}' name='{esc(f.name)}'/>\n")
    if cpu.numa:
        body.append("    <numa>\n")
        for cell in cpu.numa:
            body.append(f"      <cell{_attrs(cell.attrs, ('id', 'cpus', 'memory', 'unit'))}/>\n")
        body.append("    </numa>\n")
    if body:
        w(head + ">\n")
        w("".join(body))
        w("  </cpu>\n")
    else:
        w(head + "/>\n")


def _format_clock(d: DomainDef, w) -> None:
    c = d.clock
    head = f"  <clock offset='{c.offset}'{_attrs(c.attrs)}"
    if not c.timers:
        w(head + "/>\n")
        return
    w(head + ">\n")
    for t in c.timers:
        w(f"    <timer{_attrs(t.attrs, ORDER['timer'])}/>\n")
    w("  </clock>\n")


def _addr(a: Address) -> str:
    if isinstance(a, PciAddress):
        multi = f" multifunction='{a.multifunction}'" if a.multifunction else ""
        return (
            f"<address type='pci' domain='0x{a.domain:04x}' bus='0x{a.bus:02x}' "
            f"slot='0x{a.slot:02x}' function='0x{a.function:x}'{multi}/>"
        )
    if isinstance(a, DriveAddress):
        return (
            f"<address type='drive' controller='{a.controller}' bus='{a.bus}' "
            f"target='{a.target}' unit='{a.unit}'/>"
        )
    if isinstance(a, UsbAddress):
        return f"<address type='usb' bus='{a.bus}' port='{a.port}'/>"
    if isinstance(a, VirtioSerialAddress):
        return (
            f"<address type='virtio-serial' controller='{a.controller}' bus='{a.bus}' "
            f"port='{a.port}'/>"
        )
    if isinstance(a, IsaAddress):
        iobase = f" iobase='0x{a.iobase:x}'" if a.iobase is not None else ""
        irq = f" irq='0x{a.irq:x}'" if a.irq is not None else ""
        return f"<address type='isa'{iobase}{irq}/>"
    raise TypeError(a)


def _info(info: DeviceInfo, ind: str, inactive: bool, master: int | None = None) -> str:
    """Boot order, alias, USB master and address: the tail every device element shares."""
    parts = []
    if info.boot_order is not None:
        parts.append(f"{ind}<boot order='{info.boot_order}'/>\n")
    if info.alias and (not inactive or info.alias.startswith("ua-")):
        parts.append(f"{ind}<alias name='{esc(info.alias)}'/>\n")
    if master is not None:
        parts.append(f"{ind}<master startport='{master}'/>\n")
    if info.rom:
        parts.append(f"{ind}<rom{_attrs(info.rom, ('bar', 'file', 'enabled'))}/>\n")
    if info.address is not None:
        parts.append(f"{ind}{_addr(info.address)}\n")
    return "".join(parts)


def _element(tag: str, head_attrs: str, body: str, ind: str) -> str:
    if body:
        return f"{ind}<{tag}{head_attrs}>\n{body}{ind}</{tag}>\n"
    return f"{ind}<{tag}{head_attrs}/>\n"


def _format_disk(disk: Disk, inactive: bool, node_index: int) -> str:
    """``node_index`` is the disk's block node number, shown in the live XML only."""
    i = "      "
    driver = disk.driver
    # An ejected medium keeps its format and a numbered empty source; a drive
    # that started empty has neither.
    ejected = not inactive and disk.source is None and disk.node_index is not None
    if not inactive and disk.source is None and not ejected:
        driver = {k: v for k, v in driver.items() if k != "type"}  # no image, no format
    body = [f"{i}<driver{_attrs(driver, ORDER['disk/driver'])}/>\n"]
    if disk.volume:
        # libvirt names the pool and volume, never the path they resolved to
        index = "" if inactive or disk.source is None else f" index='{node_index}'"
        body.append(f"{i}<source{_attrs(disk.volume, ('pool', 'volume', 'mode'))}{index}/>\n")
        if (not inactive and disk.source is not None) or disk.no_backing:
            body.append(f"{i}<backingStore/>\n")
    elif disk.source is not None:
        attr = "dev" if disk.type == "block" else "file"
        index = "" if inactive else f" index='{node_index}'"
        body.append(f"{i}<source {attr}='{esc(disk.source)}'{index}/>\n")
        if not inactive or disk.no_backing:
            body.append(f"{i}<backingStore/>\n")
    elif disk.net_source:
        head = f"{i}<source{_attrs(disk.net_source, ('protocol', 'name', 'query', 'tls'))}"
        if disk.hosts:
            body.append(head + ">\n")
            for h in disk.hosts:
                body.append(f"{i}  <host{_attrs(h, ('transport', 'name', 'port', 'socket'))}/>\n")
            body.append(f"{i}</source>\n")
        else:
            body.append(head + "/>\n")
    elif ejected:
        body.append(f"{i}<source index='{disk.node_index}'/>\n")
    extra = _attrs(disk.target_extra, ("tray", "removable", "rotation_rate"))
    body.append(f"{i}<target dev='{esc(disk.target)}' bus='{disk.bus}'{extra}/>\n")
    if disk.iotune is not None:
        body.append(_format_kept(disk.iotune, i))
    if disk.readonly:
        body.append(f"{i}<readonly/>\n")
    if disk.shareable:
        body.append(f"{i}<shareable/>\n")
    if disk.serial is not None:
        body.append(f"{i}<serial>{esc(disk.serial)}</serial>\n")
    body.append(_info(disk.info, i, inactive))
    return _element("disk", f" type='{disk.type}' device='{disk.device}'", "".join(body), "    ")


def _format_chr(
    c: CharDevice, inactive: bool, live: LiveState | None, tty_attr: bool = False
) -> str:
    i = "      "
    body = []
    src = c.source
    tty = ""
    if src.type == "pty":
        path = live.pty_paths.get(c.info.alias or "") if live is not None and not inactive else None
        if path:
            body.append(f"{i}<source path='{esc(path)}'/>\n")
            if tty_attr:
                tty = f" tty='{esc(path)}'"
    elif src.attrs:
        body.append(f"{i}<source{_attrs(src.attrs, ORDER['chr/source'])}/>\n")
    if c.protocol:
        body.append(f"{i}<protocol type='{c.protocol}'/>\n")
    if c.log:
        body.append(f"{i}<log{_attrs(c.log, ('file', 'append'))}/>\n")
    target = ""
    if c.target_type is not None:
        target += f" type='{c.target_type}'"
    if c.target_name is not None:
        target += f" name='{esc(c.target_name)}'"
    if c.target_port is not None:
        target += f" port='{c.target_port}'"
    if (
        live is not None
        and not inactive
        and c.kind == "channel"
        and c.target_type == "virtio"
        and src.type == "unix"
    ):
        target += f" state='{live.channel_states.get(c.info.alias or '', 'disconnected')}'"
    if c.target_model:
        body.append(f"{i}<target{target}>\n{i}  <model name='{c.target_model}'/>\n{i}</target>\n")
    elif target:
        body.append(f"{i}<target{target}/>\n")
    body.append(_info(c.info, i, inactive))
    return _element(c.kind, f" type='{src.type}'{tty}", "".join(body), "    ")


def _with_listen(attrs: dict[str, str], address: str, gtype: str) -> dict[str, str]:
    """The graphics attributes with ``listen`` put where libvirt prints it."""
    order = ORDER[f"graphics/{gtype}"]
    merged = {**attrs, "listen": address}
    return {
        k: merged[k] for k in sorted(merged, key=lambda k: order.index(k) if k in order else 99)
    }


def _format_devices(d: DomainDef, w, inactive: bool, secure: bool, live: LiveState | None) -> None:
    devs = d.devices
    i = "      "
    w("  <devices>\n")
    if devs.emulator:
        w(f"    <emulator>{esc(devs.emulator)}</emulator>\n")
    for n, disk in enumerate(devs.disks):
        w(_format_disk(disk, inactive, disk.node_index or len(devs.disks) - n))
    others = bool(devs.others)
    for c in devs.controllers:
        head = f" type='{c.type}' index='{c.index}'"
        if c.model:
            head += f" model='{c.model}'"
        head += _attrs(c.attrs, ("ports", "vectors"))
        body = ""
        if c.model_name:
            body += f"{i}<model name='{c.model_name}'/>\n"
        if c.driver:
            body += f"{i}<driver{_attrs(c.driver, ORDER['controller/driver'])}/>\n"
        if c.target:
            body += f"{i}<target{_attrs(c.target, ORDER['controller/target'])}/>\n"
        body += _info(c.info, i, inactive, c.master_startport)
        w(_element("controller", head, body, "    "))
    if others:
        w(_others(d, "lease", inactive) + _others(d, "filesystem", inactive))
    for n in devs.interfaces:
        body = f"{i}<mac address='{n.mac}'/>\n"
        source = n.source if inactive else _live_source(n)
        if source:
            body += f"{i}<source{_attrs(source, ORDER['interface/source'])}/>\n"
        if n.target_dev:
            managed = f" managed='{n.target_managed}'" if n.target_managed else ""
            body += f"{i}<target dev='{esc(n.target_dev)}'{managed}/>\n"
        if n.model:
            body += f"{i}<model type='{esc(n.model)}'/>\n"
        if n.driver:
            body += f"{i}<driver{_attrs(n.driver, ORDER['interface/driver'])}/>\n"
        if n.link_state:
            body += f"{i}<link state='{n.link_state}'/>\n"
        if n.mtu is not None:
            body += f"{i}<mtu size='{n.mtu}'/>\n"
        body += _info(n.info, i, inactive)
        w(_element("interface", f" type='{n.type}'", body, "    "))
    if others:
        w(_others(d, "smartcard", inactive))
    for s in devs.serials:
        w(_format_chr(s, inactive, live))
    if others:
        w(_others(d, "parallel", inactive))
    for c in devs.consoles:
        w(_format_chr(c, inactive, live, tty_attr=True))
    for c in devs.channels:
        w(_format_chr(c, inactive, live))
    for inp in devs.inputs:
        body = (
            f"{i}<source{_attrs(inp.source, ('evdev', 'dev', 'grab', 'grabToggle', 'repeat'))}/>\n"
            if inp.source
            else ""
        )
        head = f" type='{inp.type}' bus='{inp.bus}'"
        w(_element("input", head, body + _info(inp.info, i, inactive), "    "))
    if others:
        w(_others(d, "tpm", inactive))
    for g in devs.graphics:
        attrs = dict(g.attrs)
        listens = g.listens
        if live is not None and not inactive:
            if attrs.get("autoport") == "yes":
                port = live.vnc_port if g.type == "vnc" else live.spice_port
                if port is not None:
                    attrs["port"] = str(port)
            if listens and listens[0] == {"type": "address"}:
                listens = [{"type": "address", "address": live.listen_address}, *listens[1:]]
                attrs = _with_listen(attrs, live.listen_address, g.type)
        if not secure:
            attrs.pop("passwd", None)
        body = "".join(
            f"{i}<listen{_attrs(ln, ('type', 'address', 'network', 'socket'))}/>\n"
            for ln in listens
        )
        rank = {t: n for n, t in enumerate(_SPICE_CHILD_ORDER)}
        for tag, cattrs in sorted(g.children, key=lambda c: rank.get(c[0], 99)):
            body += f"{i}<{tag}{_attrs(cattrs)}/>\n"
        w(
            _element(
                "graphics",
                f" type='{g.type}'{_attrs(attrs, ORDER.get(f'graphics/{g.type}'))}",
                body,
                "    ",
            )
        )
    for s in devs.sounds:
        codecs = "".join(f"{i}<codec type='{c}'/>\n" for c in s.codecs)
        w(_element("sound", f" model='{s.model}'", codecs + _info(s.info, i, inactive), "    "))
    for a in devs.audios:
        w(f"    <audio id='{a.id}' type='{a.type}'/>\n")
    for v in devs.videos:
        model = f"{i}<model type='{v.model}'{_attrs(v.attrs, ORDER['video/model'])}"
        model += " primary='yes'" if v.primary else ""
        if v.acceleration:
            accel = _attrs(v.acceleration, ("accel3d", "accel2d", "rendernode"))
            model += f">\n{i}  <acceleration{accel}/>\n{i}</model>\n"
        else:
            model += "/>\n"
        w(_element("video", "", model + _info(v.info, i, inactive), "    "))
    if others:
        w(_others(d, "hostdev", inactive))
    for r in devs.redirdevs:
        body = ""
        if r.source.attrs:
            body += f"{i}<source{_attrs(r.source.attrs, ORDER['chr/source'])}/>\n"
        if r.protocol:
            body += f"{i}<protocol type='{r.protocol}'/>\n"
        body += _info(r.info, i, inactive)
        w(_element("redirdev", f" bus='{r.bus}' type='{r.source.type}'", body, "    "))
    if others:
        w(_others(d, "redirfilter", inactive) + _others(d, "hub", inactive))
    for wd in devs.watchdogs:
        action = f" action='{wd.action}'" if wd.action else ""
        w(_element("watchdog", f" model='{wd.model}'{action}", _info(wd.info, i, inactive), "    "))
    mb = devs.memballoon
    if mb is not None:
        body = f"{i}<stats period='{mb.stats_period}'/>\n" if mb.stats_period is not None else ""
        body += _info(mb.info, i, inactive)
        w(_element("memballoon", f" model='{mb.model}'{_attrs(mb.attrs)}", body, "    "))
    for r in devs.rngs:
        body = f"{i}<rate{_attrs(r.rate, ('bytes', 'period'))}/>\n" if r.rate else ""
        if r.backend_chr is not None:
            egd = r.backend_chr
            inner = ""
            if egd.source.attrs:
                inner += f"{i}  <source{_attrs(egd.source.attrs, ORDER['chr/source'])}/>\n"
            if egd.protocol:
                inner += f"{i}  <protocol type='{egd.protocol}'/>\n"
            head = f" model='egd' type='{egd.source.type}'"
            body += _element("backend", head, inner, i)
        elif r.backend_path:
            body += f"{i}<backend model='{r.backend_model}'>{esc(r.backend_path)}</backend>\n"
        else:
            body += f"{i}<backend model='{r.backend_model}'/>\n"
        body += _info(r.info, i, inactive)
        w(_element("rng", f" model='{r.model}'", body, "    "))
    if others:
        for tag in ("panic", "shmem", "memory", "iommu", "vsock", "crypto"):
            w(_others(d, tag, inactive))
    w("  </devices>\n")


def _live_source(n: Interface) -> dict[str, str]:
    """A running NIC on a network also names its port and the bridge the network gave it."""
    if n.type != "network":
        return n.source
    extra = {"portid": n.portid, "bridge": n.bridge}
    return {**n.source, **{k: v for k, v in extra.items() if v}}
