"""Domain calls of the REMOTE program: wire arguments in, driver call, wire reply out.

A domain handle a client sends is looked up by its UUID alone (the name and id
in it may be stale); the handles we send carry the current id, -1 when the
domain is not running.
"""

from __future__ import annotations

from typing import Any

from daemon.dispatch import Call
from daemon.remote._common import check_flags, dom_of, handle_of, rpc_limit
from drivers.qemu.domain import Domain
from protocol.programs import remote

R = remote().module


# -- lookups and lists ---------------------------------------------------------


async def domain_lookup_by_name(call: Call, args: Any) -> Any:
    return R.remote_domain_lookup_by_name_ret(handle_of(call.driver.lookup_by_name(args.name)))


async def domain_lookup_by_uuid(call: Call, args: Any) -> Any:
    return R.remote_domain_lookup_by_uuid_ret(handle_of(call.driver.lookup_by_uuid(args.uuid)))


async def domain_lookup_by_id(call: Call, args: Any) -> Any:
    return R.remote_domain_lookup_by_id_ret(handle_of(call.driver.lookup_by_id(args.id)))


async def connect_list_all_domains(call: Call, args: Any) -> Any:
    check_flags(args.flags, (1 << 16) - 1, "qemuConnectListAllDomains")
    doms = call.driver.list_domains(args.flags)
    handles = [handle_of(d) for d in doms] if args.need_results else []
    return R.remote_connect_list_all_domains_ret(handles, len(doms))


async def connect_list_domains(call: Call, args: Any) -> Any:
    rpc_limit(args.maxids, R.REMOTE_DOMAIN_LIST_MAX, "maxids > REMOTE_DOMAIN_LIST_MAX")
    return R.remote_connect_list_domains_ret(call.driver.active_ids()[: max(args.maxids, 0)])


async def connect_list_defined_domains(call: Call, args: Any) -> Any:
    rpc_limit(args.maxnames, R.REMOTE_DOMAIN_LIST_MAX, "maxnames > REMOTE_DOMAIN_LIST_MAX")
    names = call.driver.defined_names()[: max(args.maxnames, 0)]
    return R.remote_connect_list_defined_domains_ret(names)


async def connect_num_of_domains(call: Call, args: None) -> Any:
    return R.remote_connect_num_of_domains_ret(call.driver.num_of_domains())


async def connect_num_of_defined_domains(call: Call, args: None) -> Any:
    return R.remote_connect_num_of_defined_domains_ret(len(call.driver.defined_names()))


# -- definitions ---------------------------------------------------------------

_DEFINE_VALIDATE = 1 << 0


async def domain_define_xml(call: Call, args: Any) -> Any:
    return R.remote_domain_define_xml_ret(handle_of(await call.driver.define_xml(args.xml)))


async def domain_define_xml_flags(call: Call, args: Any) -> Any:
    check_flags(args.flags, _DEFINE_VALIDATE, "qemuDomainDefineXMLFlags")
    dom = await call.driver.define_xml(args.xml, args.flags)
    return R.remote_domain_define_xml_flags_ret(handle_of(dom))


async def domain_undefine(call: Call, args: Any) -> None:
    await call.driver.undefine(dom_of(call, args.dom))


# Managed save, snapshot and checkpoint metadata, NVRAM and TPM state: none of
# them exist here yet, so asking to remove or keep them is accepted as done.
_UNDEFINE_FLAGS = (1 << 7) - 1


async def domain_undefine_flags(call: Call, args: Any) -> None:
    check_flags(args.flags, _UNDEFINE_FLAGS, "qemuDomainUndefineFlags")
    await call.driver.undefine(dom_of(call, args.dom), args.flags)


async def domain_get_xml_desc(call: Call, args: Any) -> Any:
    check_flags(args.flags, 0xF, "qemuDomainGetXMLDesc")
    xml = call.driver.get_xml_desc(dom_of(call, args.dom), args.flags)
    return R.remote_domain_get_xml_desc_ret(xml)


# -- life cycle ------------------------------------------------------------------

_START_PAUSED = 1 << 0
_START_AUTODESTROY = 1 << 1
_START_BYPASS_CACHE = 1 << 2
_START_FORCE_BOOT = 1 << 3
_START_VALIDATE = 1 << 4
# Bypass-cache and force-boot only matter when restoring a managed save,
# which never exists here.
_START_FLAGS = _START_PAUSED | _START_AUTODESTROY | _START_BYPASS_CACHE | _START_FORCE_BOOT


