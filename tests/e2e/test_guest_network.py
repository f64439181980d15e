"""Guests on libvirt networks and host bridges, with the tiny test guest inside.

Everything runs in a network namespace of this module's own: one daemon in it,
a NAT network (bridge ``ngbr0``, 192.168.150.0/24) it starts, a network on a
host bridge the test makes (``ngbr5``, forward mode bridge: ports without
dnsmasq), and the guests' taps. A guest asks for a lease with udhcpc ("dhcp" on
its kernel command line) or gets a static address, and is driven through its
serial console. What is checked against is libvirtd 9.0's behaviour as seen on
the reference daemon: live XML ``<source network= portid= bridge=/>``, ports
released at unplug and stop, guests surviving a net-destroy with their taps off
the bridge.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.daemon import DaemonProcess
from e2e.netns import NetNS
from e2e.test_domain_lifecycle import PtyConsole, out
from guest import BANNER, PROMPT, ensure_guest

pytestmark = pytest.mark.slow

BOOT = 90.0  # TCG on shared cores: generous, never a timed assertion
NET = "ngnet"
BRIDGE = "ngbr0"
HOST_IP = "192.168.150.1"
NETWORK_XML = f"""<network>
  <name>{NET}</name>
  <forward mode='nat'/>
  <bridge name='{BRIDGE}'/>
  <ip address='{HOST_IP}' netmask='255.255.255.0'>
    <dhcp><range start='192.168.150.10' end='192.168.150.50'/></dhcp>
  </ip>
</network>
"""
HB, HB_BRIDGE = "nghb", "ngbr5"
LEASED = re.compile(rb"aiovirtd-test-guest: eth0 has ([0-9.]+)")


@pytest.fixture(scope="module")
def ns() -> Iterator[NetNS]:
    with NetNS("ng") as n:
        yield n


@pytest.fixture(scope="module")
def daemon(ns: NetNS) -> Iterator[DaemonProcess]:
    d = DaemonProcess(netns=ns.name)
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


def define_network(daemon: DaemonProcess, name: str, xml: str) -> str:
    path = daemon.root / f"{name}.xml"
    path.write_text(xml)
    daemon.virsh("net-define", str(path))
    daemon.virsh("net-start", name)
    return name


@pytest.fixture(scope="module")
def network(daemon: DaemonProcess) -> str:
    """The module's NAT network, defined and started."""
    return define_network(daemon, NET, NETWORK_XML)


@pytest.fixture(scope="module")
def hostbridge(daemon: DaemonProcess, ns: NetNS) -> str:
    """A network on a bridge the test made (10.98.0.1/24): ports, no dnsmasq."""
    ns.run("ip", "link", "add", HB_BRIDGE, "type", "bridge")
    ns.run("ip", "addr", "add", "10.98.0.1/24", "dev", HB_BRIDGE)
    ns.run("ip", "link", "set", HB_BRIDGE, "up")
    return define_network(daemon, HB, f"<network><name>{HB}</name><forward mode='bridge'/>"
                                      f"<bridge name='{HB_BRIDGE}'/></network>")


def nic(kind: str, source: str, mac: str, extra: str = "") -> str:
    attr = "network" if kind == "network" else "bridge"
    return (f"<interface type='{kind}'><mac address='{mac}'/><source {attr}='{source}'/>"
            f"<model type='virtio'/>{extra}</interface>")


