"""The typed domain definition: what the parser fills, the formatter prints and argv uses.

Fields hold values as libvirt keeps them after its post-parse step (memory in KiB,
canonical machine type, assigned addresses), so formatting is a plain walk.
``None`` means "not given": the formatter leaves such attributes out, as libvirt does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree


@dataclass
class PciAddress:
    bus: int
    slot: int
    function: int = 0
    domain: int = 0
    multifunction: str | None = None  # "on" / "off"


@dataclass
class DriveAddress:
    controller: int
    bus: int
    target: int
    unit: int


@dataclass
class UsbAddress:
    bus: int
    port: str


@dataclass
class VirtioSerialAddress:
    controller: int
    bus: int
    port: int


@dataclass
class IsaAddress:
    iobase: int | None = None
    irq: int | None = None


Address = PciAddress | DriveAddress | UsbAddress | VirtioSerialAddress | IsaAddress


@dataclass
class DeviceInfo:
    """What every device carries: its address, boot order and (live) alias."""

    address: Address | None = None
    boot_order: int | None = None
    alias: str | None = None  # user aliases ("ua-...") survive in the inactive XML
    rom: dict[str, str] = field(default_factory=dict)  # <rom bar= file= enabled=>


@dataclass
class Disk:
    type: str  # file, block
    device: str  # disk, cdrom, floppy, lun
    target: str
    bus: str
    source: str | None = None  # path of the file or block device (of the volume, once resolved)
    volume: dict[str, str] = field(default_factory=dict)  # type='volume': pool, volume, mode
    volume_type: str | None = None  # type='volume', live: file/block/dir the volume turned out
    no_backing: bool = False  # an explicit empty <backingStore/>: the image has no backing chain
    net_source: dict[str, str] = field(default_factory=dict)  # type='network': protocol, name
    hosts: list[dict[str, str]] = field(default_factory=list)  # type='network': name, port
    driver: dict[str, str] = field(default_factory=dict)  # name, type, cache, io, ...
    readonly: bool = False
    shareable: bool = False
    serial: str | None = None
    target_extra: dict[str, str] = field(default_factory=dict)  # tray, removable, rotation_rate
    iotune: etree._Element | None = None  # kept as written
    node_index: int | None = None  # live: N of its image's libvirt-N block nodes in QEMU
    info: DeviceInfo = field(default_factory=DeviceInfo)

    @property
    def source_type(self) -> str:
        """What the source is for QEMU: a volume disk is the kind of its volume."""
        return (self.volume_type or "file") if self.type == "volume" else self.type


@dataclass
class Controller:
    type: str
    index: int
    model: str | None = None
    attrs: dict[str, str] = field(default_factory=dict)  # ports, vectors
    model_name: str | None = None  # <model name='pcie-root-port'/>
    target: dict[str, str] = field(default_factory=dict)  # chassis, port, busNr
    driver: dict[str, str] = field(default_factory=dict)  # queues, iothread
    master_startport: int | None = None  # a USB1 companion of a USB2 controller
    info: DeviceInfo = field(default_factory=DeviceInfo)


@dataclass
class Interface:
    type: str  # user, bridge, network, ethernet, direct
    mac: str
    source: dict[str, str] = field(default_factory=dict)  # network=, bridge=, dev=, mode=
    target_dev: str | None = None
    target_managed: str | None = None  # ethernet: managed='no' means the tap exists already
    model: str | None = None
    driver: dict[str, str] = field(default_factory=dict)
    link_state: str | None = None
    mtu: int | None = None
    info: DeviceInfo = field(default_factory=DeviceInfo)
    # type='network' while running: the network's port and the bridge it gave (live XML only)
    portid: str | None = None
    bridge: str | None = None


@dataclass
class CharSource:
    """Backend of a serial, console or channel: pty, unix, file, tcp, spicevmc, ..."""

    type: str
    attrs: dict[str, str] = field(default_factory=dict)  # path, mode, host, service


@dataclass
class CharDevice:
    kind: str  # serial, console, channel
    source: CharSource
    target_type: str | None = None  # isa-serial / serial / virtio / guestfwd
    target_port: int | None = None
    target_name: str | None = None  # channel name
    target_model: str | None = None  # <model name='isa-serial'/>
    protocol: str | None = None  # tcp: raw, telnet
    log: dict[str, str] = field(default_factory=dict)  # <log file= append=>: QEMU copies output
    info: DeviceInfo = field(default_factory=DeviceInfo)


@dataclass
class Input:
    type: str  # mouse, keyboard, tablet, passthrough, evdev
    bus: str  # ps2, usb, virtio
    info: DeviceInfo = field(default_factory=DeviceInfo)
    source: dict[str, str] = field(default_factory=dict)  # evdev=, dev=, grab=


@dataclass
class Graphics:
    type: str  # vnc, spice
    attrs: dict[str, str] = field(default_factory=dict)  # port, autoport, listen, ...
    listens: list[dict[str, str]] = field(default_factory=list)
    children: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # spice extras


@dataclass
class Video:
    model: str  # cirrus, vga, qxl, virtio, none, ...
    attrs: dict[str, str] = field(default_factory=dict)  # ram, vram, vgamem, heads
    primary: bool = False
    acceleration: dict[str, str] = field(default_factory=dict)  # accel3d, accel2d, rendernode
    info: DeviceInfo = field(default_factory=DeviceInfo)


@dataclass
class Sound:
    model: str
    codecs: list[str] = field(default_factory=list)  # duplex, micro, output
    info: DeviceInfo = field(default_factory=DeviceInfo)


@dataclass
class Audio:
    id: int
    type: str


@dataclass
class Memballoon:
    model: str  # virtio, none
    attrs: dict[str, str] = field(default_factory=dict)  # autodeflate, freePageReporting
    stats_period: int | None = None
    info: DeviceInfo = field(default_factory=DeviceInfo)


@dataclass
class Rng:
    model: str
    backend_model: str  # random, egd, builtin
    backend_path: str | None = None
    backend_chr: CharDevice | None = None  # egd: a character device (type, source, protocol)
    rate: dict[str, str] = field(default_factory=dict)
    info: DeviceInfo = field(default_factory=DeviceInfo)


@dataclass
class Watchdog:
    model: str
    action: str | None = None
    info: DeviceInfo = field(default_factory=DeviceInfo)


@dataclass
class Redirdev:
    bus: str
    source: CharSource  # spicevmc, or tcp with host and service
    protocol: str | None = None
    info: DeviceInfo = field(default_factory=DeviceInfo)


@dataclass
class OtherDevice:
    """A device libvirt knows that we keep as written (filesystem, hub, tpm, vsock, ...),
    with the address we assign it."""

    element: etree._Element
    info: DeviceInfo = field(default_factory=DeviceInfo)


# Devices kept as written, each kind in the place libvirt lists it among the devices.
OTHER_DEVICE_TAGS = (
    "lease filesystem smartcard parallel tpm hostdev redirfilter hub panic shmem memory "
    "iommu vsock crypto".split()
)


@dataclass
class Devices:
    emulator: str | None = None
    disks: list[Disk] = field(default_factory=list)
    controllers: list[Controller] = field(default_factory=list)
    interfaces: list[Interface] = field(default_factory=list)
    serials: list[CharDevice] = field(default_factory=list)
    consoles: list[CharDevice] = field(default_factory=list)
    channels: list[CharDevice] = field(default_factory=list)
    inputs: list[Input] = field(default_factory=list)
    graphics: list[Graphics] = field(default_factory=list)
    sounds: list[Sound] = field(default_factory=list)
    audios: list[Audio] = field(default_factory=list)
    videos: list[Video] = field(default_factory=list)
    redirdevs: list[Redirdev] = field(default_factory=list)
    watchdogs: list[Watchdog] = field(default_factory=list)
    memballoon: Memballoon | None = None
    rngs: list[Rng] = field(default_factory=list)
    others: dict[str, list[OtherDevice]] = field(default_factory=dict)  # by tag

    def other(self, tag: str) -> list[OtherDevice]:
        return self.others.get(tag, [])


@dataclass
class Os:
    type: str = "hvm"
    arch: str | None = None
    machine: str | None = None
    boot_devs: list[str] = field(default_factory=list)
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    dtb: str | None = None
    loader: str | None = None
    loader_attrs: dict[str, str] = field(default_factory=dict)  # readonly, type, secure
    nvram: str | None = None
    nvram_attrs: dict[str, str] = field(default_factory=dict)  # template
    bootmenu: dict[str, str] = field(default_factory=dict)  # enable, timeout
    firmware: str | None = None  # efi / bios: chosen from QEMU's firmware descriptors at start
    firmware_features: list[tuple[str, str]] = field(default_factory=list)  # (enabled, name)
    smbios_mode: str | None = None


@dataclass
class CpuFeature:
    policy: str
    name: str


@dataclass
class NumaCell:
    attrs: dict[str, str]  # id, cpus, memory, unit, ...


@dataclass
class Feature:
    """One of <features>: its attributes and, for hyperv/kvm/xen, its sub-features."""

    attrs: dict[str, str] = field(default_factory=dict)
    children: list[tuple[str, dict[str, str]]] = field(default_factory=list)


@dataclass
class Cpu:
    mode: str = "custom"  # custom, host-model, host-passthrough, maximum
    match: str | None = None
    check: str | None = None
    migratable: str | None = None
    model: str | None = None
    model_fallback: str | None = None
    vendor: str | None = None
    topology: dict[str, int] | None = None  # sockets, dies, cores, threads
    cache: dict[str, str] = field(default_factory=dict)  # level, mode
    features: list[CpuFeature] = field(default_factory=list)
    numa: list[NumaCell] = field(default_factory=list)


@dataclass
class Timer:
    attrs: dict[str, str]  # name, tickpolicy, present, track


@dataclass
class Clock:
    offset: str = "utc"
    attrs: dict[str, str] = field(default_factory=dict)  # adjustment, basis, timezone
    timers: list[Timer] = field(default_factory=list)


@dataclass
class DomainDef:
    type: str  # kvm, qemu
    name: str
    uuid: str
    memory: int  # KiB
    current_memory: int  # KiB
    vcpus: int
    os: Os
    devices: Devices
    genid: str | None = None
    title: str | None = None
    description: str | None = None
    metadata: list[etree._Element] = field(default_factory=list)
    max_memory: int | None = None  # KiB
    max_memory_slots: int | None = None
    vcpu_placement: str = "static"
    vcpu_current: int | None = None
    vcpu_cpuset: str | None = None
    iothreads: int | None = None
    features: dict[str, Feature] = field(default_factory=dict)  # in libvirt's order
    cpu: Cpu | None = None
    clock: Clock = field(default_factory=Clock)
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    pm: dict[str, str] = field(default_factory=dict)  # suspend-to-mem / -disk: yes/no
    kept: dict[str, etree._Element] = field(default_factory=dict)  # KEPT_SECTIONS as written
    qemu_args: list[str] = field(default_factory=list)  # <qemu:commandline>: appended to argv
    qemu_env: list[tuple[str, str]] = field(
        default_factory=list
    )  # ... and set in QEMU's environment


# Top-level sections libvirt knows that we keep as written and print in its order.
KEPT_SECTIONS = (
    "blkiotune memtune memoryBacking vcpus iothreadids cputune numatune resource sysinfo "
    "idmap perf seclabel keywrap launchSecurity".split()
)


@dataclass
class LiveState:
    """Facts of a running guest the live XML shows; the driver fills it at start."""

    id: int
    pty_paths: dict[str, str] = field(default_factory=dict)  # chr alias -> /dev/pts/N
    channel_states: dict[str, str] = field(default_factory=dict)  # alias -> connected/disconnected
    vnc_port: int | None = None
    spice_port: int | None = None
    listen_address: str = "127.0.0.1"  # where autoport graphics listen (qemu.conf default)
    partition: str | None = "/machine"  # the cgroup partition libvirtd reports
