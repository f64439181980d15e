"""What libvirt's QEMU driver refuses in a definition it could read.

libvirtd checks some devices as it completes them and the rest once the whole
definition is complete; keeping the two apart (and each in libvirt's device order)
makes a definition with several faults get the complaint libvirtd gives.
"""

from __future__ import annotations

from protocol.errors import ErrorDomain, VirError

from .errors import unsupported, xml_error
from .model import DomainDef


def check_devices_early(d: DomainDef) -> None:
    """What libvirtd refuses while it completes each device."""
    for disk in d.devices.disks:
        if disk.device == "lun" and disk.type != "block":
            raise unsupported("disk device='lun' is only valid for block type disk source")
    for net in d.devices.interfaces:
        if net.mtu is not None and net.type == "user":
            raise _qemu("setting MTU on interface type user is not supported yet")


def validate(d: DomainDef) -> None:
    """What libvirtd refuses in the complete definition."""
    _lifecycle(d)
    devs = d.devices
    for n, video in enumerate(devs.videos):
        if n > 0 and video.model in ("vga", "cirrus", "vmvga", "bochs", "ramfb"):
            raise unsupported(f"video type '{video.model}' is only valid as primary video device")
    threads = d.iothreads or 0
    for disk in devs.disks:
        iothread = disk.driver.get("iothread")
        if iothread is not None and not 0 < int(iothread) <= threads:
            raise _qemu(f"Disk iothread '{iothread}' not defined in iothreadid")
    for c in devs.controllers:
        iothread = c.driver.get("iothread")
        if iothread is not None and not 0 < int(iothread) <= threads:
            raise _qemu(f"controller iothread '{iothread}' not defined in iothreadid")
    for g in devs.graphics:
        if g.type == "spice" and g.attrs.get("tlsPort") not in (None, "-1", "0"):
            raise _qemu("spice TLS port set in XML configuration, but TLS is disabled in qemu.conf")
    has_spice = any(g.type == "spice" for g in devs.graphics)
    spicevmc = [c.source.type for c in devs.channels] + [r.source.type for r in devs.redirdevs]
    if "spicevmc" in spicevmc and not has_spice:
        raise _qemu("chardev 'spicevmc' not supported without spice graphics")
    seen: dict[str, str] = {}
    for disk in devs.disks:
        if disk.target in seen:
            raise xml_error(
                f"target '{disk.target}' duplicated for disk sources "
                f"'{seen[disk.target]}' and '{disk.source or ''}'"
            )
        seen[disk.target] = disk.source or ""


def _lifecycle(d: DomainDef) -> None:
    """The actions the QEMU driver has no way to carry out, then those no driver has."""
    actions = (d.on_poweroff, d.on_reboot, d.on_crash)
    if "preserve" in actions[:2]:
        raise _qemu("qemu driver doesn't support the 'preserve' action for"
                    " 'on_reboot'/'on_poweroff'")
    if "rename-restart" in actions:
        raise _qemu("qemu driver doesn't support the 'rename-restart' action for"
                    " 'on_reboot'/'on_poweroff'/'on_crash'")
    for event, action in (("poweroff", d.on_poweroff), ("reboot", d.on_reboot)):
        if action.startswith("coredump-"):
            raise unsupported(f"Lifecycle event '{event}' doesn't support '{action}' action")


def _qemu(message: str) -> VirError:
    return unsupported(message, ErrorDomain.QEMU)
