"""What the live definition gets at start: device aliases (QEMU's ids, ``<alias>`` in
the live XML) and the channel socket paths the daemon makes up."""

from __future__ import annotations

from .addresses import is_q35
from .model import DomainDef, DriveAddress
from .parse import disk_index


def assign_aliases(d: DomainDef) -> None:
    """Give every device without an alias the name libvirtd would; existing ones are kept."""
    devs = d.devices
    for disk in devs.disks:
        if disk.info.alias:
            continue
        a = disk.info.address
        if disk.bus == "virtio":
            disk.info.alias = f"virtio-disk{max(disk_index(disk.target), 0)}"
        elif isinstance(a, DriveAddress) and disk.bus == "scsi" and scsi_has_luns(d, a.controller):
            disk.info.alias = f"scsi{a.controller}-{a.bus}-{a.target}-{a.unit}"
        elif isinstance(a, DriveAddress) and disk.bus == "scsi":
            disk.info.alias = f"scsi{a.controller}-{a.bus}-{a.unit}"
        elif isinstance(a, DriveAddress) and disk.bus in ("ide", "sata"):
            disk.info.alias = f"{disk.bus}{a.controller}-{a.bus}-{a.unit}"
        elif isinstance(a, DriveAddress) and disk.bus == "fdc":
            disk.info.alias = f"fdc{a.controller}-{a.bus}-{a.unit}"
        else:
            disk.info.alias = f"{disk.bus}-disk{max(disk_index(disk.target), 0)}"
    for c in devs.controllers:
        if c.info.alias:
            continue
        if c.type == "pci":
            c.info.alias = "pcie.0" if c.model == "pcie-root" else f"pci.{c.index}"
        elif c.type in ("ide", "usb") and c.index == 0:
            c.info.alias = c.type
        elif c.type == "sata" and c.index == 0 and is_q35(d):
            c.info.alias = "ide"  # q35's built-in AHCI is QEMU's "ide" bus
        else:
            c.info.alias = f"{c.type}{c.index}"
    _numbered(devs.interfaces, "net")
    _numbered(devs.serials, "serial")
    for i, con in enumerate(devs.consoles):
        if con.info.alias:
            continue
        if i == 0 and con.target_type == "serial" and devs.serials:
            con.info.alias = devs.serials[0].info.alias
        else:
            con.info.alias = f"console{i}"
    _numbered(devs.channels, "channel")
    _numbered(devs.inputs, "input")
    _numbered(devs.sounds, "sound")
    _numbered(devs.videos, "video")
    _numbered(devs.redirdevs, "redir")
    _numbered(devs.watchdogs, "watchdog")
    _numbered(devs.rngs, "rng")
    for tag, prefix in _OTHER_PREFIX.items():
        _numbered(devs.other(tag), prefix)
    if (
        devs.memballoon is not None
        and devs.memballoon.model != "none"
        and not devs.memballoon.info.alias
    ):
        devs.memballoon.info.alias = "balloon0"


_OTHER_PREFIX = {
    "filesystem": "fs", "parallel": "parallel", "tpm": "tpm", "hub": "hub",
    "shmem": "shmem", "vsock": "vsock", "hostdev": "hostdev", "smartcard": "smartcard",
}  # fmt: skip


def _numbered(devices: list, prefix: str) -> None:
    for i, dev in enumerate(devices):
        if not dev.info.alias:
            dev.info.alias = f"{prefix}{i}"


def fill_channel_paths(d: DomainDef, channel_dir: str) -> None:
    """Give each unix channel without a path a socket in ``channel_dir``, named after its target."""
    for ch in d.devices.channels:
        if ch.source.type == "unix" and "path" not in ch.source.attrs and ch.target_name:
            ch.source.attrs = {"mode": "bind", "path": f"{channel_dir}/{ch.target_name}"}


def scsi_has_luns(d: DomainDef, index: int) -> bool:
    """Whether SCSI controller ``index`` addresses disks by target and LUN (virtio-scsi)
    rather than by SCSI id alone (lsilogic and the other emulated HBAs)."""
    for c in d.devices.controllers:
        if c.type == "scsi" and c.index == index:
            return c.model in ("virtio-scsi", "virtio-transitional", "virtio-non-transitional")
    return False
