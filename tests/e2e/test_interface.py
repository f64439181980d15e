"""Host interfaces (virsh iface-*) against aiovirtd running inside a network
namespace of this module's own: every link the tests make or change is there.

This kernel has no dummy, vlan or bonding drivers: veth pairs stand in for
physical NICs, and starting a bond is expected to fail (its test then skips).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.daemon import DaemonProcess
from e2e.netns import NetNS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ns() -> Iterator[NetNS]:
    with NetNS("avd-iface") as namespace:
        yield namespace


@pytest.fixture(scope="module")
def daemon(ns: NetNS) -> Iterator[DaemonProcess]:
    d = DaemonProcess(netns=ns.name)
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


def _veth(ns: NetNS, a: str, b: str, up: bool = True) -> None:
    ns.run("ip", "link", "add", a, "type", "veth", "peer", "name", b)
    if up:
        ns.run("ip", "link", "set", a, "up")
        ns.run("ip", "link", "set", b, "up")


def _link(ns: NetNS, name: str) -> dict | None:
    res = ns.run("ip", "-j", "-d", "addr", "show", "dev", name, check=False)
    return json.loads(res.stdout)[0] if res.returncode == 0 else None


def _validate(tmp_path: Path, xml: str) -> None:
    path = tmp_path / "iface.xml"
    path.write_text(xml)
    res = subprocess.run(["virt-xml-validate", str(path), "interface"], capture_output=True,
                         text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def _define(d: DaemonProcess, tmp_path: Path, xml: str) -> None:
    path = tmp_path / "define.xml"
    path.write_text(xml)
    d.virsh("iface-define", str(path))


def _destroy(d: DaemonProcess, name: str) -> str:
    """virsh 9.0's iface-destroy exits 1 even when it worked (against libvirtd's
    test driver too): judge it by its output."""
    res = d.virsh("iface-destroy", name, check=False)
    assert res.stderr == "", res.stderr
    return res.stdout


def _rows(d: DaemonProcess, *args: str) -> list[list[str]]:
    out = d.virsh("iface-list", *args).stdout
    return [line.split() for line in out.splitlines()[2:] if line.strip()]


def test_live_links_as_libvirtd_shows_them(daemon: DaemonProcess, ns: NetNS,
                                           tmp_path: Path) -> None:
    d = daemon
    _veth(ns, "la0", "la1")
    _veth(ns, "lb0", "lb1", up=False)
    ns.run("ip", "tuntap", "add", "ltap0", "mode", "tap")
    ns.run("ip", "link", "add", "lbr0", "type", "bridge")
    ns.run("ip", "link", "set", "lb1", "master", "lbr0")
    try:
        rows = {row[0]: row[1:] for row in _rows(d, "--all")}
        mac = _link(ns, "la0")["address"]
        assert rows["la0"] == ["active", mac]
        assert rows["lo"] == ["inactive", "00:00:00:00:00:00"]
        assert rows["lb0"][0] == "inactive"
        assert "ltap0" not in rows and "lb1" not in rows  # taps and bridge ports are hidden
        assert [r[0] for r in _rows(d)] == sorted(n for n, r in rows.items() if r[0] == "active")
        assert "lo" in [r[0] for r in _rows(d, "--inactive")]
        conn = d.conn()
        assert "lo" not in conn.listDefinedInterfaces()  # operstate "unknown": neither list
        assert "lb0" in conn.listDefinedInterfaces() and "la0" in conn.listInterfaces()
        assert conn.numOfInterfaces() == len(conn.listInterfaces())

        assert d.virsh("iface-dumpxml", "lo").stdout == (
            "<interface type='ethernet' name='lo'>\n  <mtu size='65536'/>\n"
            "  <link state='unknown'/>\n  <mac address='00:00:00:00:00:00'/>\n"
            "</interface>\n\n")
        xml = d.virsh("iface-dumpxml", "la0", "--inactive").stdout
        assert xml == (f"<interface type='ethernet' name='la0'>\n  <mtu size='1500'/>\n"
                       f"  <link speed='10000' state='up'/>\n  <mac address='{mac}'/>\n"
                       f"</interface>\n\n")
        _validate(tmp_path, xml)
        br = d.virsh("iface-dumpxml", "lbr0").stdout
        assert "<bridge stp='off' delay='1500'>\n    <interface type='ethernet' name='lb1'>" \
            in br
        _validate(tmp_path, br)

        assert d.virsh("iface-mac", "la0").stdout.strip() == mac
        assert d.virsh("iface-name", mac).stdout.strip() == "la0"
        res = d.virsh("iface-mac", "nosuch", check=False)
        assert "error: Interface not found: couldn't find interface named 'nosuch'" in res.stderr
        res = d.virsh("iface-name", "02:00:00:00:00:99", check=False)
        assert ("error: Interface not found: couldn't find interface with MAC address "
                "'02:00:00:00:00:99'") in res.stderr
        import libvirt
        with pytest.raises(libvirt.libvirtError, match=r"unsupported flags \(0x4\) in function "
                           "udevConnectListAllInterfaces"):
            conn.listAllInterfaces(4)
    finally:
        for name in ("la0", "lb0", "ltap0", "lbr0"):
            ns.run("ip", "link", "del", name, check=False)


def test_bridge_define_start_destroy_undefine(daemon: DaemonProcess, ns: NetNS,
                                              tmp_path: Path) -> None:
    d = daemon
    _veth(ns, "ba0", "ba1")
    try:
        _define(d, tmp_path, """<interface type='bridge' name='bbr0'>
  <mtu size='1400'/>
  <protocol family='ipv4'><ip address='10.77.0.1' prefix='24'/></protocol>
  <protocol family='ipv6'><ip address='fd77::1' prefix='64'/></protocol>
  <bridge stp='off' delay='0'><interface type='ethernet' name='ba0'/></bridge>
