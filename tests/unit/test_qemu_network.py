"""Guest NICs on networks (drivers/qemu/netif.py) and their XML, status and QEMU properties.

The network driver is a stand-in here with the API the real one offers
(plug, unplug, leases); taps are not created, ``open_tap`` is recorded.
"""

from __future__ import annotations

import asyncio
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any

import pytest
from test_domain_xml import CAPS

from drivers.qemu import command, netif
from drivers.qemu.domain import State
from drivers.qemu.domain_xml import LiveState, assign_aliases, parse
from drivers.qemu.domain_xml import format as format_xml
from drivers.qemu.status import Status, format_status, parse_status
from protocol.errors import ErrorCode, VirError

UUID = "c7a5fdbd-cdaf-9455-926a-d65c16db1809"
PORT = uuidlib.UUID("5e7652a4-9a3c-4c92-b364-e97e4afb270f")


def domain(nics: str) -> str:
    return (
        f"<domain type='qemu'><name>g</name><uuid>{UUID}</uuid><memory>131072</memory>"
        f"<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>{nics}</devices></domain>"
    )


NET_NIC = ("<interface type='network'><mac address='52:54:00:aa:bb:01'/>"
           "<source network='n1'/><model type='virtio'/></interface>")


@dataclass
class Port:
    uuid: bytes
    bridge: str
    mtu: int | None
    network: str


@dataclass
class Lease:
    type: int
    ipaddr: str
    prefix: int


@dataclass
class FakeNetworks:
    """The network driver's API; ``active`` names the started networks."""

    active: dict[str, tuple[str, int | None]] = field(default_factory=dict)
    plugged: dict[bytes, Port] = field(default_factory=dict)
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    lease_table: dict[str, list[Lease]] = field(default_factory=dict)

    async def plug(self, network: str, owner_name: str, owner_uuid: bytes, mac: str,
                   port_uuid: bytes | None = None) -> Port:
        self.calls.append(("plug", network, owner_name, owner_uuid, mac, port_uuid))
        if network not in self.active:
            raise VirError(ErrorCode.OPERATION_INVALID,
                           f"Requested operation is not valid: network '{network}' is not active")
        bridge, mtu = self.active[network]
        port = Port(port_uuid or PORT.bytes, bridge, mtu, network)
        self.plugged[port.uuid] = port
        return port

    async def unplug(self, port_uuid: bytes) -> None:
        self.calls.append(("unplug", port_uuid))
        if self.plugged.pop(port_uuid, None) is None:
            raise VirError(ErrorCode.NO_NETWORK_PORT, "network port not found")

    def leases(self, network: str, mac: str | None = None) -> list[Lease]:
        return self.lease_table.get(f"{network}/{mac}", [])


class FakeDriver:
    def __init__(self, networks: FakeNetworks | None) -> None:
        self.peers = {"network": networks} if networks is not None else {}