def _autodestroy(call: Call, dom: Domain, flags: int) -> None:
    """A guest started with autodestroy ends with the connection that started it."""
    if flags & _START_AUTODESTROY:
        driver, id = call.driver, dom.id
        call.client.on_close.append(lambda _client: driver.destroy_soon(dom, id))


async def domain_create(call: Call, args: Any) -> None:
    await call.driver.create(dom_of(call, args.dom))


async def domain_create_with_flags(call: Call, args: Any) -> Any:
    check_flags(args.flags, _START_FLAGS, "qemuDomainCreateWithFlags")
    dom = dom_of(call, args.dom)
    await call.driver.create(dom, args.flags)
    _autodestroy(call, dom, args.flags)
    return R.remote_domain_create_with_flags_ret(handle_of(dom))


async def domain_create_xml(call: Call, args: Any) -> Any:
    check_flags(
        args.flags, _START_PAUSED | _START_AUTODESTROY | _START_VALIDATE, "qemuDomainCreateXML"
    )
    dom = await call.driver.create_xml(args.xml_desc, args.flags)
    _autodestroy(call, dom, args.flags)
    return R.remote_domain_create_xml_ret(handle_of(dom))


async def domain_destroy(call: Call, args: Any) -> None:
    await call.driver.destroy(dom_of(call, args.dom))


_DESTROY_GRACEFUL = 1 << 0
_DESTROY_REMOVE_LOGS = 1 << 1


async def domain_destroy_flags(call: Call, args: Any) -> None:
    check_flags(args.flags, _DESTROY_GRACEFUL | _DESTROY_REMOVE_LOGS, "qemuDomainDestroyFlags")
    await call.driver.destroy(dom_of(call, args.dom), args.flags)


async def domain_suspend(call: Call, args: Any) -> None:
    await call.driver.suspend(dom_of(call, args.dom))


async def domain_resume(call: Call, args: Any) -> None:
    await call.driver.resume(dom_of(call, args.dom))


# -- properties ----------------------------------------------------------------


async def domain_get_info(call: Call, args: Any) -> Any:
    info = call.driver.get_info(dom_of(call, args.dom))
    return R.remote_domain_get_info_ret(
        info.state, info.max_mem, info.memory, info.nr_virt_cpu, info.cpu_time
    )


async def domain_get_state(call: Call, args: Any) -> Any:
    check_flags(args.flags, 0, "qemuDomainGetState")
    state, reason = call.driver.get_state(dom_of(call, args.dom))
    return R.remote_domain_get_state_ret(state, reason)


async def domain_is_active(call: Call, args: Any) -> Any:
    return R.remote_domain_is_active_ret(int(dom_of(call, args.dom).active))


async def domain_is_persistent(call: Call, args: Any) -> Any:
    return R.remote_domain_is_persistent_ret(int(dom_of(call, args.dom).persistent))


async def domain_is_updated(call: Call, args: Any) -> Any:
    dom_of(call, args.dom)
    return R.remote_domain_is_updated_ret(0)


async def domain_get_os_type(call: Call, args: Any) -> Any:
    return R.remote_domain_get_os_type_ret(dom_of(call, args.dom).definition.os.type)


async def domain_get_max_memory(call: Call, args: Any) -> Any:
    return R.remote_domain_get_max_memory_ret(dom_of(call, args.dom).definition.memory)


async def domain_get_autostart(call: Call, args: Any) -> Any:
    return R.remote_domain_get_autostart_ret(int(call.driver.get_autostart(dom_of(call, args.dom))))


async def domain_set_autostart(call: Call, args: Any) -> None:
    call.driver.set_autostart(dom_of(call, args.dom), bool(args.autostart))


async def domain_has_managed_save_image(call: Call, args: Any) -> Any:
    check_flags(args.flags, 0, "qemuDomainHasManagedSaveImage")
    dom_of(call, args.dom)
    return R.remote_domain_has_managed_save_image_ret(0)


async def domain_get_security_label(call: Call, args: Any) -> Any:
    """Guests run without a security driver ("none"): the label is empty."""
    dom_of(call, args.dom)
    return R.remote_domain_get_security_label_ret(b"\0", 0)


async def domain_get_messages(call: Call, args: Any) -> Any:
    check_flags(args.flags, 0x3, "qemuDomainGetMessages")
    dom_of(call, args.dom)
    return R.remote_domain_get_messages_ret([])