class Guest:
    """A test guest with the given NICs; its serial console logged and reachable."""

    def __init__(self, daemon: DaemonProcess, name: str, nics: str, dhcp: bool = False) -> None:
        g = ensure_guest()
        self.daemon, self.name = daemon, name
        self.log = daemon.root / f"{name}-console.log"
        self.log.unlink(missing_ok=True)
        args = f"{g.cmdline} noagent" + (" dhcp" if dhcp else "")
        path = daemon.root / f"{name}.xml"
        path.write_text(
            f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory>"
            "<os><type arch='x86_64' machine='pc'>hvm</type>"
            f"<kernel>{g.kernel}</kernel><initrd>{g.initrd}</initrd><cmdline>{args}</cmdline>"
            "</os><features><acpi/></features><on_reboot>destroy</on_reboot><devices>"
            f"<serial type='pty'><log file='{self.log}'/></serial><console type='pty'/>"
            f"{nics}</devices></domain>"
        )
        daemon.virsh("define", str(path))
        self.console: PtyConsole | None = None

    def start(self) -> None:
        self.daemon.virsh("start", self.name)
        self.wait_log(BANNER.encode())

    def wait_log(self, text: bytes | re.Pattern[bytes], timeout: float = BOOT) -> re.Match[bytes]:
        pattern = text if isinstance(text, re.Pattern) else re.compile(re.escape(text))
        deadline = time.monotonic() + timeout
        while True:
            try:
                found = pattern.search(self.log.read_bytes())
            except FileNotFoundError:
                found = None
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {pattern.pattern!r} in the console log")
            time.sleep(0.1)

    def run(self, command: str, marker: str, timeout: float = 30.0) -> str:
        """Run ``command`` on the console; ``marker`` is what its success prints."""
        if self.console is None:
            pty = re.search(r"<source path='(/dev/pts/\d+)'/>", self.xml())
            assert pty is not None
            self.console = PtyConsole(pty.group(1))
            self.console.expect(PROMPT.encode(), BOOT, poke=True)
        self.console.output = b""
        self.console.send(command)
        self.console.expect(marker.encode(), timeout)
        return self.console.output.decode(errors="replace")

    def xml(self, *flags: str) -> str:
        return out(self.daemon, "dumpxml", self.name, *flags)

    def close(self) -> None:
        if self.console is not None:
            self.console.close()
        self.daemon.virsh("destroy", self.name, check=False)
        self.daemon.virsh("undefine", self.name, check=False)


def ports(daemon: DaemonProcess, net: str = NET) -> list[str]:
    lines = out(daemon, "net-port-list", net).splitlines()[2:]
    return [line.split()[0] for line in lines if line.strip()]


def link(ns: NetNS, dev: str) -> str:
    return ns.run("ip", "-o", "link", "show", dev).stdout


def ping(host: str) -> str:
    """A console command that prints PING-2 once ``host`` answered (a new bridge port
    forwards only after STP's listening and learning: 2 s each)."""
    return (f"for i in $(seq 15); do ping -c 1 -W 1 {host} >/dev/null && break; done"
            " && echo PING-$((1+1))")


def tap_of(xml: str, mac: str) -> str:
    block = xml.split(f"<mac address='{mac}'/>", 1)[1].split("</interface>", 1)[0]
    found = re.search(r"<target dev='([^']+)'/>", block)
    assert found is not None, block
    return found.group(1)


# -- a host bridge ---------------------------------------------------------------------------


def test_bridge_nic_reaches_the_bridge(daemon: DaemonProcess, ns: NetNS) -> None:
    ns.run("ip", "link", "add", "ngbr9", "mtu", "1450", "type", "bridge")
    ns.run("ip", "addr", "add", "10.99.0.1/24", "dev", "ngbr9")
    ns.run("ip", "link", "set", "ngbr9", "up")
    mac = "52:54:00:9e:00:01"
    g = Guest(daemon, "ngbridge", nic("bridge", "ngbr9", mac))
    try:
        g.start()
        tap = tap_of(g.xml(), mac)
        assert re.match(r"vnet\d+$", tap)
        shown = link(ns, tap)
        assert "master ngbr9" in shown and "mtu 1450" in shown  # the bridge's MTU
        assert "fe:54:00:9e:00:01" in shown  # libvirt's tap MAC: the guest's, first byte 0xfe
        g.run("ip addr add 10.99.0.2/24 dev eth0 && ip link set eth0 up"
              " && " + ping("10.99.0.1"), "PING-2", timeout=60)
        stats = out(daemon, "domifstat", "ngbridge", tap)
        assert re.search(r"rx_packets [1-9]", stats), stats
    finally:
        g.close()
        ns.run("ip", "link", "del", "ngbr9", check=False)


# -- networks ---------------------------------------------------------------------------------


