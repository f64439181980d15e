"""Virtual network and network port calls of the REMOTE program.

libvirtd serves these from its network driver on the same connection a client
opened for QEMU; here that is the server's ``network`` driver. A network handle
is looked up by UUID (a stale one gets libvirtd's "no network with matching
uuid ... (name)"); a port handle by its network's handle and its own UUID.
"""

from __future__ import annotations

from typing import Any

from daemon.dispatch import Call
from daemon.remote._common import check_flags, server_driver
from drivers.network.driver import Network, NetworkDriver
from drivers.network.port_xml import NetworkPort
from protocol.errors import ErrorCode, ErrorDomain, VirError
from protocol.programs import remote

R = remote().module

_XML_INACTIVE = 1 << 0
_LIST_ALL_FLAGS = (1 << 6) - 1
_UPDATE_FLAGS = 0x3  # AFFECT_LIVE, AFFECT_CONFIG


def _driver(call: Call) -> NetworkDriver:
    return server_driver(call, "network")


def _check_flags(flags: int, allowed: int, api: str) -> None:
    check_flags(flags, allowed, api, ErrorDomain.NETWORK)


def _handle(net: Network) -> Any:
    return R.remote_nonnull_network(net.name, net.uuid)


def _net(call: Call, handle: Any) -> Network:
    return _driver(call).lookup_by_uuid(handle.uuid, handle.name)


def _port_handle(net: Network, port: NetworkPort) -> Any:
    return R.remote_nonnull_network_port(_handle(net), port.uuid)


def _port(call: Call, handle: Any) -> tuple[Network, NetworkPort]:
    net = _net(call, handle.net)
    return net, _driver(call).port(net, handle.uuid)


# -- lists and lookups ----------------------------------------------------------------


async def connect_list_all_networks(call: Call, args: Any) -> Any:
    _check_flags(args.flags, _LIST_ALL_FLAGS, "networkConnectListAllNetworks")
    nets = _driver(call).list_networks(args.flags)
    handles = [_handle(n) for n in nets] if args.need_results else []
    return R.remote_connect_list_all_networks_ret(handles, len(nets))


def _names(call: Call, active: bool, limit: int) -> list[str]:
    if limit > R.REMOTE_NETWORK_LIST_MAX:
        raise VirError(ErrorCode.RPC, "maxnames > REMOTE_NETWORK_LIST_MAX", ErrorDomain.RPC)
    names = [n.name for n in _driver(call).list_networks() if n.active == active]
    return names[: max(limit, 0)]


async def connect_num_of_networks(call: Call, args: None) -> Any:
    return R.remote_connect_num_of_networks_ret(len(_names(call, True, R.REMOTE_NETWORK_LIST_MAX)))


async def connect_num_of_defined_networks(call: Call, args: None) -> Any:
    count = len(_names(call, False, R.REMOTE_NETWORK_LIST_MAX))
    return R.remote_connect_num_of_defined_networks_ret(count)


async def connect_list_networks(call: Call, args: Any) -> Any:
    return R.remote_connect_list_networks_ret(_names(call, True, args.maxnames))


async def connect_list_defined_networks(call: Call, args: Any) -> Any:
    return R.remote_connect_list_defined_networks_ret(_names(call, False, args.maxnames))


async def network_lookup_by_name(call: Call, args: Any) -> Any:
    return R.remote_network_lookup_by_name_ret(_handle(_driver(call).lookup_by_name(args.name)))


async def network_lookup_by_uuid(call: Call, args: Any) -> Any:
    return R.remote_network_lookup_by_uuid_ret(_handle(_driver(call).lookup_by_uuid(args.uuid)))


# -- definitions and life cycle ---------------------------------------------------------


async def network_define_xml(call: Call, args: Any) -> Any:
    return R.remote_network_define_xml_ret(_handle(_driver(call).define_xml(args.xml)))


async def network_define_xml_flags(call: Call, args: Any) -> Any:
    _check_flags(args.flags, 1 << 0, "networkDefineXMLFlags")  # VALIDATE
    net = _driver(call).define_xml(args.xml, args.flags)
    return R.remote_network_define_xml_flags_ret(_handle(net))


async def network_create_xml(call: Call, args: Any) -> Any:
    return R.remote_network_create_xml_ret(_handle(await _driver(call).create_xml(args.xml)))


async def network_create_xml_flags(call: Call, args: Any) -> Any:
    _check_flags(args.flags, 1 << 0, "networkCreateXMLFlags")  # VALIDATE
    net = await _driver(call).create_xml(args.xml, args.flags)
    return R.remote_network_create_xml_flags_ret(_handle(net))


async def network_undefine(call: Call, args: Any) -> None:
    _driver(call).undefine(_net(call, args.net))