</interface>""")
        assert ["bbr0", "inactive"] == _rows(d, "--inactive")[0][:2]
        inactive = d.virsh("iface-dumpxml", "bbr0").stdout
        assert inactive == ("<interface type='bridge' name='bbr0'>\n  <mtu size='1400'/>\n"
                            "  <protocol family='ipv4'>\n    <ip address='10.77.0.1' "
                            "prefix='24'/>\n  </protocol>\n  <protocol family='ipv6'>\n"
                            "    <ip address='fd77::1' prefix='64'/>\n  </protocol>\n"
                            "  <bridge stp='off' delay='0'>\n"
                            "    <interface type='ethernet' name='ba0'>\n    </interface>\n"
                            "  </bridge>\n</interface>\n\n")
        _validate(tmp_path, inactive)

        assert "Interface bbr0 started" in d.virsh("iface-start", "bbr0").stdout
        br = _link(ns, "bbr0")
        assert br is not None and br["mtu"] == 1400 and "UP" in br["flags"]
        addrs = {(a["local"], a["prefixlen"]) for a in br["addr_info"]}
        assert {("10.77.0.1", 24), ("fd77::1", 64)} <= addrs
        assert _link(ns, "ba0")["master"] == "bbr0"
        assert d.conn().interfaceLookupByName("bbr0").isActive() == 1
        live = d.virsh("iface-dumpxml", "bbr0").stdout
        assert "<ip address='10.77.0.1' prefix='24'/>" in live
        assert "<interface type='ethernet' name='ba0'>\n      <link speed=" in live
        _validate(tmp_path, live)
        assert "ba0" not in [r[0] for r in _rows(d, "--all")]  # now a bridge port

        res = d.virsh("iface-start", "bbr0", check=False)
        assert "error: Requested operation is not valid: interface is already running" \
            in res.stderr
        assert "Interface bbr0 destroyed" in _destroy(d, "bbr0")
        assert _link(ns, "bbr0") is None
        assert "master" not in _link(ns, "ba0")
        res = d.virsh("iface-destroy", "bbr0", check=False)
        assert "error: Requested operation is not valid: interface is not running" in res.stderr
        d.virsh("iface-undefine", "bbr0")
        assert "bbr0" not in [r[0] for r in _rows(d, "--all")]
        res = d.virsh("iface-undefine", "bbr0", check=False)
        assert "couldn't find interface named 'bbr0'" in res.stderr
    finally:
        d.virsh("iface-destroy", "bbr0", check=False)
        d.virsh("iface-undefine", "bbr0", check=False)
        ns.run("ip", "link", "del", "ba0", check=False)


def test_iface_bridge_and_unbridge(daemon: DaemonProcess, ns: NetNS, tmp_path: Path) -> None:
    d = daemon
    _veth(ns, "ub0", "ub1")
    try:
        out = d.virsh("iface-bridge", "ub0", "ubr0", "--no-stp").stdout
        assert "Created bridge ubr0 with attached device ub0" in out
        assert "Bridge interface ubr0 started" in out
        assert _link(ns, "ub0")["master"] == "ubr0"
        xml = d.virsh("iface-dumpxml", "ubr0", "--inactive").stdout
        mac = _link(ns, "ub0")["address"]
        assert "<bridge stp='off'>" in xml
        assert f"<interface type='ethernet' name='ub0'>\n      <mac address='{mac}'/>" in xml
        _validate(tmp_path, xml)
        res = d.virsh("iface-bridge", "ub1", "ubr0", check=False)
        assert "Network device ubr0 already exists" in res.stderr

        out = d.virsh("iface-unbridge", "ubr0").stdout
        assert "Device ub0 un-attached from bridge ubr0" in out
        assert "Interface ub0 started" in out
        assert _link(ns, "ubr0") is None
        link = _link(ns, "ub0")
        assert "master" not in link and "UP" in link["flags"]
        assert d.virsh("iface-dumpxml", "ub0", "--inactive").stdout == (
            f"<interface type='ethernet' name='ub0'>\n  <mtu size='1500'/>\n"
            f"  <mac address='{mac}'/>\n</interface>\n\n")
    finally:
        for name in ("ubr0", "ub0"):
            d.virsh("iface-destroy", name, check=False)
            d.virsh("iface-undefine", name, check=False)
        ns.run("ip", "link", "del", "ubr0", check=False)
        ns.run("ip", "link", "del", "ub0", check=False)


def test_transactions(daemon: DaemonProcess, ns: NetNS, tmp_path: Path) -> None:
    d = daemon
    _veth(ns, "tr0", "tr1")
    try:
        res = d.virsh("iface-commit", check=False)
        assert ("error: Requested operation is not valid: failed to commit transaction: "
                "no transaction running, nothing to be committed") in res.stderr
        res = d.virsh("iface-rollback", check=False)
        assert "no transaction running, nothing to rollback" in res.stderr

        assert "transaction started" in d.virsh("iface-begin").stdout
        res = d.virsh("iface-begin", check=False)
        assert "failed to begin transaction: there is another transaction running" in res.stderr
        d.virsh("iface-bridge", "tr0", "trbr0", "--no-stp")
        assert _link(ns, "trbr0") is not None
        assert "rolled back" in d.virsh("iface-rollback").stdout
        assert _link(ns, "trbr0") is None  # the bridge made since begin is gone
        link = _link(ns, "tr0")
        assert "master" not in link and "UP" in link["flags"]  # and its port is back up
        assert "trbr0" not in [r[0] for r in _rows(d, "--all")]

        d.virsh("iface-begin")
        _define(d, tmp_path, "<interface type='ethernet' name='tr1'><mtu size='1400'/>"
                             "</interface>")
        d.virsh("iface-commit")
        d.virsh("iface-rollback", check=False)
        assert "<mtu size='1400'/>" in d.virsh("iface-dumpxml", "tr1", "--inactive").stdout

        d.virsh("iface-begin")  # an open transaction outlives the daemon
        d.virsh("iface-undefine", "tr1")
        d.restart()
        d.virsh("iface-rollback")
        assert "<mtu size='1400'/>" in d.virsh("iface-dumpxml", "tr1", "--inactive").stdout
    finally:
        d.virsh("iface-rollback", check=False)
        for name in ("trbr0", "tr1"):
            d.virsh("iface-destroy", name, check=False)
            d.virsh("iface-undefine", name, check=False)
        ns.run("ip", "link", "del", "trbr0", check=False)
        ns.run("ip", "link", "del", "tr0", check=False)


def test_ethernet_config_survives_restart(daemon: DaemonProcess, ns: NetNS,
                                          tmp_path: Path) -> None:
    d = daemon
    _veth(ns, "et0", "et1", up=False)
    try:
        _define(d, tmp_path, "<interface type='ethernet' name='et0'><mtu size='1280'/>"
                             "<protocol family='ipv4'><ip address='10.78.0.1' prefix='30'/>"
                             "</protocol></interface>")
        d.restart()
        d.virsh("iface-start", "et0")
        link = _link(ns, "et0")
        assert link["mtu"] == 1280 and "UP" in link["flags"]
        assert ("10.78.0.1", 30) in {(a["local"], a["prefixlen"]) for a in link["addr_info"]}
        _destroy(d, "et0")
        link = _link(ns, "et0")
        assert "UP" not in link["flags"] and not [a for a in link["addr_info"]
                                                  if a["family"] == "inet"]

        _define(d, tmp_path, "<interface type='ethernet' name='et1'><protocol family='ipv4'>"
                             "<dhcp/></protocol></interface>")
        res = d.virsh("iface-start", "et1", check=False)
        assert ("error: unsupported configuration: failed to create (start) interface et1: "
                "DHCP (ipv4) on host interfaces is not supported") in res.stderr
    finally:
        for name in ("et0", "et1"):
            d.virsh("iface-undefine", name, check=False)
        ns.run("ip", "link", "del", "et0", check=False)


def test_bond(daemon: DaemonProcess, ns: NetNS, tmp_path: Path) -> None:
    d = daemon
    _veth(ns, "bo0", "bo1", up=False)
    try:
        _define(d, tmp_path, """<interface type='bond' name='bond7'>
  <bond mode='active-backup'>
    <miimon freq='100' updelay='10' carrier='netif'/>
    <interface type='ethernet' name='bo0'/>
  </bond>
