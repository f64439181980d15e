"""Device hotplug calls of the REMOTE program: attach, detach and update, live or config."""

from __future__ import annotations

from typing import Any

from daemon.dispatch import Call
from drivers.qemu import hotplug
from drivers.qemu.domain import Domain
from protocol.errors import ErrorCode, ErrorDomain, VirError

_AFFECT = hotplug.AFFECT_LIVE | hotplug.AFFECT_CONFIG


def _dom(call: Call, handle: Any) -> Domain:
    return call.driver.lookup_by_uuid(handle.uuid, handle.name)


def _check_flags(flags: int, allowed: int, api: str) -> None:
    if flags & ~allowed:
        raise VirError(
            ErrorCode.INVALID_ARG,
            f"unsupported flags (0x{flags & ~allowed:x}) in function {api}",
            ErrorDomain.QEMU,
        )


async def domain_attach_device(call: Call, args: Any) -> None:
    # The flagless call is the live one, as in libvirtd.
    await hotplug.attach(call.driver, _dom(call, args.dom), args.xml, hotplug.AFFECT_LIVE)


async def domain_attach_device_flags(call: Call, args: Any) -> None:
    _check_flags(args.flags, _AFFECT, "qemuDomainAttachDeviceFlags")
    await hotplug.attach(call.driver, _dom(call, args.dom), args.xml, args.flags)


async def domain_detach_device(call: Call, args: Any) -> None:
    await hotplug.detach(call.driver, _dom(call, args.dom), args.xml, hotplug.AFFECT_LIVE)


async def domain_detach_device_flags(call: Call, args: Any) -> None:
    _check_flags(args.flags, _AFFECT, "qemuDomainDetachDeviceFlags")
    await hotplug.detach(call.driver, _dom(call, args.dom), args.xml, args.flags)


async def domain_detach_device_alias(call: Call, args: Any) -> None:
    _check_flags(args.flags, _AFFECT, "qemuDomainDetachDeviceAlias")
    await hotplug.detach_alias(call.driver, _dom(call, args.dom), args.alias, args.flags)


async def domain_update_device_flags(call: Call, args: Any) -> None:
    _check_flags(args.flags, _AFFECT | hotplug.MODIFY_FORCE, "qemuDomainUpdateDeviceFlags")
    await hotplug.update(call.driver, _dom(call, args.dom), args.xml, args.flags)
