"""The real REMOTE definitions compile, and known libvirt layouts encode to known bytes."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from protocol.xdr import XDRError, compile_files

DEFS = Path(__file__).resolve().parents[2] / "protocol" / "defs"
UUID = bytes.fromhex("6ba7b8109dad11d180b400c04fd430c8")


@pytest.fixture(scope="module")
def r():
    files = [DEFS / n for n in ("libvirt.x", "remote.x", "remote_domain.x")]
    if not all(f.exists() for f in files):
        pytest.skip("remote definitions not present yet")
    module = compile_files(files, "test_remote", cache=False)
    module.__xdr_materialize_all__()  # every type's generated code compiles
    return module


def test_whole_remote_unit_compiles(r):
    assert len(r.__xdr_types__) > 500
    assert r.REMOTE_STRING_MAX == 4194304
    assert r.VIR_UUID_BUFLEN == 16


def test_nonnull_domain(r):
    dom = r.remote_nonnull_domain("vm1", UUID, 7)
    data = r.remote_nonnull_domain_codec.encode(dom)
    assert data == b"\0\0\0\3vm1\0" + UUID + b"\0\0\0\7"
    assert r.remote_nonnull_domain_codec.decode(data) == dom


def test_node_get_info_ret_model_is_32_ints(r):
    ret = r.remote_node_get_info_ret(b"x86_64" + bytes(26), 16 << 20, 8, 2400, 1, 1, 4, 2)
    data = r.remote_node_get_info_ret_codec.encode(ret)
    assert len(data) == 128 + 8 + 6 * 4
    assert data[:24] == b"\0\0\0x\0\0\0\x38\0\0\0\x36\0\0\0_\0\0\0\x36\0\0\0\x34"
    assert data[128:] == struct.pack(">Qiiiiii", 16 << 20, 8, 2400, 1, 1, 4, 2)
    assert r.remote_node_get_info_ret_codec.decode(data) == ret


def test_domain_get_info_ret(r):
    ret = r.remote_domain_get_info_ret(1, 2 << 20, 1 << 20, 2, 123456789)
    data = r.remote_domain_get_info_ret_codec.encode(ret)
    assert data == struct.pack(">IQQIQ", 1, 2 << 20, 1 << 20, 2, 123456789)
    with pytest.raises(XDRError, match="out of range"):
        r.remote_domain_get_info_ret_codec.decode(struct.pack(">IQQIQ", 256, 0, 0, 0, 0))


def test_typed_params(r):
    params = [
        r.remote_typed_param("a", (r.VIR_TYPED_PARAM_INT, -1)),
        r.remote_typed_param("bb", (r.VIR_TYPED_PARAM_ULLONG, 2**64 - 1)),
        r.remote_typed_param("c", (r.VIR_TYPED_PARAM_STRING, "xyz")),
        r.remote_typed_param("d", (r.VIR_TYPED_PARAM_DOUBLE, 0.5)),
    ]
    data = b"".join(r.remote_typed_param_codec.encode(p) for p in params)
    assert data == (b"\0\0\0\1a\0\0\0" + b"\0\0\0\1" + b"\xff" * 4
                    + b"\0\0\0\2bb\0\0" + b"\0\0\0\4" + b"\xff" * 8
                    + b"\0\0\0\1c\0\0\0" + b"\0\0\0\7" + b"\0\0\0\3xyz\0"
                    + b"\0\0\0\1d\0\0\0" + b"\0\0\0\5" + struct.pack(">d", 0.5))
    with pytest.raises(XDRError, match="bad discriminant"):
        r.remote_typed_param_value_codec.decode(b"\0\0\0\x08\0\0\0\0")


def test_remote_error(r):
    err = r.remote_error(42, 10, "Domain not found", 2, None, "x", None, None, 0, 0, None)
    data = r.remote_error_codec.encode(err)
    assert data == (struct.pack(">ii", 42, 10) + b"\0\0\0\1\0\0\0\x10Domain not found"
                    + struct.pack(">i", 2) + b"\0\0\0\0" + b"\0\0\0\1\0\0\0\1x\0\0\0"
                    + b"\0\0\0\0" * 2 + struct.pack(">ii", 0, 0) + b"\0\0\0\0")
    assert r.remote_error_codec.decode(data) == err


def test_list_all_domains_ret(r):
    doms = [r.remote_nonnull_domain(f"d{i}", UUID, i) for i in range(3)]
    ret = r.remote_connect_list_all_domains_ret(doms, 3)
    data = r.remote_connect_list_all_domains_ret_codec.encode(ret)
    assert data[:4] == b"\0\0\0\3" and data[-4:] == b"\0\0\0\3"
    assert r.remote_connect_list_all_domains_ret_codec.decode(data) == ret
    with pytest.raises(XDRError, match="exceeds 16384"):
        r.remote_connect_list_all_domains_ret_codec.decode(b"\0\1\0\0" + bytes(64))