@pytest.fixture
def taps(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """open_tap calls (name, mac, bridge, mtu); each returns a made-up fd and name."""
    opened: list[tuple[Any, ...]] = []

    def fake_open_tap(name: str, mac: str, bridge: str | None,
                      mtu: int | None = None) -> tuple[int, str]:
        opened.append((name, mac, bridge, mtu))
        return 100 + len(opened), name

    monkeypatch.setattr(netif, "open_tap", fake_open_tap)
    monkeypatch.setattr(netif.os, "close", lambda fd: None)
    monkeypatch.setattr(netif, "_tap_name", lambda: f"vnet{len(opened)}")
    return opened


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- XML, status, command line --------------------------------------------------------------


def test_live_xml_names_port_and_bridge_the_inactive_does_not() -> None:
    d = parse(domain(NET_NIC), CAPS)
    assign_aliases(d)
    net = d.devices.interfaces[0]
    net.portid, net.bridge, net.target_dev = str(PORT), "virbr0", "vnet0"
    live = format_xml(d, inactive=False, live=LiveState(id=1))
    assert (f"<source network='n1' portid='{PORT}' bridge='virbr0'/>\n"
            "      <target dev='vnet0'/>") in live
    assert "<source network='n1'/>" in format_xml(d, inactive=True)


def test_portid_and_bridge_of_a_live_xml_are_not_defined() -> None:
    nic = NET_NIC.replace("<source network='n1'/>",
                          f"<source network='n1' portid='{PORT}' bridge='virbr0'/>")
    net = parse(domain(nic), CAPS).devices.interfaces[0]
    assert net.source == {"network": "n1"} and net.portid is None


def test_bridge_nic_source_kept() -> None:
    nic = "<interface type='bridge'><source bridge='br0'/></interface>"
    d = parse(domain(nic), CAPS)
    assert "<source bridge='br0'/>" in format_xml(d, inactive=False, live=LiveState(id=1))


def test_status_keeps_ports() -> None:
    st = Status(State.RUNNING, 1, 10, "/m", 1, "<domain/>", taps={"net0": "vnet3", "net1": "v"},
                ports={"net0": str(PORT)}, bridges={"net0": "virbr0"})
    text = format_status(st)
    assert f'<tap alias="net0" dev="vnet3" portid="{PORT}" bridge="virbr0"/>' in text
    assert '<tap alias="net1" dev="v"/>' in text
    back = parse_status(text)
    assert (back.ports, back.bridges) == ({"net0": str(PORT)}, {"net0": "virbr0"})


@pytest.mark.parametrize(("model", "mtu", "want"), [
    ("virtio", 1300, {"host_mtu": 1300}), ("virtio", None, {}), ("e1000", 1300, {}),
])
def test_host_mtu_only_for_virtio(model: str, mtu: int | None, want: dict[str, int]) -> None:
    extra = f"<mtu size='{mtu}'/>" if mtu else ""
    nic = NET_NIC.replace("'virtio'", f"'{model}'").replace("</interface>", extra + "</interface>")
    d = parse(domain(nic), CAPS)
    assign_aliases(d)
    props = command.nic_device_props(d, d.devices.interfaces[0], "hostnet0", {})
    assert list(props)[: 1 + len(want)] == ["driver", *want]  # host_mtu right after driver
    assert {k: v for k, v in props.items() if k == "host_mtu"} == want


# -- plugging --------------------------------------------------------------------------------


def test_plug_takes_a_port_and_its_bridge(taps: list[tuple[Any, ...]]) -> None:
    networks = FakeNetworks(active={"n1": ("virbr7", 1400)})
    d = parse(domain(NET_NIC), CAPS)
    assign_aliases(d)
    fds = run(netif.plug_all(FakeDriver(networks), d))
    net = d.devices.interfaces[0]
    assert fds == {"net0": 101}
    assert taps == [("vnet0", "52:54:00:aa:bb:01", "virbr7", 1400)]
    assert networks.calls == [("plug", "n1", "g", uuidlib.UUID(UUID).bytes,
                               "52:54:00:aa:bb:01", None)]
    assert (net.portid, net.bridge, net.target_dev) == (str(PORT), "virbr7", "vnet0")


def test_nic_mtu_wins_over_the_network_s(taps: list[tuple[Any, ...]]) -> None:
    networks = FakeNetworks(active={"n1": ("virbr7", 1400)})
    d = parse(domain(NET_NIC.replace("</interface>", "<mtu size='1300'/></interface>")), CAPS)
    run(netif.plug_all(FakeDriver(networks), d))
    assert taps[0][3] == 1300


def test_bridge_and_user_nics_need_no_network(taps: list[tuple[Any, ...]]) -> None:
    nics = ("<interface type='bridge'><mac address='52:54:00:aa:bb:02'/>"
            "<source bridge='br0'/></interface><interface type='user'/>")
    d = parse(domain(nics), CAPS)
    assign_aliases(d)
    assert run(netif.plug_all(FakeDriver(None), d)) == {"net0": 101}
    assert taps == [("vnet0", "52:54:00:aa:bb:02", "br0", None)]


def test_inactive_network_fails_with_libvirt_s_message(taps: list[tuple[Any, ...]]) -> None:
    d = parse(domain(NET_NIC), CAPS)
    with pytest.raises(VirError) as e:
        run(netif.plug_all(FakeDriver(FakeNetworks()), d))
    assert e.value.message == "Requested operation is not valid: network 'n1' is not active"
    assert taps == []


def test_without_a_network_driver_the_network_is_not_found() -> None:
    d = parse(domain(NET_NIC), CAPS)
    with pytest.raises(VirError) as e:
        run(netif.plug_all(FakeDriver(None), d))
    assert e.value.code == ErrorCode.NO_NETWORK
    assert e.value.message == "Network not found: no network with matching name 'n1'"


def test_a_failed_nic_gives_back_the_ports_before_it(taps: list[tuple[Any, ...]]) -> None:
    second = NET_NIC.replace("aa:bb:01", "aa:bb:02").replace("'n1'", "'n2'")
    networks = FakeNetworks(active={"n1": ("virbr7", None)})
    d = parse(domain(NET_NIC + second), CAPS)
    assign_aliases(d)
    with pytest.raises(VirError):
        run(netif.plug_all(FakeDriver(networks), d))
    assert networks.plugged == {}
    assert networks.calls[-1] == ("unplug", PORT.bytes)


def test_a_failed_tap_gives_back_its_port(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> tuple[int, str]:
        raise VirError(ErrorCode.SYSTEM_ERROR, "Unable to add tap interface")

    monkeypatch.setattr(netif, "open_tap", broken)
    networks = FakeNetworks(active={"n1": ("virbr7", None)})
    d = parse(domain(NET_NIC), CAPS)
    with pytest.raises(VirError):
        run(netif.plug(FakeDriver(networks), d, d.devices.interfaces[0]))
    assert networks.plugged == {} and d.devices.interfaces[0].portid is None


def test_unplug_of_a_port_the_network_dropped_is_quiet(taps: list[tuple[Any, ...]]) -> None:
    networks = FakeNetworks(active={"n1": ("virbr7", None)})
    d = parse(domain(NET_NIC), CAPS)
    run(netif.plug_all(FakeDriver(networks), d))
    networks.plugged.clear()  # net-destroy took the port with it
    run(netif.unplug_all(FakeDriver(networks), d.devices.interfaces))
    assert d.devices.interfaces[0].portid is None
    run(netif.unplug_all(FakeDriver(networks), d.devices.interfaces))  # twice: nothing asked
    assert [c[0] for c in networks.calls] == ["plug", "unplug"]


def test_release_ports_of_a_dead_guest_quietly() -> None:
    networks = FakeNetworks(plugged={PORT.bytes: Port(PORT.bytes, "virbr0", None, "n1")})
    run(netif.release_ports(FakeDriver(networks), [str(PORT), str(uuidlib.UUID(int=1))]))
    assert networks.plugged == {}
    run(netif.release_ports(FakeDriver(None), [str(PORT)]))  # no network driver: nothing to do


def test_reattach_plugs_the_saved_port_and_rebridges(monkeypatch: pytest.MonkeyPatch) -> None:
    moved: list[tuple[str, str]] = []
    monkeypatch.setattr(netif, "_master", lambda dev: None)  # the network was restarted
    monkeypatch.setattr(netif, "tap_to_bridge", lambda tap, br: moved.append((tap, br)))
    saved = uuidlib.UUID(int=7)
    networks = FakeNetworks(active={"n1": ("virbr7", None)})
    d = parse(domain(NET_NIC), CAPS)
    assign_aliases(d)
    d.devices.interfaces[0].target_dev = "vnet5"
    run(netif.reattach(FakeDriver(networks), d, {"net0": str(saved)}, {"net0": "virbr1"}))
    assert networks.calls[0][-1] == saved.bytes
    assert d.devices.interfaces[0].portid == str(saved)
    assert moved == [("vnet5", "virbr7")]
    assert netif._last_tap >= 5  # the next new tap is not vnet5 again


def test_reattach_to_a_stopped_network_keeps_the_guest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netif, "tap_to_bridge", lambda tap, br: pytest.fail("no bridge"))
    d = parse(domain(NET_NIC), CAPS)
    assign_aliases(d)
    run(netif.reattach(FakeDriver(FakeNetworks()), d, {"net0": str(PORT)}, {"net0": "virbr1"}))
    net = d.devices.interfaces[0]
    assert (net.portid, net.bridge) == (str(PORT), "virbr1")  # the live XML stays as it was


def test_tap_names_count_up_past_existing(monkeypatch: pytest.MonkeyPatch) -> None:
    existing = {"vnet1", "vnet2"}

    def index(name: str) -> int:
        if name in existing:
            return 1
        raise OSError("no such device")

    monkeypatch.setattr(netif.socket, "if_nametoindex", index)
    monkeypatch.setattr(netif, "_last_tap", -1)
    assert [netif._tap_name() for _ in range(3)] == ["vnet0", "vnet3", "vnet4"]


def test_link_down_nics_are_taken_down_at_start() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []

    class Monitor:
        async def execute(self, cmd: str, args: dict[str, Any]) -> None:
            sent.append((cmd, args))

    class Proc:
        monitor = Monitor()

    nics = NET_NIC + NET_NIC.replace("aa:bb:01", "aa:bb:02").replace(
        "</interface>", "<link state='down'/></interface>")
    d = parse(domain(nics), CAPS)
    assign_aliases(d)
    run(netif.set_link_states(Proc(), d))  # type: ignore[arg-type]
    assert sent == [("set_link", {"name": "net1", "up": False})]


# -- leases ------------------------------------------------------------------------------------


def test_lease_interfaces_of_network_nics_with_leases() -> None:
    nics = (NET_NIC + NET_NIC.replace("aa:bb:01", "aa:bb:02")
            + "<interface type='bridge'><source bridge='br0'/></interface>")
    d = parse(domain(nics), CAPS)
    d.devices.interfaces[0].target_dev = "vnet0"
    lease = Lease(0, "192.168.122.10", 24)
    networks = FakeNetworks(lease_table={"n1/52:54:00:aa:bb:01": [lease]})
    assert netif.lease_interfaces(FakeDriver(networks), d) == [
        ("vnet0", "52:54:00:aa:bb:01", [lease])]