async def network_create(call: Call, args: Any) -> None:
    await _driver(call).create(_net(call, args.net))


async def network_destroy(call: Call, args: Any) -> None:
    await _driver(call).destroy(_net(call, args.net))


async def network_update(call: Call, args: Any) -> None:
    _check_flags(args.flags, _UPDATE_FLAGS, "networkUpdate")
    await _driver(call).update(_net(call, args.net), args.command, args.section,
                               args.parentIndex, args.xml, args.flags)


async def network_set_autostart(call: Call, args: Any) -> None:
    _driver(call).set_autostart(_net(call, args.net), bool(args.autostart))


# -- facts ------------------------------------------------------------------------------


async def network_get_xml_desc(call: Call, args: Any) -> Any:
    _check_flags(args.flags, _XML_INACTIVE, "networkGetXMLDesc")
    xml = _net(call, args.net).xml(inactive=bool(args.flags & _XML_INACTIVE))
    return R.remote_network_get_xml_desc_ret(xml)


async def network_get_bridge_name(call: Call, args: Any) -> Any:
    net = _net(call, args.net)
    if not net.live.bridge:
        raise VirError(ErrorCode.INTERNAL_ERROR, f"internal error: network '{net.name}' "
                       "does not have a bridge name.", ErrorDomain.NETWORK)
    return R.remote_network_get_bridge_name_ret(net.live.bridge)


async def network_get_autostart(call: Call, args: Any) -> Any:
    return R.remote_network_get_autostart_ret(int(_net(call, args.net).autostart))


async def network_is_active(call: Call, args: Any) -> Any:
    return R.remote_network_is_active_ret(int(_net(call, args.net).active))


async def network_is_persistent(call: Call, args: Any) -> Any:
    return R.remote_network_is_persistent_ret(int(_net(call, args.net).persistent))


async def network_get_dhcp_leases(call: Call, args: Any) -> Any:
    _check_flags(args.flags, 0, "networkGetDHCPLeases")
    leases = _driver(call).leases(_net(call, args.net), args.mac)
    if len(leases) > R.REMOTE_NETWORK_DHCP_LEASES_MAX:
        raise VirError(ErrorCode.INTERNAL_ERROR, "internal error: Number of leases is "
                       f"{len(leases)}, which exceeds max limit: "
                       f"{R.REMOTE_NETWORK_DHCP_LEASES_MAX}", ErrorDomain.RPC)
    wire = [R.remote_network_dhcp_lease(x.iface, x.expirytime, x.type, x.mac, x.iaid, x.ipaddr,
                                        x.prefix, x.hostname, x.clientid) for x in leases]
    return R.remote_network_get_dhcp_leases_ret(wire if args.need_results else [], len(leases))


# -- ports ------------------------------------------------------------------------------


async def network_list_all_ports(call: Call, args: Any) -> Any:
    _check_flags(args.flags, 0, "networkListAllPorts")
    net = _net(call, args.network)
    if not net.active:
        raise VirError(ErrorCode.OPERATION_INVALID, "Requested operation is not valid: "
                       f"network '{net.name}' is not active", ErrorDomain.NETWORK)
    ports = list(net.ports.values())
    handles = [_port_handle(net, p) for p in ports] if args.need_results else []
    return R.remote_network_list_all_ports_ret(handles, len(ports))


async def network_port_lookup_by_uuid(call: Call, args: Any) -> Any:
    net = _net(call, args.network)
    port = _driver(call).port(net, args.uuid)
    return R.remote_network_port_lookup_by_uuid_ret(_port_handle(net, port))


async def network_port_create_xml(call: Call, args: Any) -> Any:
    _check_flags(args.flags, 0x3, "networkPortCreateXML")  # RECLAIM, VALIDATE
    net = _net(call, args.network)
    port = _driver(call).create_port(net, args.xml, args.flags)
    return R.remote_network_port_create_xml_ret(_port_handle(net, port))


async def network_port_get_xml_desc(call: Call, args: Any) -> Any:
    _check_flags(args.flags, 0, "networkPortGetXMLDesc")
    _, port = _port(call, args.port)
    return R.remote_network_port_get_xml_desc_ret(port.xml())


async def network_port_get_parameters(call: Call, args: Any) -> Any:
    """Only a port with bandwidth limits has parameters, and ours have none."""
    _check_flags(args.flags, 0, "networkPortGetParameters")
    _port(call, args.port)
    return R.remote_network_port_get_parameters_ret([], 0)


async def network_port_delete(call: Call, args: Any) -> None:
    _check_flags(args.flags, 0, "networkPortDelete")
    net, port = _port(call, args.port)
    _driver(call).delete_port(net, port)
