"""protocol/defs/remote.x: the REMOTE program's shared and non-domain types and its table.

Expected bytes are written out by hand from RFC 4506 and rpcgen's rules, so a
field out of order, a wrong bound or a lost optional marker fails loudly.
The read-only facts below were observed on a read-only connection to the
reference libvirtd 9.0.
"""

import re
import struct
from pathlib import Path

import pytest
from xdr_bytes import UUID, i32, i64, s, u32, u64

from protocol import programs
from protocol.xdr import XDRError

DEFS = Path(__file__).resolve().parents[2] / "protocol" / "defs"


@pytest.fixture(scope="module")
def prog():
    return programs.remote()


@pytest.fixture(scope="module")
def m(prog):
    return prog.module


def by_name(prog):
    return {p.name: p for p in prog.procedures.values()}


# --- the procedure table -------------------------------------------------------------

def test_numbers_run_from_1_to_443(prog, m):
    assert sorted(prog.procedures) == list(range(1, 444))
    assert (m.REMOTE_PROGRAM, m.REMOTE_PROTOCOL_VERSION) == (0x20008086, 1)
    assert m.REMOTE_PROC_DOMAIN_FD_ASSOCIATE == 443


def test_events_are_the_server_to_client_messages(prog):
    events = {p.name for p in prog.procedures.values() if p.event}
    pattern = re.compile(r"^(DOMAIN|NETWORK|STORAGE_POOL|NODE_DEVICE|SECRET|CONNECT)_EVENT_")
    assert events == {p.name for p in prog.procedures.values() if pattern.match(p.name)}
    assert len(events) == 51
    for name in events:
        p = by_name(prog)[name]
        assert p.args is not None and p.ret is None and not p.readonly_ok and not p.acl


# Calls whose arguments are void in libvirt: everything else has a *_args type.
VOID_ARGS = {
    "CONNECT_CLOSE", "CONNECT_GET_TYPE", "CONNECT_GET_VERSION", "NODE_GET_INFO",
    "CONNECT_GET_CAPABILITIES", "CONNECT_NUM_OF_DEFINED_DOMAINS", "CONNECT_NUM_OF_DEFINED_NETWORKS",
    "CONNECT_NUM_OF_DOMAINS", "CONNECT_NUM_OF_NETWORKS", "CONNECT_GET_HOSTNAME", "AUTH_LIST",
    "AUTH_SASL_INIT", "AUTH_POLKIT", "CONNECT_NUM_OF_STORAGE_POOLS",
    "CONNECT_NUM_OF_DEFINED_STORAGE_POOLS", "NODE_GET_FREE_MEMORY", "CONNECT_DOMAIN_EVENT_REGISTER",
    "CONNECT_DOMAIN_EVENT_DEREGISTER", "CONNECT_GET_URI", "NODE_GET_SECURITY_MODEL",
    "CONNECT_NUM_OF_INTERFACES", "CONNECT_NUM_OF_DEFINED_INTERFACES", "CONNECT_NUM_OF_SECRETS",
    "CONNECT_IS_SECURE", "CONNECT_GET_LIB_VERSION", "CONNECT_NUM_OF_NWFILTERS",
    "CONNECT_REGISTER_CLOSE_CALLBACK", "CONNECT_UNREGISTER_CLOSE_CALLBACK",
}


def test_every_call_has_its_argument_type(prog):
    void = {p.name for p in prog.procedures.values() if p.args is None}
    assert void == VOID_ARGS


def test_later_releases_are_left_out(m):
    for name in ("remote_network_set_metadata_args", "remote_node_device_update_args",
                 "remote_network_event_callback_metadata_change_msg"):
        assert not hasattr(m, name + "_codec")


# Observed with a read-only connection to libvirtd 9.0.
READONLY_FACTS = {
    "CONNECT_OPEN": True, "AUTH_LIST": True, "CONNECT_GET_CAPABILITIES": True,
    "DOMAIN_GET_XML_DESC": True, "CONNECT_LIST_ALL_DOMAINS": True, "CONNECT_SET_IDENTITY": True,
    "CONNECT_COMPARE_CPU": True, "DOMAIN_MIGRATE_GET_MAX_DOWNTIME": True,
    "DOMAIN_MIGRATE_GET_COMPRESSION_CACHE": True, "CONNECT_NETWORK_EVENT_REGISTER_ANY": True,
    "NODE_DEVICE_IS_ACTIVE": True, "STORAGE_POOL_GET_INFO": True, "SECRET_GET_XML_DESC": True,
    "DOMAIN_SET_SCHEDULER_PARAMETERS": False, "NODE_GET_SEV_INFO": False,
    "DOMAIN_GET_LAUNCH_SECURITY_INFO": False, "NODE_DEVICE_GET_AUTOSTART": False,
    "CONNECT_GET_DOMAIN_CAPABILITIES": False, "DOMAIN_MIGRATE_GET_MAX_SPEED": False,
    "DOMAIN_GET_HOSTNAME": False, "DOMAIN_GET_TIME": False, "SECRET_GET_VALUE": False,
    "STORAGE_VOL_DOWNLOAD": False, "DOMAIN_SAVE_IMAGE_GET_XML_DESC": False,
    "CONNECT_FIND_STORAGE_POOL_SOURCES": False, "DOMAIN_SCREENSHOT": False,
}


