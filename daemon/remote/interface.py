"""Host interface calls of the REMOTE program (virInterface*).

libvirtd serves these from its interface driver on the connection a client
opened for QEMU; here that is the server's ``interface`` driver. A handle is
looked up by its name (the MAC it carries is informational, as in libvirt).
Flag errors name the backend function libvirtd 9.0 would: the udev backend's
for what it has, the netcf backend's for what only that one had.
"""

from __future__ import annotations

from typing import Any

from daemon.dispatch import Call
from daemon.remote._common import check_flags, server_driver
from drivers.interface.driver import (
    DEFINE_VALIDATE,
    LIST_ACTIVE,
    LIST_INACTIVE,
    XML_INACTIVE,
    Handle,
    InterfaceDriver,
)
from protocol.errors import ErrorCode, ErrorDomain, VirError
from protocol.programs import remote

R = remote().module


def _driver(call: Call) -> InterfaceDriver:
    return server_driver(call, "interface")


def _check_flags(flags: int, allowed: int, api: str) -> None:
    check_flags(flags, allowed, api, ErrorDomain.INTERFACE)


def _handle(h: Handle) -> Any:
    return R.remote_nonnull_interface(h.name, h.mac)


def _limit(maxnames: int) -> int:
    if maxnames > R.REMOTE_INTERFACE_LIST_MAX:
        raise VirError(ErrorCode.RPC, "maxnames > REMOTE_INTERFACE_LIST_MAX", ErrorDomain.RPC)
    return max(maxnames, 0)


# -- lists and lookups ---------------------------------------------------------------


async def connect_list_all_interfaces(call: Call, args: Any) -> Any:
    _check_flags(args.flags, LIST_ACTIVE | LIST_INACTIVE, "udevConnectListAllInterfaces")
    found = _driver(call).list_all(args.flags)
    handles = [_handle(h) for h in found] if args.need_results else []
    return R.remote_connect_list_all_interfaces_ret(handles, len(found))


async def connect_num_of_interfaces(call: Call, args: None) -> Any:
    return R.remote_connect_num_of_interfaces_ret(len(_driver(call).list_names(True)))


async def connect_list_interfaces(call: Call, args: Any) -> Any:
    limit = _limit(args.maxnames)
    names = _driver(call).list_names(True)
    return R.remote_connect_list_interfaces_ret(names[:limit])


async def connect_num_of_defined_interfaces(call: Call, args: None) -> Any:
    count = len(_driver(call).list_names(False))
    return R.remote_connect_num_of_defined_interfaces_ret(count)


async def connect_list_defined_interfaces(call: Call, args: Any) -> Any:
    limit = _limit(args.maxnames)
    names = _driver(call).list_names(False)
    return R.remote_connect_list_defined_interfaces_ret(names[:limit])


async def interface_lookup_by_name(call: Call, args: Any) -> Any:
    h = _driver(call).lookup_by_name(args.name)
    return R.remote_interface_lookup_by_name_ret(_handle(h))


async def interface_lookup_by_mac_string(call: Call, args: Any) -> Any:
    h = _driver(call).lookup_by_mac(args.mac)
    return R.remote_interface_lookup_by_mac_string_ret(_handle(h))


async def interface_is_active(call: Call, args: Any) -> Any:
    active = _driver(call).is_active(args.iface.name)
    return R.remote_interface_is_active_ret(int(active))


async def interface_get_xml_desc(call: Call, args: Any) -> Any:
    _check_flags(args.flags, XML_INACTIVE, "udevInterfaceGetXMLDesc")
    xml = _driver(call).xml(args.iface.name, args.flags)
    return R.remote_interface_get_xml_desc_ret(xml)


# -- definitions, start and stop ---------------------------------------------------------


async def interface_define_xml(call: Call, args: Any) -> Any:
    _check_flags(args.flags, DEFINE_VALIDATE, "netcfInterfaceDefineXML")
    h = await _driver(call).define_xml(args.xml, args.flags)
    return R.remote_interface_define_xml_ret(_handle(h))


async def interface_undefine(call: Call, args: Any) -> None:
    await _driver(call).undefine(args.iface.name)


async def interface_create(call: Call, args: Any) -> None:
    _check_flags(args.flags, 0, "netcfInterfaceCreate")
    await _driver(call).create(args.iface.name)


async def interface_destroy(call: Call, args: Any) -> None:
    _check_flags(args.flags, 0, "netcfInterfaceDestroy")
    await _driver(call).destroy(args.iface.name)


# -- transactions -------------------------------------------------------------------------


async def interface_change_begin(call: Call, args: Any) -> None:
    _check_flags(args.flags, 0, "netcfInterfaceChangeBegin")
    await _driver(call).change_begin()


async def interface_change_commit(call: Call, args: Any) -> None:
    _check_flags(args.flags, 0, "netcfInterfaceChangeCommit")
    await _driver(call).change_commit()


async def interface_change_rollback(call: Call, args: Any) -> None:
    _check_flags(args.flags, 0, "netcfInterfaceChangeRollback")
    await _driver(call).change_rollback()