def test_guest_on_an_inactive_or_unknown_network_fails_as_libvirtd(
    daemon: DaemonProcess,
) -> None:
    path = daemon.root / "ngoff.xml"
    path.write_text(NETWORK_XML.replace(NET, "ngoff").replace(BRIDGE, "ngbr1")
                    .replace("192.168.150.", "192.168.151."))
    daemon.virsh("net-define", str(path))
    g = Guest(daemon, "ngoff", nic("network", "ngoff", "52:54:00:9e:01:01"))
    try:
        res = daemon.virsh("start", "ngoff", check=False)
        assert res.returncode == 1
        assert "Requested operation is not valid: network 'ngoff' is not active" in res.stderr
        daemon.virsh("undefine", "ngoff")
        g = Guest(daemon, "ngoff", nic("network", "ngnone", "52:54:00:9e:01:01"))
        res = daemon.virsh("start", "ngoff", check=False)
        assert "Network not found: no network with matching name 'ngnone'" in res.stderr
        assert out(daemon, "domstate", "ngoff") == "shut off"
    finally:
        g.close()
        daemon.virsh("net-undefine", "ngoff", check=False)


# -- a network on a host bridge: ports, link state, hotplug, restart --------------------------

MAC = "52:54:00:9e:02:01"


@pytest.fixture(scope="module")
def static_guest(daemon: DaemonProcess, hostbridge: str) -> Iterator[Guest]:
    """A guest on the host-bridge network, 10.98.0.2 on its eth0."""
    g = Guest(daemon, "ngstatic", nic("network", hostbridge, MAC))
    try:
        g.start()
        g.run("ip addr add 10.98.0.2/24 dev eth0 && ip link set eth0 up && echo UP-$((1+1))",
              "UP-2")
        yield g
    finally:
        g.close()


def test_network_nic_gets_a_port_and_its_bridge(
    daemon: DaemonProcess, ns: NetNS, static_guest: Guest
) -> None:
    g = static_guest
    xml = g.xml()
    found = re.search(rf"<source network='{HB}' portid='([0-9a-f-]{{36}})' "
                      rf"bridge='{HB_BRIDGE}'/>\s*<target dev='(vnet\d+)'/>", xml)
    assert found is not None, xml
    portid, tap = found.groups()
    assert ports(daemon, HB) == [portid]
    assert "portid" not in g.xml("--inactive")
    assert f"master {HB_BRIDGE}" in link(ns, tap)
    g.run(ping("10.98.0.1"), "PING-2", timeout=60)
    # No dnsmasq on this network: no leases, and the list says so as libvirtd's does.
    assert "52:54" not in out(daemon, "domifaddr", g.name, "--source", "lease")


def test_link_state_down_and_up(daemon: DaemonProcess, static_guest: Guest) -> None:
    g = static_guest
    tap = tap_of(g.xml(), MAC)
    assert out(daemon, "domif-getlink", g.name, tap).split() == [tap, "up"]
    daemon.virsh("domif-setlink", g.name, tap, "down")
    assert out(daemon, "domif-getlink", g.name, tap).split() == [tap, "down"]
    assert "<link state='down'/>" in g.xml()
    text = g.run("cat /sys/class/net/eth0/carrier; echo CARRIER-$((2+1))", "CARRIER-3")
    assert re.search(r"\n0\r?\nCARRIER-3", text), text  # the guest sees no carrier
    daemon.virsh("domif-setlink", g.name, MAC, "up")
    assert out(daemon, "domif-getlink", g.name, tap).split() == [tap, "up"]
    text = g.run("cat /sys/class/net/eth0/carrier; echo CARRIER-$((2+1))", "CARRIER-3")
    assert re.search(r"\n1\r?\nCARRIER-3", text), text