</interface>""")
        xml = d.virsh("iface-dumpxml", "bond7").stdout
        assert "<miimon freq='100' updelay='10' carrier='netif'/>" in xml
        _validate(tmp_path, xml)
        res = d.virsh("iface-start", "bond7", check=False)
        if res.returncode != 0:
            assert ("error: internal error: failed to create (start) interface bond7: cannot "
                    "create bond device bond7: Operation not supported (this kernel has no "
                    "bond support)") in res.stderr
            assert _link(ns, "bond7") is None
            pytest.skip("this kernel has no bonding driver")
        assert _link(ns, "bo0")["master"] == "bond7"
        _destroy(d, "bond7")
        assert _link(ns, "bond7") is None
    finally:
        d.virsh("iface-destroy", "bond7", check=False)
        d.virsh("iface-undefine", "bond7", check=False)
        ns.run("ip", "link", "del", "bo0", check=False)


def test_refusals_leave_nothing_behind(daemon: DaemonProcess, ns: NetNS,
                                       tmp_path: Path) -> None:
    d = daemon
    path = tmp_path / "bad.xml"
    path.write_text("<interface type='ethernet' name='x'><bogus/></interface>")
    res = d.virsh("iface-define", str(path), "--validate", check=False)
    assert ("error: XML document failed to validate against schema: Unable to validate doc "
            "against /usr/share/libvirt/schemas/interface.rng") in res.stderr
    path.write_text("<interface type='ethernet' name='rox'/>")
    res = d.virsh("iface-define", str(path), check=False, uri=d.ro_uri)
    assert "read only access prevents virInterfaceDefineXML" in res.stderr
    assert d.virsh("iface-list", "--all", uri=d.ro_uri).stdout.count("lo ") == 1

    _define(d, tmp_path, "<interface type='bridge' name='rbr0'><bridge>"
                         "<interface type='ethernet' name='nosuch0'/></bridge></interface>")
    try:
        res = d.virsh("iface-start", "rbr0", check=False)
        assert ("error: internal error: failed to create (start) interface rbr0: device "
                "nosuch0 does not exist") in res.stderr
        assert _link(ns, "rbr0") is None  # the half-made bridge was taken down again
    finally:
        d.virsh("iface-undefine", "rbr0")