@pytest.mark.parametrize("name,allowed", sorted(READONLY_FACTS.items()))
def test_read_only_connection_rules(prog, name, allowed):
    assert by_name(prog)[name].readonly_ok is allowed


def test_annotations_carry_libvirts_facts(prog):
    p = by_name(prog)
    assert p["CONNECT_OPEN"].acl == ("connect:getattr",) and p["CONNECT_OPEN"].high_priority
    assert p["CONNECT_CLOSE"].acl == () and p["CONNECT_CLOSE"].readonly_ok
    assert p["CONNECT_LIST_ALL_NETWORKS"].aclfilter == "network:getattr"
    assert p["NETWORK_UPDATE"].acl == (
        "network:write",
        "network:save:!VIR_NETWORK_UPDATE_AFFECT_CONFIG|VIR_NETWORK_UPDATE_AFFECT_LIVE",
        "network:save:VIR_NETWORK_UPDATE_AFFECT_CONFIG")
    assert p["DOMAIN_GET_XML_DESC"].acl == (
        "domain:read", "domain:read_secure:VIR_DOMAIN_XML_SECURE",
        "domain:read_secure:VIR_DOMAIN_XML_MIGRATABLE")
    assert p["STORAGE_VOL_UPLOAD"].stream == "write"
    assert p["STORAGE_VOL_DOWNLOAD"].stream == "read"
    assert p["DOMAIN_OPEN_CONSOLE"].stream == "read"
    assert p["DOMAIN_MIGRATE_PREPARE_TUNNEL3_PARAMS"].stream == "write"
    assert sum(x.stream is not None for x in prog.procedures.values()) == 8
    assert sum(x.high_priority for x in prog.procedures.values()) == 184


def test_api_names(prog):
    p = by_name(prog)
    assert p["CONNECT_LIST_ALL_NWFILTERS"].api == "virConnectListAllNWFilters"
    assert p["NODE_DEVICE_LOOKUP_SCSI_HOST_BY_WWN"].api == "virNodeDeviceLookupSCSIHostByWWN"
    assert p["NETWORK_GET_DHCP_LEASES"].api == "virNetworkGetDHCPLeases"
    assert p["NODE_DEVICE_DETTACH"].api == "virNodeDeviceDettach"
    assert p["CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY"].api == "virConnectDomainEventRegisterAny"
    assert p["STORAGE_VOL_GET_INFO_FLAGS"].api == "virStorageVolGetInfoFlags"


def test_only_the_shared_handles_mention_domains_here():
    text = (DEFS / "remote.x").read_text()
    names = re.findall(r"^(?:struct|union|enum) (\w+)", text, flags=re.M)
    names += re.findall(r"^typedef [\w ]+?\**(\w+)(?:\[|<|;)", text, flags=re.M)
    assert len(names) == len(set(names))
    assert {n for n in names if "domain" in n} == {
        "remote_nonnull_domain", "remote_nonnull_domain_checkpoint",
        "remote_nonnull_domain_snapshot", "remote_domain"}


# --- wire layouts ----------------------------------------------------------------------

def test_handles(m):
    net = m.remote_nonnull_network("default", UUID)
    assert m.remote_nonnull_network_codec.encode(net) == s("default") + UUID
    port = m.remote_nonnull_network_port(net, UUID[::-1])
    assert m.remote_nonnull_network_port_codec.encode(port) == s("default") + UUID + UUID[::-1]
    vol = m.remote_nonnull_storage_vol("pool", "a.img", "/p/a.img")
    assert m.remote_nonnull_storage_vol_codec.encode(vol) == s("pool") + s("a.img") + s("/p/a.img")
    sec = m.remote_nonnull_secret(UUID, 1, "/dev/x")
    assert m.remote_nonnull_secret_codec.encode(sec) == UUID + i32(1) + s("/dev/x")
    dom = m.remote_nonnull_domain("vm", UUID, -1)
    snap = m.remote_nonnull_domain_snapshot("s1", dom)
    assert m.remote_nonnull_domain_snapshot_codec.encode(snap) == s("s1") + s("vm") + UUID + i32(-1)
    with pytest.raises(XDRError):
        m.remote_uuid_codec.decode(UUID[:15])


def test_error_body(m):
    err = m.remote_error(42, 10, "Domain not found", 2, None, "a", None, None, -1, -1,
                         m.remote_nonnull_network("n", UUID))
    want = (i32(42) + i32(10) + u32(1) + s("Domain not found") + i32(2) + u32(0)
            + u32(1) + s("a") + u32(0) + u32(0) + i32(-1) + i32(-1) + u32(1) + s("n") + UUID)
    assert m.remote_error_codec.encode(err) == want
    assert m.remote_error_codec.decode(want) == err


