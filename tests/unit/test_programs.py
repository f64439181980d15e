"""protocol.programs: annotations, API names, procedure tables, the shipped programs."""

from __future__ import annotations

import pytest

from protocol import programs
from protocol.programs import AnnotationError, api_name, build_program, parse_annotation
from protocol.xdr import compile_text


@pytest.mark.parametrize("name,api", [
    ("DOMAIN_GET_XML_DESC", "virDomainGetXMLDesc"),
    ("DOMAIN_LOOKUP_BY_UUID", "virDomainLookupByUUID"),
    ("CONNECT_GET_URI", "virConnectGetURI"),
    ("NODE_GET_CPU_STATS", "virNodeGetCPUStats"),
    ("DOMAIN_GET_ID", "virDomainGetID"),
    ("DOMAIN_LOOKUP_BY_ID", "virDomainLookupByID"),
    ("DOMAIN_GET_OS_TYPE", "virDomainGetOSType"),
    ("DOMAIN_GET_VCPUS", "virDomainGetVcpus"),
    ("DOMAIN_FSFREEZE", "virDomainFSFreeze"),
    ("DOMAIN_GET_IOTHREAD_INFO", "virDomainGetIOThreadInfo"),
    ("NETWORK_GET_DHCP_LEASES", "virNetworkGetDHCPLeases"),
    ("NODE_DEVICE_LOOKUP_SCSI_HOST_BY_WWN", "virNodeDeviceLookupSCSIHostByWWN"),
    ("CONNECT_NUM_OF_NWFILTERS", "virConnectNumOfNWFilters"),
    ("DOMAIN_PM_WAKEUP", "virDomainPMWakeup"),
    ("INTERFACE_LOOKUP_BY_MAC_STRING", "virInterfaceLookupByMACString"),
    ("CONNECT_LIST_ALL_DOMAINS", "virConnectListAllDomains"),
    ("DOMAIN_SET_BLOCK_IO_TUNE", "virDomainSetBlockIoTune"),
    ("NODE_GET_SEV_INFO", "virNodeGetSEVInfo"),
])
def test_api_names(name, api):
    assert api_name(name) == api


def test_admin_api_prefix():
    assert api_name("SERVER_GET_THREADPOOL_PARAMETERS", "virAdm") == \
        "virAdmServerGetThreadPoolParameters"


def test_parse_annotation():
    assert parse_annotation(" plain prose ") == {}
    assert parse_annotation("") == {}
    got = parse_annotation(" @acl=domain:read,domain:write @acl=domain:save:VIR_X @ro @high "
                           "@aclfilter=domain:getattr @readstream @api=virFoo ")
    assert got == {"acl": ["domain:read", "domain:write", "domain:save:VIR_X"], "ro": True,
                   "high": True, "aclfilter": "domain:getattr", "readstream": True,
                   "api": "virFoo"}


@pytest.mark.parametrize("text", [
    "@bogus", "@ro=1", "@acl", "@acl=", "@ro words", "@api=a @api=b", "@readstream @writestream",
])
def test_bad_annotations(text):
    with pytest.raises(AnnotationError):
        parse_annotation(text)


DEFS = """
struct test_foo_bar_args { int a; };
struct test_foo_bar_ret { int b; };
struct test_get_thing_ret { string s<>; };
struct test_thing_event_msg { int c; };
enum test_procedure {
    TEST_PROC_FOO_BAR = 1,          /* @acl=domain:read @ro @high */
    TEST_PROC_GET_THING = 2,        /* an ordinary comment */
    TEST_PROC_THING_EVENT = 3,      /* @event */
    TEST_PROC_DOWNLOAD = 4,         /* @readstream @acl=domain:x @api=virThingDownload */
    TEST_PROC_UPLOAD = 5            /* @writestream @aclfilter=domain:getattr */
};
"""


@pytest.fixture(scope="module")
def prog():
    return build_program("TEST", 0x1234, 2, compile_text(DEFS, "ptest"), "test")


def test_program_table(prog):
    assert (prog.name, prog.number, prog.version) == ("TEST", 0x1234, 2)
    assert sorted(prog.procedures) == [1, 2, 3, 4, 5]
    p = prog.procedures[1]
    assert (p.number, p.name, p.api) == (1, "FOO_BAR", "virFooBar")
    assert p.args is prog.module.test_foo_bar_args_codec
    assert p.ret is prog.module.test_foo_bar_ret_codec
    assert (p.acl, p.readonly_ok, p.high_priority, p.stream, p.event) == \
        (("domain:read",), True, True, None, False)


