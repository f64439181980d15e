"""Virtual networks through stock virsh and libvirt-python against aiovirtd.

One daemon runs inside a network namespace of this module's own, so the
bridges, dnsmasq and firewall rules the networks make never touch the host.
Every XML the daemon returns is checked with virt-xml-validate.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from e2e.daemon import DaemonProcess
from e2e.netns import NetNS

pytestmark = pytest.mark.slow

libvirt = pytest.importorskip("libvirt")


@pytest.fixture(scope="module")
def ns() -> Iterator[NetNS]:
    with NetNS("avdnet") as n:
        yield n


@pytest.fixture(scope="module")
def d(ns: NetNS) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(netns=ns.name)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.cleanup()


def _validate(tmp_path: Path, xml: str, schema: str = "network") -> None:
    path = tmp_path / f"{schema}.xml"
    path.write_text(xml)
    res = subprocess.run(["virt-xml-validate", str(path), schema], capture_output=True,
                         text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def _isolated(name: str, bridge: str, third: int, extra: str = "") -> str:
    return f"""<network>
  <name>{name}</name>
  <bridge name='{bridge}'/>
  <ip address='10.99.{third}.1' prefix='24'>
    <dhcp>
      <range start='10.99.{third}.10' end='10.99.{third}.99'/>{extra}
    </dhcp>
  </ip>