def test_hotplug_of_network_and_bridge_nics(
    daemon: DaemonProcess, ns: NetNS, static_guest: Guest
) -> None:
    g = static_guest
    before = ports(daemon, HB)
    daemon.virsh("attach-interface", g.name, "--type", "network", "--source", HB,
                 "--model", "virtio", "--mac", "52:54:00:9e:02:02")
    xml = g.xml()
    added = re.search(rf"<mac address='52:54:00:9e:02:02'/>\s*<source network='{HB}' "
                      rf"portid='([0-9a-f-]{{36}})' bridge='{HB_BRIDGE}'/>", xml)
    assert added is not None, xml
    assert sorted(ports(daemon, HB)) == sorted([*before, added.group(1)])
    tap = tap_of(xml, "52:54:00:9e:02:02")
    assert f"master {HB_BRIDGE}" in link(ns, tap)
    daemon.virsh("detach-interface", g.name, "network", "--mac", "52:54:00:9e:02:02")
    assert "52:54:00:9e:02:02" not in g.xml()
    assert ports(daemon, HB) == before
    # A bridge NIC goes on and off the same bridge, with no port.
    daemon.virsh("attach-interface", g.name, "--type", "bridge", "--source", HB_BRIDGE,
                 "--model", "virtio", "--mac", "52:54:00:9e:02:03")
    new_tap = tap_of(g.xml(), "52:54:00:9e:02:03")
    assert new_tap != tap  # vnetN names count up as libvirtd's do
    assert f"master {HB_BRIDGE}" in link(ns, new_tap)
    assert ports(daemon, HB) == before
    daemon.virsh("detach-interface", g.name, "bridge", "--mac", "52:54:00:9e:02:03")
    assert "52:54:00:9e:02:03" not in g.xml()
    # Config only: the persistent definition gets the NIC, and no port is taken.
    daemon.virsh("attach-interface", g.name, "network", HB, "--mac", "52:54:00:9e:02:04",
                 "--config")
    assert "52:54:00:9e:02:04" in g.xml("--inactive")
    assert "52:54:00:9e:02:04" not in g.xml()
    assert ports(daemon, HB) == before
    daemon.virsh("detach-interface", g.name, "network", "--mac", "52:54:00:9e:02:04",
                 "--config")
    assert "52:54:00:9e:02:04" not in g.xml("--inactive")
    # attach-device with link down; detach-device with the live XML's own <interface>
    # (portid, bridge, target and alias in it) finds the NIC by MAC all the same.
    path = daemon.root / "ngnic.xml"
    path.write_text(nic("network", HB, "52:54:00:9e:02:05", "<link state='down'/>"))
    daemon.virsh("attach-device", g.name, str(path))
    assert out(daemon, "domif-getlink", g.name, "52:54:00:9e:02:05").split()[1] == "down"
    assert len(ports(daemon, HB)) == len(before) + 1
    live = g.xml()
    start = live.rindex("<interface", 0, live.index("52:54:00:9e:02:05"))
    path.write_text(live[start:live.index("</interface>", start) + len("</interface>")])
    daemon.virsh("detach-device", g.name, str(path))
    assert "52:54:00:9e:02:05" not in g.xml()
    assert ports(daemon, HB) == before
    # Of an unknown network, libvirtd's words.
    res = daemon.virsh("attach-interface", g.name, "network", "ngnone", check=False)
    assert "Network not found: no network with matching name 'ngnone'" in res.stderr


def test_daemon_restart_keeps_the_port(
    daemon: DaemonProcess, ns: NetNS, static_guest: Guest
) -> None:
    before, xml = ports(daemon, HB), static_guest.xml()
    daemon.restart()
    assert ports(daemon, HB) == before
    assert static_guest.xml() == xml
    static_guest.run(ping("10.98.0.1"), "PING-2", timeout=60)


def test_guest_stop_releases_its_ports(daemon: DaemonProcess, hostbridge: str) -> None:
    g = Guest(daemon, "ngstop", nic("network", hostbridge, "52:54:00:9e:03:01")
              + nic("network", hostbridge, "52:54:00:9e:03:02", "<link state='down'/>"))
    try:
        before = ports(daemon, HB)
        daemon.virsh("start", g.name)
        assert len(ports(daemon, HB)) == len(before) + 2
        assert "<link state='down'/>" in g.xml()
        daemon.virsh("destroy", g.name)
        assert ports(daemon, HB) == before
    finally:
        g.close()