@pytest.mark.parametrize("tag,value,body", [
    (1, -2, i32(-2)), (2, 7, u32(7)), (3, -(1 << 40), i64(-(1 << 40))),
    (4, 1 << 63, u64(1 << 63)), (5, 0.5, struct.pack(">d", 0.5)), (6, 1, i32(1)),
    (7, "x", s("x")),
])
def test_typed_param_arms(m, tag, value, body):
    p = m.remote_typed_param("field", (tag, value))
    want = s("field") + i32(tag) + body
    assert m.remote_typed_param_codec.encode(p) == want
    assert m.remote_typed_param_codec.decode(want) == p


def test_typed_param_rejects_unknown_type(m):
    with pytest.raises(XDRError):
        m.remote_typed_param_codec.decode(s("f") + i32(8) + u32(0))


def test_node_info_model_is_rpcgens_fixed_char_array(m):
    # char model[32]: 32 chars, each in its own 4-byte unit.
    model = b"x86_64".ljust(32, b"\0")
    v = m.remote_node_get_info_ret(model, 1 << 20, 4, 2600, 1, 1, 2, 2)
    want = b"".join(u32(c) for c in model) + u64(1 << 20) + i32(4) + i32(2600) + i32(1) + i32(1) + i32(2) + i32(2)
    assert m.remote_node_get_info_ret_codec.encode(v) == want
    assert m.remote_node_get_info_ret_codec.decode(want) == v


def test_pool_and_volume_info_widen_chars(m):
    v = m.remote_storage_pool_get_info_ret(2, 10, 4, 6)
    assert m.remote_storage_pool_get_info_ret_codec.encode(v) == u32(2) + u64(10) + u64(4) + u64(6)
    w = m.remote_storage_vol_get_info_ret(1, 10, 4)
    assert m.remote_storage_vol_get_info_ret_codec.encode(w) == i32(1) + u64(10) + u64(4)


def test_auth(m):
    lst = m.remote_auth_list_ret([m.REMOTE_AUTH_NONE, m.REMOTE_AUTH_POLKIT])
    assert m.remote_auth_list_ret_codec.encode(lst) == u32(2) + i32(0) + i32(2)
    with pytest.raises(XDRError):
        m.remote_auth_list_ret_codec.decode(u32(1) + i32(3))          # not an auth type
    with pytest.raises(XDRError):
        m.remote_auth_list_ret_codec.decode(u32(21) + i32(0) * 21)     # over the list bound
    # SASL data is rpcgen's char array: one 4-byte unit per byte.
    step = m.remote_auth_sasl_step_args(0, b"ok")
    assert m.remote_auth_sasl_step_args_codec.encode(step) == i32(0) + u32(2) + u32(ord("o")) + u32(ord("k"))


def test_dhcp_lease(m):
    lease = m.remote_network_dhcp_lease("virbr0", 1700000000, 0, "52:54:00:00:00:01", None,
                                        "192.168.122.5", 24, "guest", None)
    want = (s("virbr0") + i64(1700000000) + i32(0) + u32(1) + s("52:54:00:00:00:01")
            + u32(0) + s("192.168.122.5") + u32(24) + u32(1) + s("guest") + u32(0))
    assert m.remote_network_dhcp_lease_codec.encode(lease) == want
    assert m.remote_network_dhcp_lease_codec.decode(want) == lease


def test_list_bounds_are_enforced(m):
    cpus = m.remote_connect_baseline_cpu_args(["<cpu/>"] * 256, 0)
    data = m.remote_connect_baseline_cpu_args_codec.encode(cpus)
    assert m.remote_connect_baseline_cpu_args_codec.decode(data) == cpus
    over = u32(257) + s("<cpu/>") * 257 + u32(0)
    with pytest.raises(XDRError):
        m.remote_connect_baseline_cpu_args_codec.decode(over)
    stats = u32(17) + (s("user") + u64(1)) * 17 + i32(17)
    with pytest.raises(XDRError):
        m.remote_node_get_cpu_stats_ret_codec.decode(stats)


def test_secret_value_is_opaque(m):
    args = m.remote_secret_set_value_args(m.remote_nonnull_secret(UUID, 0, ""), b"\x00\xff\x01", 0)
    want = UUID + i32(0) + s("") + u32(3) + b"\x00\xff\x01\x00" + u32(0)
    assert m.remote_secret_set_value_args_codec.encode(args) == want


def test_event_messages(m):
    net = m.remote_nonnull_network("n", UUID)
    ev = m.remote_network_event_lifecycle_msg(5, net, 2, 1)
    assert m.remote_network_event_lifecycle_msg_codec.encode(ev) == i32(5) + s("n") + UUID + i32(2) + i32(1)
    up = m.remote_node_device_event_update_msg(7, m.remote_nonnull_node_device("pci_0"))
    assert m.remote_node_device_event_update_msg_codec.encode(up) == i32(7) + s("pci_0")
    closed = m.remote_connect_event_connection_closed_msg(1)
    assert m.remote_connect_event_connection_closed_msg_codec.encode(closed) == i32(1)