def test_missing_codecs_are_none(prog):
    p = prog.procedures[2]
    assert p.args is None and p.ret is prog.module.test_get_thing_ret_codec
    assert (p.acl, p.readonly_ok, p.high_priority) == ((), False, False)


def test_event_uses_msg_type(prog):
    p = prog.procedures[3]
    assert p.event and p.args is prog.module.test_thing_event_msg_codec and p.ret is None


def test_streams_and_overrides(prog):
    assert prog.procedures[4].stream == "read"
    assert prog.procedures[4].api == "virThingDownload"
    assert prog.procedures[5].stream == "write"
    assert prog.procedures[5].aclfilter == "domain:getattr"


def test_codecs_resolve_lazily():
    module = compile_text(DEFS, "plazy")
    prog = build_program("TEST", 1, 1, module, "test")
    assert "test_foo_bar_args" not in vars(module)
    prog.procedures[1].args  # noqa: B018
    assert "test_foo_bar_args" in vars(module)


def test_bad_member_prefix():
    module = compile_text("enum test_procedure { OTHER_PROC_X = 1 };", "pbad")
    with pytest.raises(AnnotationError, match="does not start with TEST_PROC_"):
        build_program("TEST", 1, 1, module, "test")


def test_two_annotation_comments_are_an_error():
    text = "enum test_procedure { TEST_PROC_X = 1 /* @ro */ /* @high */, TEST_PROC_Y = 2 };"
    with pytest.raises(AnnotationError, match="TEST_PROC_X has two annotation comments"):
        build_program("TEST", 1, 1, compile_text(text, "pbad3"), "test")


def test_bad_annotation_names_the_member():
    module = compile_text("enum test_procedure { TEST_PROC_X = 1 /* @nope */ };", "pbad2")
    with pytest.raises(AnnotationError, match="TEST_PROC_X"):
        build_program("TEST", 1, 1, module, "test")


# -- shipped programs ------------------------------------------------------------------

def test_keepalive():
    ka = programs.keepalive()
    assert ka is programs.keepalive()
    assert (ka.number, ka.version) == (0x6B656570, 1)
    assert {n: (p.name, p.args, p.ret) for n, p in ka.procedures.items()} == {
        1: ("PING", None, None), 2: ("PONG", None, None)}


def test_virnet_header():
    v = programs.virnet()
    h = v.virNetMessageHeader(0x20008086, 1, 16, v.VIR_NET_REPLY, 9, v.VIR_NET_ERROR)
    data = v.virNetMessageHeader_codec.encode(h)
    assert data == bytes.fromhex("20008086 00000001 00000010 00000001 00000009 00000001")
    assert v.VIR_NET_MESSAGE_HEADER_MAX == len(data)
    assert v.VIR_NET_STREAM_HOLE == 6 and v.VIR_NET_CONTINUE == 2
    hole = v.virNetStreamHole_codec.encode(v.virNetStreamHole(1 << 33, 0))
    assert hole == bytes.fromhex("0000000200000000 00000000")


def _have(*names):
    return all((programs.DEFS / n).exists() for n in names)


def _has_procedures(name):
    return "_procedure" in (programs.DEFS / name).read_text() if _have(name) else False


@pytest.mark.skipif(not _has_procedures("remote.x"), reason="remote_procedure not written yet")
def test_remote_program():
    rp = programs.remote()
    assert (rp.name, rp.number, rp.version) == ("REMOTE", 0x20008086, 1)
    p = rp.procedures[16]
    assert (p.name, p.api) == ("DOMAIN_GET_INFO", "virDomainGetInfo")
    assert p.args is rp.module.remote_domain_get_info_args_codec
    assert p.ret is rp.module.remote_domain_get_info_ret_codec
    assert rp.procedures[1].name == "CONNECT_OPEN"


@pytest.mark.skipif(not _have("libvirt.x", "remote.x", "remote_domain.x", "qemu.x", "admin.x")
                    or not _has_procedures("remote.x"), reason="definitions not all written yet")
def test_load_all():
    progs = programs.load_all()
    assert [p.name for p in progs] == ["REMOTE", "QEMU", "ADMIN", "KEEPALIVE"]
    qemu = programs.qemu()
    assert qemu.procedures[1].api == "virDomainQemuMonitorCommand"
    for prog in progs:
        for proc in prog.procedures.values():
            proc.args, proc.ret  # noqa: B018 - every named codec resolves
