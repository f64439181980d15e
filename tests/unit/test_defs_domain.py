"""Wire layouts of the domain types in protocol/defs/remote_domain.x.

The expected bytes are built by hand from RFC 4506 and rpcgen's rules, so a
mistake in a definition (a field out of order, a wrong bound, a lost
optional marker) shows up as a byte mismatch rather than a silent change.
"""

import re
from pathlib import Path

import pytest
from xdr_bytes import UUID, i32, s, u32, u64

from protocol.xdr import XDRError, compile_files

DEFS = Path(__file__).resolve().parents[2] / "protocol" / "defs"


@pytest.fixture(scope="module")
def m():
    paths = [str(DEFS / n) for n in ("libvirt.x", "remote.x", "remote_domain.x")]
    return compile_files(paths, "test_defs_domain")


def dom_bytes(name: str = "vm", id_: int = 3) -> bytes:
    return s(name) + UUID + i32(id_)


def domain_struct_names() -> list[str]:
    text = (DEFS / "remote_domain.x").read_text()
    return re.findall(r"^struct (\w+) \{", text, flags=re.M)


def test_every_domain_type_compiles_to_a_codec(m):
    names = domain_struct_names()
    # libvirt 9.0 has 376 domain types besides the handles kept in remote.x.
    assert len(names) == len(set(names)) == 376
    assert all("domain" in n for n in names)
    missing = [n for n in names if not hasattr(m, n + "_codec")]
    assert missing == []


def test_no_type_is_defined_in_both_files():
    common = set(re.findall(r"^(?:struct|union) (\w+)", (DEFS / "remote.x").read_text(), flags=re.M))
    assert common.isdisjoint(domain_struct_names())


def test_get_info_ret_widens_char_and_short(m):
    v = m.remote_domain_get_info_ret(1, 131072, 65536, 2, 5)
    want = u32(1) + u64(131072) + u64(65536) + u32(2) + u64(5)
    assert m.remote_domain_get_info_ret_codec.encode(v) == want
    assert m.remote_domain_get_info_ret_codec.decode(want) == v


def test_security_label_is_an_array_of_4_byte_chars(m):
    v = m.remote_domain_get_security_label_ret(b"ab\0", 1)
    want = u32(3) + u32(ord("a")) + u32(ord("b")) + u32(0) + i32(1)
    assert m.remote_domain_get_security_label_ret_codec.encode(v) == want
    lst = m.remote_domain_get_security_label_list_ret([v, v], 2)
    assert m.remote_domain_get_security_label_list_ret_codec.encode(lst) == u32(2) + want + want + i32(2)


def test_stats_record_nests_typed_param_unions(m):
    dom = m.remote_nonnull_domain("vm", UUID, 3)
    rec = m.remote_domain_stats_record(dom, [
        m.remote_typed_param("state.state", (m.VIR_TYPED_PARAM_INT, 1)),
        m.remote_typed_param("balloon.current", (m.VIR_TYPED_PARAM_ULLONG, 131072)),
        m.remote_typed_param("block.0.name", (m.VIR_TYPED_PARAM_STRING, "vda")),
    ])
    want_rec = (dom_bytes() + u32(3)
                + s("state.state") + i32(1) + i32(1)
                + s("balloon.current") + i32(4) + u64(131072)
                + s("block.0.name") + i32(7) + s("vda"))
    ret = m.remote_connect_get_all_domain_stats_ret([rec, rec])
    got = m.remote_connect_get_all_domain_stats_ret_codec.encode(ret)
    assert got == u32(2) + want_rec + want_rec
    assert m.remote_connect_get_all_domain_stats_ret_codec.decode(got) == ret


def test_disk_change_event_keeps_optional_paths(m):
    msg = m.remote_domain_event_disk_change_msg(m.remote_nonnull_domain("vm", UUID, 3), None, "/b", "ide0", 1)
    want = dom_bytes() + u32(0) + u32(1) + s("/b") + s("ide0") + i32(1)
    cb = m.remote_domain_event_callback_disk_change_msg(9, msg)
    assert m.remote_domain_event_callback_disk_change_msg_codec.encode(cb) == i32(9) + want


def test_graphics_event_addresses_and_identities(m):
    addr = m.remote_domain_event_graphics_address(0, "127.0.0.1", "5900")
    ident = m.remote_domain_event_graphics_identity("x509dname", "CN=a")
    msg = m.remote_domain_event_graphics_msg(m.remote_nonnull_domain("vm", UUID, 3), 1, addr, addr, "vnc", [ident])
    a = i32(0) + s("127.0.0.1") + s("5900")
    want = dom_bytes() + i32(1) + a + a + s("vnc") + u32(1) + s("x509dname") + s("CN=a")
    assert m.remote_domain_event_graphics_msg_codec.encode(msg) == want


def test_get_vcpus_ret_pads_cpumaps(m):
    info = m.remote_vcpu_info(0, 1, 40, 1)
    v = m.remote_domain_get_vcpus_ret([info], b"\x03")
    want = u32(1) + u32(0) + i32(1) + u64(40) + i32(1) + u32(1) + b"\x03\0\0\0"
    assert m.remote_domain_get_vcpus_ret_codec.encode(v) == want


def test_interface_addresses_nest_two_arrays(m):
    ip = m.remote_domain_ip_addr(0, "10.0.0.2", 24)
    iface = m.remote_domain_interface("eth0", None, [ip, ip])
    ret = m.remote_domain_interface_addresses_ret([iface])
    one_ip = i32(0) + s("10.0.0.2") + u32(24)
    want = u32(1) + s("eth0") + u32(0) + u32(2) + one_ip + one_ip
    assert m.remote_domain_interface_addresses_ret_codec.encode(ret) == want


def test_callback_register_takes_an_optional_domain(m):
    codec = m.remote_connect_domain_event_callback_register_any_args_codec
    assert codec.encode(m.remote_connect_domain_event_callback_register_any_args(0, None)) == i32(0) + u32(0)
    one = m.remote_connect_domain_event_callback_register_any_args(5, m.remote_nonnull_domain("vm", UUID, 3))
    assert codec.encode(one) == i32(5) + u32(1) + dom_bytes()


def test_migrate_params_carry_cookie_after_params(m):
    v = m.remote_domain_migrate_prepare3_params_args(
        [m.remote_typed_param("bandwidth", (m.VIR_TYPED_PARAM_ULLONG, 10))], b"cookie", 0)
    want = u32(1) + s("bandwidth") + i32(4) + u64(10) + u32(6) + b"cookie\0\0" + u32(0)
    assert m.remote_domain_migrate_prepare3_params_args_codec.encode(v) == want


def test_snapshot_list_returns_handles_and_count(m):
    snap = m.remote_nonnull_domain_snapshot("s1", m.remote_nonnull_domain("vm", UUID, 3))
    ret = m.remote_domain_list_all_snapshots_ret([snap], 1)
    assert m.remote_domain_list_all_snapshots_ret_codec.encode(ret) == u32(1) + s("s1") + dom_bytes() + i32(1)


def test_bounds_are_enforced(m):
    dom = dom_bytes()
    keys = u32(17) + b"".join(u32(k) for k in range(17))
    with pytest.raises(XDRError):
        m.remote_domain_send_key_args_codec.decode(dom + u32(1) + u32(0) + keys + u32(0))
    ok = u32(16) + b"".join(u32(k) for k in range(16))
    v = m.remote_domain_send_key_args_codec.decode(dom + u32(1) + u32(0) + ok + u32(0))
    assert v.keycodes == list(range(16))
