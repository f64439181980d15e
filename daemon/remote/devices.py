"""Device hotplug calls of the REMOTE program: attach, detach and update, live or config."""

from __future__ import annotations

from typing import Any

from daemon.dispatch import Call
from daemon.remote._common import check_flags, dom_of
from drivers.qemu import hotplug
from drivers.qemu.affect import AFFECT_CONFIG, AFFECT_LIVE

_AFFECT = AFFECT_LIVE | AFFECT_CONFIG


async def domain_attach_device(call: Call, args: Any) -> None:
    # The flagless call is the live one, as in libvirtd.
    await hotplug.attach(call.driver, dom_of(call, args.dom), args.xml, AFFECT_LIVE)


async def domain_attach_device_flags(call: Call, args: Any) -> None:
    check_flags(args.flags, _AFFECT, "qemuDomainAttachDeviceFlags")
    await hotplug.attach(call.driver, dom_of(call, args.dom), args.xml, args.flags)


async def domain_detach_device(call: Call, args: Any) -> None:
    await hotplug.detach(call.driver, dom_of(call, args.dom), args.xml, AFFECT_LIVE)


async def domain_detach_device_flags(call: Call, args: Any) -> None:
    check_flags(args.flags, _AFFECT, "qemuDomainDetachDeviceFlags")
    await hotplug.detach(call.driver, dom_of(call, args.dom), args.xml, args.flags)


async def domain_detach_device_alias(call: Call, args: Any) -> None:
    check_flags(args.flags, _AFFECT, "qemuDomainDetachDeviceAlias")
    await hotplug.detach_alias(call.driver, dom_of(call, args.dom), args.alias, args.flags)


async def domain_update_device_flags(call: Call, args: Any) -> None:
    check_flags(args.flags, _AFFECT | hotplug.MODIFY_FORCE, "qemuDomainUpdateDeviceFlags")
    await hotplug.update(call.driver, dom_of(call, args.dom), args.xml, args.flags)
