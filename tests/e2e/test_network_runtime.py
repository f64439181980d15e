"""Virtual networks made real (bridge, dnsmasq, nftables), each test in a namespace of its own.

The runtime is driven directly (no daemon) by a small program run inside the
test's namespace, one call per run: a separate process per call is also what
a daemon restart looks like to the network (reattach). A second namespace,
joined to the bridge by a veth pair, plays the guest.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.netns import NetNS

pytestmark = pytest.mark.slow

REPO = str(Path(__file__).resolve().parents[2])

# On uvloop, as in the daemon.
RUNNER = """
import json, sys
import uvloop
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from daemon.paths import Paths
from drivers.network import runtime
from drivers.network.network_xml import parse_network
from protocol.errors import VirError
action, root, xml = sys.argv[2:5]
net, dirs = parse_network(xml), Paths(Path(root)).driver("network")
async def main():
    if action == "leases":
        return [vars(lease) for lease in runtime.leases(net, dirs)]
    return await getattr(runtime, action)(net, dirs)
try:
    print(json.dumps({"ok": uvloop.run(main())}))
except VirError as e:
    print(json.dumps({"error": e.message, "code": int(e.code)}))
"""

GUEST_MAC = "52:54:00:12:34:56"


def nat_xml(mode: str = "nat", bridge: str = "virbr0", extra: str = "") -> str:
    forward = f"<forward mode='{mode}'/>" if mode != "none" else ""
    return f"""<network><name>default</name>{forward}
      <bridge name='{bridge}' stp='off'/><mac address='52:54:00:0a:0b:0c'/><mtu size='1400'/>
      <ip address='192.168.122.1' netmask='255.255.255.0'><dhcp>
        <range start='192.168.122.2' end='192.168.122.254'/>{extra}
      </dhcp></ip></network>"""


class Net:
    """The runtime's calls for one network inside a namespace, and what they leave."""

    def __init__(self, ns: NetNS, root: Path, xml: str) -> None:
        self.ns, self.root, self.xml = ns, root, xml
        self.state = root / "run/libvirt/network"

    def call(self, action: str) -> dict:
        res = self.ns.run(sys.executable, "-c", RUNNER, REPO, action, str(self.root), self.xml)
        return json.loads(res.stdout)

    def ok(self, action: str):
        out = self.call(action)
        assert "error" not in out, out["error"]
        return out["ok"]

    def link(self, name: str = "virbr0") -> dict | None:
        res = self.ns.run("ip", "-j", "-d", "addr", "show", "dev", name, check=False)
        return json.loads(res.stdout)[0] if res.returncode == 0 else None

    def ruleset(self) -> str:
        return self.ns.run("nft", "list", "ruleset").stdout

    def dnsmasq_pid(self) -> int | None:
        try:
            pid = int((self.state / "default.pid").read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if b"dnsmasq" in cmdline else None

    def assert_gone(self) -> None:
        assert self.link() is None
        assert "aiovirtd" not in self.ruleset()
        assert self.dnsmasq_pid() is None
        assert not [p for p in self.state.glob("default.*") if p.suffix != ".leases"]


@pytest.fixture
def guest_ns() -> Iterator[NetNS]:
    with NetNS("avdg") as ns:
        yield ns


def plug(host: NetNS, guest: NetNS, bridge: str = "virbr0") -> None:
    """A veth from the bridge into the guest namespace, as its eth0."""
    host.run("ip", "link", "add", "vguest0", "type", "veth", "peer", "name", "eth0",
             "netns", guest.name)
    host.run("ip", "link", "set", "vguest0", "master", bridge, "up")
    guest.run("ip", "link", "set", "eth0", "address", GUEST_MAC, "up")


def dhcp(guest: NetNS) -> str:
    """The address udhcpc is leased on eth0 (the interface is left unconfigured)."""
    if not shutil.which("busybox"):
        pytest.skip("busybox (udhcpc) is not installed")
    res = guest.run("busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "8", "-T", "1",
                    "-x", "hostname:guest1", "-s", "/bin/true", check=False, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stderr.split("lease of ")[1].split()[0]


def outside(host: NetNS, world: NetNS, route_back: bool = False) -> None:
    """A second link of the host namespace, to 198.51.100.2; only with ``route_back``
    does that one know the way to the guests' subnet (else only NAT answers)."""
    host.run("ip", "link", "add", "vworld0", "type", "veth", "peer", "name", "eth0",
             "netns", world.name)
    host.run("ip", "addr", "add", "198.51.100.1/24", "dev", "vworld0")
    host.run("ip", "link", "set", "vworld0", "up")
    world.run("ip", "addr", "add", "198.51.100.2/24", "dev", "eth0")
    world.run("ip", "link", "set", "eth0", "up")
    if route_back:
        world.run("ip", "route", "add", "192.168.122.0/24", "via", "198.51.100.1")


def ping(guest: NetNS, addr: str) -> bool:
    return guest.run("busybox", "ping", "-c", "1", "-W", "2", addr, check=False).returncode == 0


def test_nat_network_lease_nat_reattach_and_stop(netns: NetNS, guest_ns: NetNS,
                                                 tmp_path: Path) -> None:
    net = Net(netns, tmp_path, nat_xml())
    net.ok("start")
    link = net.link()
    assert link["address"] == "52:54:00:0a:0b:0c" and link["mtu"] == 1400
    assert "UP" in link["flags"] and link["ifalias"] == "aiovirtd network default"
    assert [(a["local"], a["prefixlen"], a.get("broadcast")) for a in link["addr_info"]
            if a["family"] == "inet"] == [("192.168.122.1", 24, "192.168.122.255")]
    assert netns.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    rules = net.ruleset()
    assert "masquerade to :1024-65535" in rules and "table ip6" not in rules
    pid = net.dnsmasq_pid()
    assert pid is not None
    conf = (net.state / "default.conf").read_text()
    assert "interface=virbr0\n" in conf and "dhcp-option=option:mtu,1400\n" in conf

    plug(netns, guest_ns)
    addr = dhcp(guest_ns)
    (lease,) = net.ok("leases")
    assert lease == {**lease, "iface": "virbr0", "type": 0, "mac": GUEST_MAC, "ipaddr": addr,
                     "prefix": 24, "hostname": "guest1", "iaid": None}

    # the guest reaches a host that only knows the namespace's own address: NAT
    with NetNS("avdw") as world:
        outside(netns, world)
        guest_ns.run("ip", "addr", "add", f"{addr}/24", "dev", "eth0")
        guest_ns.run("ip", "route", "add", "default", "via", "192.168.122.1")
        assert ping(guest_ns, "198.51.100.2")

    # a restarted daemon adopts all of it, and adds no rule twice
    assert net.ok("reattach") is True
    assert net.ruleset().count('comment "virbr0"') == rules.count('comment "virbr0"')
    assert net.dnsmasq_pid() == pid

    net.ok("stop")
    net.assert_gone()
    net.ok("stop")  # stopping twice is fine


def test_isolated_network_rejects_forwarding(netns: NetNS, guest_ns: NetNS,
                                             tmp_path: Path) -> None:
    net = Net(netns, tmp_path, nat_xml("none"))
    net.ok("start")
    rules = net.ruleset()
    assert "masquerade" not in rules and "saddr" not in rules
    assert 'oifname "virbr0" reject' in rules and 'iifname "virbr0" reject' in rules
    assert "dhcp-option=3\n" in (net.state / "default.conf").read_text()
    plug(netns, guest_ns)
    guest_ns.run("ip", "addr", "add", "192.168.122.50/24", "dev", "eth0")
    guest_ns.run("ip", "route", "add", "default", "via", "192.168.122.1")
    netns.run("sysctl", "-w", "net.ipv4.ip_forward=1")  # isolation is not this sysctl
    with NetNS("avdw") as world:
        outside(netns, world, route_back=True)
        assert ping(guest_ns, "192.168.122.1")
        assert not ping(guest_ns, "198.51.100.2")
        netns.run("nft", "delete", "table", "ip", "aiovirtd")
        assert ping(guest_ns, "198.51.100.2")  # it was the rules that said no
    net.ok("stop")
    net.assert_gone()


def test_stale_bridge(netns: NetNS, tmp_path: Path) -> None:
    # made by hand: refused with what to do, and left alone
    netns.run("ip", "link", "add", "virbr0", "type", "bridge")
    net = Net(netns, tmp_path, nat_xml())
    out = net.call("start")
    assert out["error"] == (
        "error creating bridge interface virbr0: File exists: bridge 'virbr0' already exists "
        "and is not in use by this daemon; remove it with 'ip link delete virbr0' or choose "
        "another <bridge name=...>")
    assert net.link() is not None and "ifalias" not in net.link()
    assert "aiovirtd" not in net.ruleset() and net.dnsmasq_pid() is None
    netns.run("ip", "link", "delete", "virbr0")

    # left by a daemon that lost track of it (crash): ours and empty, so taken back
    net.ok("start")
    rules, pid = net.ruleset(), net.dnsmasq_pid()
    net.ok("start")
    assert net.ruleset() == rules  # the same rules, each once
    assert net.dnsmasq_pid() not in (None, pid)
    assert b"dnsmasq" not in Path(f"/proc/{pid}/cmdline").read_bytes()  # gone (or a zombie)
    net.ok("stop")
    net.assert_gone()


def test_reload_sighup_or_restart(netns: NetNS, tmp_path: Path) -> None:
    net = Net(netns, tmp_path, nat_xml("route"))
    net.ok("start")
    pid = net.dnsmasq_pid()
    # a static host: new hosts file, same dnsmasq (SIGHUP)
    net.xml = nat_xml("route", extra="<host mac='52:54:00:00:00:07' ip='192.168.122.7'/>")
    net.ok("reload")
    assert (net.state / "default.hostsfile").read_text() == "52:54:00:00:00:07,192.168.122.7\n"
    assert net.dnsmasq_pid() == pid
    # a new range changes the configuration itself: dnsmasq is restarted on it
    net.xml = net.xml.replace("192.168.122.254", "192.168.122.100")
    net.ok("reload")
    assert "dhcp-range=192.168.122.2,192.168.122.100," in \
        (net.state / "default.conf").read_text()
    assert net.dnsmasq_pid() not in (None, pid)
    net.ok("stop")
    net.assert_gone()


def test_failed_start_leaves_nothing(netns: NetNS, tmp_path: Path) -> None:
    # dnsmasq refuses a TFTP root that does not exist, after bridge and rules are up
    net = Net(netns, tmp_path, nat_xml().replace(
        "<dhcp>", f"<tftp root='{tmp_path}/missing'/><dhcp>"))
    out = net.call("start")
    assert out["error"].startswith("internal error: Child process (/usr/sbin/dnsmasq "
                                   f"--conf-file={net.state}/default.conf")
    assert "unexpected exit status" in out["error"]
    net.assert_gone()


def test_reattach_without_bridge_cleans_up(netns: NetNS, tmp_path: Path) -> None:
    net = Net(netns, tmp_path, nat_xml())
    net.ok("start")
    netns.run("ip", "link", "delete", "virbr0")
    assert net.ok("reattach") is False
    net.assert_gone()


def test_subnet_already_routed(netns: NetNS, tmp_path: Path) -> None:
    """Another link on the network's subnet: libvirtd's refusal, before anything is made."""
    netns.run("ip", "link", "add", "vlan9", "type", "veth", "peer", "name", "vlan9p")
    netns.run("ip", "addr", "add", "192.168.122.9/24", "dev", "vlan9")
    netns.run("ip", "link", "set", "vlan9", "up")
    net = Net(netns, tmp_path, nat_xml())
    assert net.call("start") == {
        "error": "internal error: Network is already in use by interface vlan9", "code": 1}
    net.assert_gone()
