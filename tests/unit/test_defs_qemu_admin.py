"""Wire layouts and procedure tables of protocol/defs/qemu.x and admin.x.

Expected bytes are written out by hand (RFC 4506), so a field out of order,
a lost optional marker or a wrong bound shows up as a mismatch.
"""


import pytest
from xdr_bytes import UUID, i32, i64, s, u32, u64

from protocol import programs
from protocol.xdr import XDRError


@pytest.fixture(scope="module")
def qemu():
    return programs.qemu()


@pytest.fixture(scope="module")
def admin():
    return programs.admin()


def test_qemu_procedure_table(qemu) -> None:
    p = qemu.procedures
    assert (qemu.number, qemu.version) == (0x20008087, 1)
    assert sorted(p) == list(range(1, 8))
    assert p[1].api == "virDomainQemuMonitorCommand"
    assert p[2].acl == ("domain:start", "domain:write")
    assert p[4].api == "virConnectDomainQemuMonitorEventRegister"
    assert p[4].aclfilter == "domain:getattr" and p[4].high_priority
    assert p[5].high_priority and p[5].ret is None
    assert p[6].event and p[6].args is not None and p[6].ret is None
    assert p[7].api == "virDomainQemuMonitorCommandWithFiles"
    assert not any(proc.readonly_ok for proc in p.values())


def test_qemu_monitor_command(qemu) -> None:
    m = qemu.module
    dom = m.remote_nonnull_domain("vm", UUID, 3)
    args = m.qemu_domain_monitor_command_args(dom, '{"execute":"stop"}', 1)
    wire = s("vm") + UUID + i32(3) + s('{"execute":"stop"}') + u32(1)
    assert m.qemu_domain_monitor_command_args_codec.encode(args) == wire
    assert m.qemu_domain_monitor_command_args_codec.decode(wire) == args


def test_qemu_agent_command_and_optional_result(qemu) -> None:
    m = qemu.module
    dom = m.remote_nonnull_domain("vm", UUID, -1)
    args = m.qemu_domain_agent_command_args(dom, "{}", -2, 0)
    assert m.qemu_domain_agent_command_args_codec.encode(args) == (
        s("vm") + UUID + i32(-1) + s("{}") + i32(-2) + u32(0)
    )
    codec = m.qemu_domain_agent_command_ret_codec
    assert codec.encode(m.qemu_domain_agent_command_ret(None)) == u32(0)
    assert codec.decode(u32(1) + s("ok")).result == "ok"


def test_qemu_event_register_and_message(qemu) -> None:
    m = qemu.module
    reg = m.qemu_connect_domain_monitor_event_register_args(None, None, 0)
    assert m.qemu_connect_domain_monitor_event_register_args_codec.encode(reg) == u32(0) * 3
    msg = m.qemu_domain_monitor_event_msg(
        7, m.remote_nonnull_domain("vm", UUID, 10), "STOP", 1795641497, 225056, None
    )
    wire = (i32(7) + s("vm") + UUID + i32(10) + s("STOP")
            + u64(1795641497) + u32(225056) + u32(0))
    assert m.qemu_domain_monitor_event_msg_codec.encode(msg) == wire
    assert m.qemu_domain_monitor_event_msg_codec.decode(wire) == msg


def test_admin_procedure_table(admin) -> None:
    p = admin.procedures
    assert (admin.number, admin.version) == (0x06900690, 1)
    assert sorted(p) == list(range(1, 20))
    assert p[6].api == "virAdmServerGetThreadPoolParameters"
    assert p[18].api == "virAdmServerUpdateTlsFiles"
    assert p[19].api == "virAdmConnectSetDaemonTimeout"
    assert p[2].args is None and p[2].ret is None
    assert p[3].args is None and p[3].ret is not None
    assert all(proc.acl == () and not proc.event for proc in p.values())


def test_admin_typed_params(admin) -> None:
    m = admin.module
    ret = m.admin_server_get_threadpool_parameters_ret([
        m.admin_typed_param("minWorkers", (m.VIR_TYPED_PARAM_UINT, 5)),
        m.admin_typed_param("name", (m.VIR_TYPED_PARAM_STRING, "x")),
    ])
    wire = (u32(2) + s("minWorkers") + i32(2) + u32(5) + s("name") + i32(7) + s("x"))
    codec = m.admin_server_get_threadpool_parameters_ret_codec
    assert codec.encode(ret) == wire
    assert codec.decode(wire) == ret
    too_many = u32(m.ADMIN_SERVER_THREADPOOL_PARAMETERS_MAX + 1)
    with pytest.raises(XDRError):
        codec.decode(too_many)


def test_admin_client_handle(admin) -> None:
    m = admin.module
    clnt = m.admin_nonnull_client(m.admin_nonnull_server("libvirtd"), 42, -5, 1)
    wire = s("libvirtd") + u64(42) + i64(-5) + u32(1)
    assert m.admin_nonnull_client_codec.encode(clnt) == wire
    lookup = m.admin_server_lookup_client_args(clnt.srv, 42, 0)
    codec = m.admin_server_lookup_client_args_codec
    assert codec.encode(lookup) == s("libvirtd") + u64(42) + u32(0)


def test_admin_logging_strings(admin) -> None:
    m = admin.module
    codec = m.admin_connect_get_logging_filters_ret_codec
    assert codec.decode(u32(0) + u32(0)) == m.admin_connect_get_logging_filters_ret(None, 0)
    outputs = m.admin_connect_get_logging_outputs_ret_codec
    assert outputs.decode(s("1:stderr") + u32(1)).outputs == "1:stderr"
    # Not optional: a zero word is an empty string, not an absent one.
    assert outputs.decode(u32(0) + u32(0)).outputs == ""
