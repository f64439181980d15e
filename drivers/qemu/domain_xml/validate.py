"""What libvirt's QEMU driver refuses once a definition is parsed and completed.

These checks run last, device by device in libvirt's order, so that a definition
with several faults gets the same complaint libvirtd gives.
"""

from __future__ import annotations

from protocol.errors import ErrorDomain, VirError

from .errors import unsupported
from .model import DomainDef


def validate(d: DomainDef) -> None:
    devs = d.devices
    threads = d.iothreads or 0
    for disk in devs.disks:
        iothread = disk.driver.get("iothread")
        if iothread is not None and not 0 < int(iothread) <= threads:
            raise _qemu(f"Disk iothread '{iothread}' not defined in iothreadid")
    for c in devs.controllers:
        iothread = c.driver.get("iothread")
        if iothread is not None and not 0 < int(iothread) <= threads:
            raise _qemu(f"controller iothread '{iothread}' not defined in iothreadid")
    for net in devs.interfaces:
        if net.mtu is not None and net.type == "user":
            raise _qemu("setting MTU on interface type user is not supported yet")
    has_spice = any(g.type == "spice" for g in devs.graphics)
    spicevmc = [c.source.type for c in devs.channels] + [r.source.type for r in devs.redirdevs]
    if "spicevmc" in spicevmc and not has_spice:
        raise _qemu("chardev 'spicevmc' not supported without spice graphics")
    for g in devs.graphics:
        if g.type == "spice" and g.attrs.get("tlsPort") not in (None, "-1", "0"):
            raise _qemu("spice TLS port set in XML configuration, but TLS is disabled in qemu.conf")


def _qemu(message: str) -> VirError:
    return unsupported(message, ErrorDomain.QEMU)