</network>
"""


def _define(d: DaemonProcess, tmp_path: Path, xml: str) -> None:
    path = tmp_path / "net.xml"
    path.write_text(xml)
    d.virsh("net-define", str(path))


def _links(ns: NetNS) -> str:
    return ns.run("ip", "-br", "link").stdout


def _err(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode != 0, res.stdout
    return res.stderr.strip().splitlines()[-1]


def test_default_network_made_and_autostarted(d: DaemonProcess, ns: NetNS,
                                              tmp_path: Path) -> None:
    rows = [r.split() for r in d.virsh("net-list", "--all").stdout.splitlines()[2:] if r]
    assert ["default", "active", "yes", "yes"] in rows
    xml = d.virsh("net-dumpxml", "default").stdout
    _validate(tmp_path, xml)
    assert "<forward mode='nat'>\n    <nat>\n      <port start='1024' end='65535'/>" in xml
    assert "<bridge name='virbr0' stp='on' delay='0'/>" in xml
    assert "<ip address='192.168.122.1' netmask='255.255.255.0'>" in xml
    assert "<range start='192.168.122.2' end='192.168.122.254'/>" in xml
    inactive = d.virsh("net-dumpxml", "default", "--inactive").stdout
    assert "<forward mode='nat'/>" in inactive
    assert (d.root / "etc/libvirt/qemu/networks/autostart/default.xml").is_symlink()
    assert "virbr0" in _links(ns)
    assert "192.168.122.1/24" in ns.run("ip", "-br", "addr", "show", "virbr0").stdout


def test_life_cycle_transcript(d: DaemonProcess, ns: NetNS, tmp_path: Path) -> None:
    _define(d, tmp_path, _isolated("lc", "avdlc0", 1))
    info = d.virsh("net-info", "lc").stdout
    assert "Active:         no" in info and "Persistent:     yes" in info
    assert "Bridge:         avdlc0" in info
    net_uuid = d.virsh("net-uuid", "lc").stdout.strip()
    assert d.virsh("net-name", net_uuid).stdout.strip() == "lc"
    assert "avdlc0" not in _links(ns)
    assert _err(d.virsh("net-destroy", "lc", check=False)) == \
        "error: Requested operation is not valid: network 'lc' is not active"
    d.virsh("net-start", "lc")
    assert "avdlc0" in _links(ns)
    assert _err(d.virsh("net-start", "lc", check=False)) == \
        "error: Requested operation is not valid: network is already active"
    live = d.virsh("net-dumpxml", "lc").stdout
    _validate(tmp_path, live)
    assert f"<uuid>{net_uuid}</uuid>" in live and "<mac address='52:54:00:" in live
    d.virsh("net-autostart", "lc")
    assert "Autostart:      yes" in d.virsh("net-info", "lc").stdout
    assert "lc" in d.virsh("net-list", "--autostart", "--name").stdout.split()
    d.virsh("net-autostart", "lc", "--disable")
    assert "lc" not in d.virsh("net-list", "--autostart", "--name").stdout.split()
    assert "lc" in d.virsh("net-list", "--no-autostart", "--name").stdout.split()
    d.virsh("net-destroy", "lc")
    assert "avdlc0" not in _links(ns)
    assert "lc" in d.virsh("net-list", "--inactive", "--name").stdout.split()
    d.virsh("net-undefine", "lc")
    assert _err(d.virsh("net-info", "lc", check=False)) == \
        "error: Network not found: no network with matching name 'lc'"
    assert not (d.root / "etc/libvirt/qemu/networks/lc.xml").exists()


def test_define_errors_match_libvirtd(d: DaemonProcess, tmp_path: Path) -> None:
    _define(d, tmp_path, _isolated("dup", "avddup0", 2))
    try:
        other = _isolated("dup", "avddup1", 2).replace(
            "<name>dup</name>", f"<name>dup</name><uuid>{uuid.uuid4()}</uuid>")
        path = tmp_path / "other.xml"
        path.write_text(other)
        msg = _err(d.virsh("net-define", str(path), check=False))
        assert msg.startswith("error: operation failed: network 'dup' already exists with uuid ")
        path.write_text(_isolated("dup2", "avddup0", 3))
        assert _err(d.virsh("net-define", str(path), check=False)) == \
            "error: internal error: bridge name 'avddup0' already in use."
        path.write_text("<network><name>nat</name><forward mode='nat'/></network>")
        assert _err(d.virsh("net-define", str(path), check=False)) == (
            "error: XML error: nat forwarding requested, but no IP address provided for "
            "network 'nat'")
        path.write_text("<network><name>v</name><foo/></network>")
        msg = d.virsh("net-define", str(path), "--validate", check=False).stderr
        assert "XML document failed to validate against schema" in msg
        # a bridge name left out gets the lowest free virbrN
        path.write_text("<network><name>auto</name></network>")
        d.virsh("net-define", str(path))
        assert d.virsh("net-info", "auto").stdout.split("Bridge:")[1].strip() == "virbr1"
        d.virsh("net-undefine", "auto")
    finally:
        d.virsh("net-undefine", "dup", check=False)


def test_transient_network(d: DaemonProcess, ns: NetNS, tmp_path: Path) -> None:
    path = tmp_path / "t.xml"
    path.write_text(_isolated("tr", "avdtr0", 4))
    d.virsh("net-create", str(path))
    info = d.virsh("net-info", "tr").stdout
    assert "Active:         yes" in info and "Persistent:     no" in info
    assert _err(d.virsh("net-autostart", "tr", check=False)) == (
        "error: Requested operation is not valid: cannot set autostart for transient network")
    d.virsh("net-destroy", "tr")
    assert "avdtr0" not in _links(ns)
    assert _err(d.virsh("net-info", "tr", check=False)) == \
        "error: Network not found: no network with matching name 'tr'"


def test_undefine_running_network_makes_it_transient(d: DaemonProcess,
                                                     tmp_path: Path) -> None:
    _define(d, tmp_path, _isolated("und", "avdund0", 5))
    d.virsh("net-start", "und")
    d.virsh("net-undefine", "und")
    assert "Persistent:     no" in d.virsh("net-info", "und").stdout
    d.virsh("net-destroy", "und")
    assert d.virsh("net-info", "und", check=False).returncode != 0


def test_net_update_live_and_config(d: DaemonProcess, tmp_path: Path) -> None:
    _define(d, tmp_path, _isolated("up", "avdup0", 6))
    try:
        host = "<host mac='52:54:00:00:00:02' name='h2' ip='10.99.6.11'/>"
        assert _err(d.virsh("net-update", "up", "add", "ip-dhcp-host", host, "--live",
                            check=False)) == \
            "error: Requested operation is not valid: network is not running"
        d.virsh("net-update", "up", "add", "ip-dhcp-host", host, "--config")
        assert host in d.virsh("net-dumpxml", "up").stdout
        d.virsh("net-start", "up")
        hosts = d.root / "run/libvirt/network/up.hostsfile"
        assert "52:54:00:00:00:02,10.99.6.11,h2" in hosts.read_text()
        host3 = "<host mac='52:54:00:00:00:03' name='h3' ip='10.99.6.12'/>"
        d.virsh("net-update", "up", "add-last", "ip-dhcp-host", host3, "--live")
        assert host3 in d.virsh("net-dumpxml", "up").stdout
        assert host3 not in d.virsh("net-dumpxml", "up", "--inactive").stdout
        assert "52:54:00:00:00:03,10.99.6.12,h3" in hosts.read_text()
        dup = "<host mac='52:54:00:00:00:03' name='h9' ip='10.99.6.19'/>"
        assert _err(d.virsh("net-update", "up", "add", "ip-dhcp-host", dup, check=False)) == (
            "error: Requested operation is not valid: there is an existing dhcp host entry in "
            "network 'up' that matches \"<host mac='52:54:00:00:00:03' name='h9' "
            "ip='10.99.6.19'/>\"")
        d.virsh("net-update", "up", "delete", "ip-dhcp-host",
                "<host mac='52:54:00:00:00:02'/>", "--live", "--config")
        assert "h2" not in d.virsh("net-dumpxml", "up").stdout
        assert "h2" not in d.virsh("net-dumpxml", "up", "--inactive").stdout
        assert "h2" not in hosts.read_text()
        dns = "<host ip='10.99.6.50'><hostname>web</hostname></host>"
        d.virsh("net-update", "up", "add", "dns-host", dns, "--live", "--config")
        assert "<hostname>web</hostname>" in d.virsh("net-dumpxml", "up").stdout
        d.virsh("net-update", "up", "add", "ip-dhcp-range",
                "<range start='10.99.6.100' end='10.99.6.120'/>", "--live")
        xml = d.virsh("net-dumpxml", "up").stdout
        assert "<range start='10.99.6.100' end='10.99.6.120'/>" in xml
        _validate(tmp_path, xml)
        assert _err(d.virsh("net-update", "up", "modify", "ip-dhcp-range",
                            "<range start='10.99.6.100' end='10.99.6.120'/>", check=False)) == (
            "error: Operation not supported: dhcp ranges cannot be modified, only added or "
            "deleted")
    finally:
        d.virsh("net-destroy", "up", check=False)
        d.virsh("net-undefine", "up", check=False)


def test_ports(d: DaemonProcess, tmp_path: Path) -> None:
    _define(d, tmp_path, _isolated("pt", "avdpt0", 7))
    d.virsh("net-start", "pt")
    try:
        port_uuid = str(uuid.uuid4())
        xml = f"""<networkport>
  <uuid>{port_uuid}</uuid>
  <owner>
    <name>vm1</name>
    <uuid>11111111-2222-3333-4444-555555555555</uuid>
  </owner>
  <mac address='52:54:00:11:22:33'/>