def test_guest_that_died_unwatched_gives_back_its_port(
    daemon: DaemonProcess, hostbridge: str
) -> None:
    g = Guest(daemon, "ngdead", nic("network", hostbridge, "52:54:00:9e:03:03"))
    try:
        before = ports(daemon, HB)
        daemon.virsh("start", g.name)
        assert len(ports(daemon, HB)) == len(before) + 1
        daemon.stop()
        pid = int((daemon.root / f"run/libvirt/qemu/{g.name}.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        daemon.start()
        assert out(daemon, "domstate", g.name) == "shut off"
        assert ports(daemon, HB) == before
    finally:
        g.close()


# -- a NAT network with DHCP ------------------------------------------------------------------


@pytest.fixture(scope="module")
def dhcp_guest(daemon: DaemonProcess, network: str) -> Iterator[Guest]:
    """A guest on the NAT network that asked for its lease at boot."""
    g = Guest(daemon, "ngdhcp", nic("network", network, "52:54:00:9e:06:01"), dhcp=True)
    try:
        g.start()
        yield g
    finally:
        g.close()


def test_guest_gets_a_lease_and_pings_the_host(
    daemon: DaemonProcess, ns: NetNS, dhcp_guest: Guest
) -> None:
    g = dhcp_guest
    address = g.wait_log(LEASED).group(1).decode()
    assert address.startswith("192.168.150.")
    leases = out(daemon, "net-dhcp-leases", NET)
    assert "52:54:00:9e:06:01" in leases and f"{address}/24" in leases
    xml = g.xml()
    tap = tap_of(xml, "52:54:00:9e:06:01")
    assert re.search(rf"<source network='{NET}' portid='[0-9a-f-]{{36}}' bridge='{BRIDGE}'/>",
                     xml), xml
    addrs = out(daemon, "domifaddr", g.name, "--source", "lease")
    assert re.search(rf"{tap}\s+52:54:00:9e:06:01\s+ipv4\s+{re.escape(address)}/24", addrs), addrs
    assert f"master {BRIDGE}" in link(ns, tap)
    g.run(ping(HOST_IP), "PING-2", timeout=60)


def test_net_destroy_leaves_guests_running(
    daemon: DaemonProcess, ns: NetNS, dhcp_guest: Guest
) -> None:
    g = dhcp_guest
    g.wait_log(LEASED)
    xml = g.xml()
    tap = tap_of(xml, "52:54:00:9e:06:01")
    portid = re.search(r"portid='([0-9a-f-]{36})'", xml)
    assert portid is not None
    daemon.virsh("net-destroy", NET)
    try:
        # As libvirtd: the guest runs on, its tap lost its bridge, the live XML is as it was.
        assert out(daemon, "domstate", g.name) == "running"
        assert "master" not in link(ns, tap)
        assert g.xml() == xml
    finally:
        daemon.virsh("net-start", NET)
    # Starting the network again does not bring the tap back (libvirtd neither);
    # a daemon restart does, as libvirtd's re-attach of its guests does.
    assert ports(daemon) == []
    assert "master" not in link(ns, tap)
    daemon.restart()
    assert f"master {BRIDGE}" in link(ns, tap)
    assert ports(daemon) == [portid.group(1)]
    g.run(ping(HOST_IP), "PING-2", timeout=60)


# -- virt-install -----------------------------------------------------------------------------


def test_virt_install_guest_on_the_default_network_gets_a_lease(daemon: DaemonProcess) -> None:
    """The issue's last word: virt-install through aiovirtd, on the default network
    the daemon made and autostarted in its first start (in this namespace)."""
    if shutil.which("virt-install") is None:
        pytest.skip("virt-install is not installed")
    assert "Active:         yes" in out(daemon, "net-info", "default")
    g = ensure_guest()
    log = daemon.root / "ngvirt-console.log"
    res = subprocess.run(
        ["virt-install", "--connect", daemon.uri, "--name", "ngvirt", "--virt-type", "qemu",
         "--memory", "128", "--vcpus", "1", "--osinfo", "detect=on,require=off",
         "--network", "network=default,model=virtio,mac=52:54:00:9e:04:01",
         "--boot", f"kernel={g.kernel},initrd={g.initrd},"
                   f"kernel_args={g.cmdline} noagent dhcp",
         "--import", "--disk", "none", "--graphics", "none", "--noautoconsole",
         "--serial", f"pty,log.file={log}"],
        capture_output=True, text=True, timeout=120,
    )
    try:
        assert res.returncode == 0, res.stdout + res.stderr
        deadline = time.monotonic() + BOOT
        while "52:54:00:9e:04:01" not in out(daemon, "net-dhcp-leases", "default"):
            assert time.monotonic() < deadline, "no lease for the virt-install guest"
            time.sleep(0.5)
        assert "192.168.122." in out(daemon, "domifaddr", "ngvirt", "--source", "lease")
        assert "<source network='default' portid=" in out(daemon, "dumpxml", "ngvirt")
    finally:
        daemon.virsh("destroy", "ngvirt", check=False)
        daemon.virsh("undefine", "ngvirt", check=False)
        log.unlink(missing_ok=True)
