"""Pool and volume XML: what we accept, what we refuse, and the text we print."""

from __future__ import annotations

import uuid

import pytest

from drivers.storage.perms import Perms
from drivers.storage.pool import backend_class
from drivers.storage.pool_xml import PoolSizes, clean_path, format_pool, parse_pool
from drivers.storage.units import scale
from drivers.storage.vol_xml import Volume, format_vol, parse_vol
from protocol.errors import ErrorCode, ErrorDomain, VirError

UUID = "584b2988-555b-44b4-bbe7-9952f19c40b4"

POOL_INACTIVE = f"""<pool type='dir'>
  <name>p1</name>
  <uuid>{UUID}</uuid>
  <capacity unit='bytes'>0</capacity>
  <allocation unit='bytes'>0</allocation>
  <available unit='bytes'>0</available>
  <source>
  </source>
  <target>
    <path>/var/tmp/p1</path>
  </target>
</pool>
"""


def test_pool_round_trip_matches_libvirtd() -> None:
    d = parse_pool(f"<pool type='dir'><name>p1</name><uuid>{UUID}</uuid>"
                   "<target><path>/var/tmp//p1/</path></target></pool>")
    assert d.uuid == uuid.UUID(UUID).bytes
    assert format_pool(d, PoolSizes()) == POOL_INACTIVE
    assert format_pool(parse_pool(POOL_INACTIVE), PoolSizes()) == POOL_INACTIVE


def test_active_pool_shows_sizes_and_live_permissions() -> None:
    d = parse_pool(POOL_INACTIVE)
    xml = format_pool(d, PoolSizes(300, 100, 200), Perms(0o755, 0, 0))
    assert "<capacity unit='bytes'>300</capacity>" in xml
    assert "<available unit='bytes'>200</available>" in xml
    assert ("    <permissions>\n      <mode>0755</mode>\n      <owner>0</owner>\n"
            "      <group>0</group>\n    </permissions>\n") in xml


def test_pool_without_uuid_gets_one() -> None:
    a = parse_pool("<pool type='dir'><name>a</name><target><path>/a</path></target></pool>")
    assert len(a.uuid) == 16


@pytest.mark.parametrize(("xml", "code", "domain", "message"), [
    ("<pool type='dir'><name>s</name></pool>", ErrorCode.XML_ERROR, ErrorDomain.STORAGE,
     "XML error: missing storage pool target path"),
    ("<pool type='bogus'><name>s</name></pool>", ErrorCode.XML_ERROR, ErrorDomain.XML,
     "XML error: Invalid value for attribute 'type' in element 'pool': 'bogus'."),
    ("<pool type='dir'><target><path>/x</path></target></pool>", ErrorCode.XML_ERROR,
     ErrorDomain.STORAGE, "XML error: missing pool source name element"),
    ("<pol/>", ErrorCode.XML_ERROR, ErrorDomain.XML,
     "XML error: expecting root element of 'pool', not 'pol'"),
    ("<pool type='dir'><name>a/b</name><target><path>/x</path></target></pool>",
     ErrorCode.XML_ERROR, ErrorDomain.STORAGE, "XML error: name a/b cannot contain '/'"),
])
def test_pool_errors_are_libvirtd_s(xml: str, code: ErrorCode, domain: ErrorDomain,
                                    message: str) -> None:
    with pytest.raises(VirError) as e:
        parse_pool(xml)
    assert (e.value.code, e.value.domain, e.value.message) == (code, domain, message)


def test_volume_defaults_and_units() -> None:
    vol = parse_vol("<volume><name>v</name><capacity unit='M'>10</capacity>"
                    "<target><format type='qcow2'/><permissions><mode>0640</mode>"
                    "</permissions></target></volume>")
    assert (vol.capacity, vol.allocation, vol.format) == (10 << 20, None, "qcow2")
    assert vol.perms.mode == 0o640
    sparse = parse_vol("<volume><name>v</name><capacity>1</capacity>"
                       "<allocation unit='KB'>2</allocation></volume>")
    assert (sparse.capacity, sparse.allocation, sparse.format) == (1, 2000, "raw")


@pytest.mark.parametrize(("value", "unit", "expected"), [
    ("5", None, 5), ("5", "bytes", 5), ("1", "KiB", 1024), ("1", "k", 1024), ("1", "KB", 1000),
    ("2", "G", 2 << 30), ("1", "TB", 10**12), ("1", "E", 1 << 60),
])
def test_scale(value: str, unit: str | None, expected: int) -> None:
    assert scale(value, unit) == expected