</networkport>
"""
        path = tmp_path / "port.xml"
        path.write_text(xml)
        d.virsh("net-port-create", "pt", str(path))
        assert d.virsh("net-port-list", "pt", "--uuid").stdout.split() == [port_uuid]
        shown = d.virsh("net-port-dumpxml", "pt", port_uuid).stdout
        assert shown == xml.replace("</networkport>", "  <plug type='network' bridge='avdpt0'/>"
                                    "\n</networkport>") + "\n"
        _validate(tmp_path, shown, "networkport")
        assert "<network connections='1'>" in d.virsh("net-dumpxml", "pt").stdout
        msg = _err(d.virsh("net-port-create", "pt", str(path), check=False))
        assert msg == (f"error: network port Network port with UUID {port_uuid} already "
                       "exists exists already")
        d.virsh("net-port-delete", "pt", port_uuid)
        assert d.virsh("net-port-list", "pt", "--uuid").stdout.split() == []
        # virsh 9.0 says only this (and exits 0), for libvirtd as well
        assert d.virsh("net-port-dumpxml", "pt", port_uuid, check=False).stderr == \
            f"error: failed to get network port '{port_uuid}'\n"
        conn = d.conn()
        net = conn.networkLookupByName("pt")
        port = net.portCreateXML(xml)
        assert port.UUIDString() == port_uuid
        assert [p.UUIDString() for p in net.listAllPorts()] == [port_uuid]
        net.destroy()  # ports go with the network
        with pytest.raises(libvirt.libvirtError, match="not active"):
            net.portCreateXML(xml)
    finally:
        d.virsh("net-destroy", "pt", check=False)
        d.virsh("net-undefine", "pt")


def test_legacy_lists_and_lookups(d: DaemonProcess, tmp_path: Path) -> None:
    _define(d, tmp_path, _isolated("lg", "avdlg0", 8))
    try:
        conn = d.conn()
        assert "default" in conn.listNetworks()
        assert conn.numOfNetworks() == len(conn.listNetworks())
        assert "lg" in conn.listDefinedNetworks()
        assert conn.numOfDefinedNetworks() == len(conn.listDefinedNetworks())
        net = conn.networkLookupByName("lg")
        assert conn.networkLookupByUUID(net.UUID()).name() == "lg"
        assert net.bridgeName() == "avdlg0"
        assert (net.isActive(), net.isPersistent(), net.autostart()) == (0, 1, 0)
        flags = libvirt.VIR_CONNECT_LIST_NETWORKS_INACTIVE
        assert [n.name() for n in conn.listAllNetworks(flags)] == ["lg"]
        assert net.DHCPLeases() == []
        assert "lg" in d.virsh("net-list", "--all", "--name", uri=d.ro_uri).stdout.split()
        assert "forbidden" in d.virsh("net-start", "lg", uri=d.ro_uri, check=False).stderr
        net.undefine()
        with pytest.raises(libvirt.libvirtError) as e:
            net.isActive()
        assert e.value.get_error_message() == (
            f"Network not found: no network with matching uuid '{net.UUIDString()}' (lg)")
    finally:
        d.virsh("net-undefine", "lg", check=False)


def test_dhcp_leases_from_the_lease_file(d: DaemonProcess, tmp_path: Path) -> None:
    _define(d, tmp_path, _isolated("ls", "avdls0", 9))
    d.virsh("net-start", "ls")
    try:
        expiry = int(time.time()) + 3600
        lease_file = d.root / "run/libvirt/network/ls.leases"
        lease_file.write_text(f"{expiry} 52:54:00:aa:bb:01 10.99.9.20 guest1 *\n"
                              f"{expiry} 52:54:00:aa:bb:02 10.99.9.21 guest2 *\n")
        out = d.virsh("net-dhcp-leases", "ls").stdout
        assert "52:54:00:aa:bb:01   ipv4       10.99.9.20/24   guest1" in out
        out = d.virsh("net-dhcp-leases", "ls", "--mac", "52:54:00:aa:bb:02").stdout
        assert "guest2" in out and "guest1" not in out
    finally:
        d.virsh("net-destroy", "ls")
        d.virsh("net-undefine", "ls")


def test_events(d: DaemonProcess, tmp_path: Path) -> None:
    watch = subprocess.Popen(["virsh", "-c", d.uri, "net-event", "--loop", "--event", "lifecycle",
                              "--timeout", "30"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        assert watch.stdout is not None
        _wait_registered(d, watch.stdout, tmp_path)
        _define(d, tmp_path, _isolated("ev", "avdev0", 10))
        for cmd in ("net-start", "net-destroy", "net-undefine"):
            d.virsh(cmd, "ev")
        lines: list[str] = []
        while len(lines) < 4:
            line = watch.stdout.readline()
            assert line, lines
            if "network ev:" in line:
                lines.append(line.strip())
    finally:
        watch.kill()
        watch.wait()
    assert lines == [f"event 'lifecycle' for network ev: {e}"
                     for e in ("Defined", "Started", "Stopped", "Undefined")]


def _wait_registered(d: DaemonProcess, out: IO[str], tmp_path: Path) -> None:
    """Define and undefine a probe network until the watcher reports it."""
    os.set_blocking(out.fileno(), False)
    try:
        for _ in range(60):
            _define(d, tmp_path, "<network><name>probe</name></network>")
            d.virsh("net-undefine", "probe")
            time.sleep(0.3)
            if "probe: Undefined" in (out.read() or ""):
                return
        raise AssertionError("virsh net-event never registered")
    finally:
        os.set_blocking(out.fileno(), True)


def test_restart_keeps_networks_running_once(d: DaemonProcess, ns: NetNS,
                                             tmp_path: Path) -> None:
    """Last: the daemon restarts. Running networks are adopted, not built again."""
    _define(d, tmp_path, _isolated("rs", "avdrs0", 11))
    d.virsh("net-start", "rs")
    d.virsh("net-autostart", "rs")
    port_uuid = str(uuid.uuid4())
    path = tmp_path / "port.xml"
    path.write_text(f"<networkport><uuid>{port_uuid}</uuid><owner><name>vm</name>"
                    "<uuid>11111111-2222-3333-4444-555555555555</uuid></owner>"
                    "<mac address='52:54:00:11:22:44'/></networkport>")
    d.virsh("net-port-create", "rs", str(path))
    _define(d, tmp_path, _isolated("gone", "avdgone0", 12))
    d.virsh("net-start", "gone")
    pidfile = d.root / "run/libvirt/network/rs.pid"
    pid = pidfile.read_text().strip()
    before = d.virsh("net-dumpxml", "rs").stdout
    d.stop()
    rules = ns.run("nft", "list", "ruleset").stdout
    ns.run("ip", "link", "del", "avdgone0")  # gone while the daemon was away
    d.start()
    assert "Active:         no" in d.virsh("net-info", "gone").stdout
    assert not (d.root / "run/libvirt/network/gone.xml").exists()
    assert not [p for p in ns.pids() if "gone.conf" in _cmdline(p)]
    after = ns.run("nft", "list", "ruleset").stdout
    assert "avdgone0" not in after
    assert after.count("avdrs0") == rules.count("avdrs0") > 0  # kept, not added twice
    rows = [r.split() for r in d.virsh("net-list", "--all").stdout.splitlines()[2:] if r]
    assert ["rs", "active", "yes", "yes"] in rows
    assert ["default", "active", "yes", "yes"] in rows
    assert d.virsh("net-dumpxml", "rs").stdout == before
    assert pidfile.read_text().strip() == pid
    assert d.virsh("net-port-list", "rs", "--uuid").stdout.split() == [port_uuid]
    dnsmasqs = [p for p in ns.pids() if "rs.conf" in _cmdline(p)]
    assert len(dnsmasqs) == 1
    assert _links(ns).count("avdrs0") == 1
    d.virsh("net-destroy", "rs")
    d.virsh("net-undefine", "rs")
    d.virsh("net-undefine", "gone")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_no_default_network_outside_a_netns(start_daemon) -> None:
    """Test daemons on the host's own network never make (or start) ``default``."""
    d = start_daemon()
    assert d.virsh("net-list", "--all", "--name").stdout.split() == []