@pytest.mark.parametrize(("value", "unit", "code", "message"), [
    ("20", "E", ErrorCode.OVERFLOW, "numerical overflow: value too large: 20E"),
    ("abc", None, ErrorCode.XML_ERROR, "XML error: malformed capacity element"),
    ("-1", None, ErrorCode.XML_ERROR, "XML error: malformed capacity element"),
    ("1", "parsec", ErrorCode.INVALID_ARG, "invalid argument: unknown suffix 'parsec'"),
])
def test_scale_errors_are_libvirtd_s(value: str, unit: str | None, code: ErrorCode,
                                     message: str) -> None:
    with pytest.raises(VirError) as e:
        scale(value, unit)
    assert (e.value.code, e.value.message) == (code, message)


@pytest.mark.parametrize(("xml", "code", "message"), [
    ("<volume><name>z</name></volume>", ErrorCode.XML_ERROR, "XML error: missing capacity element"),
    ("<volume><capacity>1</capacity></volume>", ErrorCode.XML_ERROR,
     "XML error: missing volume name element"),
    (("<volume><name>z</name><capacity>1</capacity><target><format type='bogus'/></target>"
      "</volume>"), ErrorCode.CONFIG_UNSUPPORTED,
     "unsupported configuration: unknown volume format type bogus"),
])
def test_volume_errors_are_libvirtd_s(xml: str, code: ErrorCode, message: str) -> None:
    with pytest.raises(VirError) as e:
        parse_vol(xml)
    assert (e.value.code, e.value.message) == (code, message)


def test_volume_xml_as_libvirtd_prints_it() -> None:
    vol = Volume("q.qcow2", 20971520, 200704, "qcow2", Perms(0o600, 0, 0), path="/p/q.qcow2",
                 physical=196616, timestamps=("1.000000001", "2.000000000", "3.5"),
                 cluster_size=65536)
    assert format_vol(vol) == """<volume type='file'>
  <name>q.qcow2</name>
  <key>/p/q.qcow2</key>
  <capacity unit='bytes'>20971520</capacity>
  <allocation unit='bytes'>200704</allocation>
  <physical unit='bytes'>196616</physical>
  <target>
    <path>/p/q.qcow2</path>
    <format type='qcow2'/>
    <permissions>
      <mode>0600</mode>
      <owner>0</owner>
      <group>0</group>
    </permissions>
    <timestamps>
      <atime>1.000000001</atime>
      <mtime>2.000000000</mtime>
      <ctime>3.5</ctime>
      <btime>0</btime>
    </timestamps>
    <clusterSize unit='B'>65536</clusterSize>
  </target>
</volume>
"""


def test_backing_store_parse_and_format() -> None:
    vol = parse_vol("<volume><name>b</name><capacity>1</capacity><target><format type='qcow2'/>"
                    "</target><backingStore><path>/p/q</path></backingStore></volume>")
    assert vol.backing is not None and (vol.backing.path, vol.backing.format) == ("/p/q", "raw")
    vol.path = "/p/b"
    assert format_vol(vol).endswith(
        "  </target>\n  <backingStore>\n    <path>/p/q</path>\n    <format type='raw'/>\n"
        "  </backingStore>\n</volume>\n")


def test_known_type_without_backend() -> None:
    """The XML is parsed first (as libvirtd does); the backend is looked up after."""
    with pytest.raises(VirError) as e:
        parse_pool("<pool type='iscsi-direct'><name>a</name></pool>")
    assert e.value.message == "XML error: missing storage pool source host name"
    with pytest.raises(VirError) as e:
        backend_class("iscsi-direct")
    assert (e.value.code, e.value.message) == (
        ErrorCode.INTERNAL_ERROR, "internal error: missing backend for pool type 6 (iscsi-direct)")


@pytest.mark.parametrize(("path", "clean"), [
    ("/var//tmp/", "/var/tmp"), ("//var//tmp/r.img/", "//var/tmp/r.img"), ("///a", "/a"),
    ("/", "/"), ("rel//x/", "rel/x"),
])
def test_clean_path_as_libvirt(path: str, clean: str) -> None:
    assert clean_path(path) == clean


def test_qcow2_compat_and_features() -> None:
    vol = parse_vol("<volume><name>c</name><capacity>1</capacity><target><format type='qcow2'/>"
                    "<compat>1.1</compat><features><lazy_refcounts/></features></target>"
                    "</volume>")
    assert (vol.compat, vol.lazy_refcounts) == ("1.1", True)
    vol.cluster_size = 65536
    assert ("    <compat>1.1</compat>\n    <clusterSize unit='B'>65536</clusterSize>\n"
            "    <features>\n      <lazy_refcounts/>\n    </features>\n  </target>\n"
            ) in format_vol(vol)
