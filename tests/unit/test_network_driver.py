"""The network driver's books, with the host side (``runtime``) replaced by a recorder.

What the bridge, dnsmasq and firewall do is tested in a namespace by
tests/e2e/test_network_runtime.py; here only the driver's decisions: files,
states, events, ports, and what the QEMU driver gets from plug/unplug/leases.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from daemon.paths import Paths
from drivers.events import EventBus
from drivers.network import driver as netdriver
from drivers.network.leases import Lease
from drivers.network.network_xml import NetworkDef
from protocol.errors import ErrorCode, VirError

OWNER = uuid.UUID("11111111-2222-3333-4444-555555555555").bytes
ISO = ("<network><name>iso</name><bridge name='avdiso0'/><ip address='10.9.9.1' prefix='24'>"
       "<dhcp><range start='10.9.9.10' end='10.9.9.20'/></dhcp></ip></network>")


class FakeRuntime:
    """Records what the driver asks of the host; ``running`` is what reattach finds."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.running: set[str] = set()

    async def start(self, net: NetworkDef, dirs: Any) -> None:
        self.calls.append(("start", net.name))
        self.running.add(net.name)

    async def stop(self, net: NetworkDef, dirs: Any) -> None:
        self.calls.append(("stop", net.name))
        self.running.discard(net.name)

    async def reattach(self, net: NetworkDef, dirs: Any) -> bool:
        self.calls.append(("reattach", net.name))
        return net.name in self.running

    async def reload(self, net: NetworkDef, dirs: Any) -> None:
        self.calls.append(("reload", net.name))

    def leases(self, net: NetworkDef, dirs: Any) -> list[Lease]:
        return [Lease(net.bridge or "", 0, 0, "52:54:00:00:00:01", None, "10.9.9.11", 24,
                      "g1", None),
                Lease(net.bridge or "", 0, 0, "52:54:00:00:00:02", None, "10.9.9.12", 24,
                      "g2", None)]


@pytest.fixture
def rt(monkeypatch: pytest.MonkeyPatch) -> FakeRuntime:
    fake = FakeRuntime()
    monkeypatch.setattr(netdriver, "runtime", fake)
    monkeypatch.setattr(netdriver, "_netdev_exists", lambda name: False)
    return fake


def _driver(root: Path, events: list[tuple[str, int]] | None = None) -> netdriver.NetworkDriver:
    bus = EventBus()
    if events is not None:
        bus.subscribe(lambda kind, obj, **data: events.append((obj.name, data["event"])))
    drv = netdriver.NetworkDriver(Paths(root), bus)
    asyncio.run(drv.startup())
    return drv


def test_first_start_makes_and_starts_default(tmp_path: Path, rt: FakeRuntime,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netdriver, "_own_netns", lambda: True)
    drv = _driver(tmp_path)
    net = drv.lookup_by_name("default")
    assert net.active and net.autostart and net.persistent
    assert rt.calls == [("start", "default")]
    assert net.live.forward.nat_port == (1024, 65535)
    assert net.config is not None and net.config.forward.nat_port is None
    assert (tmp_path / "etc/libvirt/qemu/networks/default.xml").exists()
    # a second start adopts it: reattached, not started again
    rt.calls.clear()
    drv = _driver(tmp_path)
    assert drv.lookup_by_name("default").active
    assert rt.calls == [("reattach", "default")]


def test_default_only_defined_on_the_hosts_network(tmp_path: Path, rt: FakeRuntime,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemon under a root of its own on the host's network (a benchmark, make run)
    defines ``default`` but leaves the host's network alone."""
    monkeypatch.setattr(netdriver, "_own_netns", lambda: False)
    drv = _driver(tmp_path)
    net = drv.lookup_by_name("default")
    assert (net.active, net.autostart) == (False, False)
    assert rt.calls == []


def test_existing_config_dir_means_no_default(tmp_path: Path, rt: FakeRuntime) -> None:
    (tmp_path / "etc/libvirt/qemu/networks").mkdir(parents=True)
    drv = _driver(tmp_path)
    assert drv.list_networks() == []
    assert rt.calls == []


def _fresh(tmp_path: Path, events: list[tuple[str, int]] | None = None
           ) -> netdriver.NetworkDriver:
    (tmp_path / "etc/libvirt/qemu/networks").mkdir(parents=True)
    return _driver(tmp_path, events)


def test_life_cycle_and_events(tmp_path: Path, rt: FakeRuntime) -> None:
    events: list[tuple[str, int]] = []
    drv = _fresh(tmp_path, events)
    net = drv.define_xml(ISO)
    asyncio.run(drv.create(net))
    with pytest.raises(VirError, match="network is already active"):
        asyncio.run(drv.create(net))
    drv.undefine(net)  # still running, now transient
    assert net.active and not net.persistent
    asyncio.run(drv.destroy(net))
    with pytest.raises(VirError) as e:
        drv.lookup_by_name("iso")
    assert e.value.code == ErrorCode.NO_NETWORK
    assert events == [("iso", netdriver.EVENT_DEFINED), ("iso", netdriver.EVENT_STARTED),
                      ("iso", netdriver.EVENT_UNDEFINED), ("iso", netdriver.EVENT_STOPPED)]
    assert rt.calls == [("start", "iso"), ("stop", "iso")]


def test_update_live_reloads_dnsmasq(tmp_path: Path, rt: FakeRuntime) -> None:
    drv = _fresh(tmp_path)
    net = drv.define_xml(ISO)
    asyncio.run(drv.create(net))
    host = "<host mac='52:54:00:00:00:05' name='h5' ip='10.9.9.15'/>"
    asyncio.run(drv.update(net, 3, 4, -1, host, 0))  # current = live while running
    assert ("reload", "iso") in rt.calls
    assert "h5" in net.xml() and "h5" not in net.xml(inactive=True)
    asyncio.run(drv.update(net, 2, 4, -1, "<host mac='52:54:00:00:00:05'/>",
                           netdriver.UPDATE_LIVE))
    assert "h5" not in net.xml()


def test_plug_unplug_and_leases(tmp_path: Path, rt: FakeRuntime) -> None:
    drv = _fresh(tmp_path)
    with pytest.raises(VirError) as e:
        asyncio.run(drv.plug("nope", "vm", OWNER, "52:54:00:00:00:01"))
    assert e.value.message == "Network not found: no network with matching name 'nope'"
    net = drv.define_xml(ISO.replace("<bridge", "<mtu size='1400'/><bridge"))
    with pytest.raises(VirError) as e:
        asyncio.run(drv.plug("iso", "vm", OWNER, "52:54:00:00:00:01"))
    assert (e.value.code, e.value.message) == (
        ErrorCode.OPERATION_INVALID, "Requested operation is not valid: network 'iso' is not active")
    asyncio.run(drv.create(net))
    port = asyncio.run(drv.plug("iso", "vm", OWNER, "52:54:00:00:00:01"))
    assert (port.bridge, port.mtu, port.network) == ("avdiso0", 1400, "iso")
    assert "<plug type='network' bridge='avdiso0'/>" in port.xml()
    assert list(net.ports) == [port.uuid]
    assert "<network connections='1'>" in net.xml()
    again = asyncio.run(drv.plug("iso", "vm", OWNER, "52:54:00:00:00:01", port.uuid))
    assert again is port
    # ports survive a daemon restart with their network
    drv2 = _driver(tmp_path)
    assert list(drv2.lookup_by_name("iso").ports) == [port.uuid]
    assert [x.hostname for x in drv.leases("iso", "52:54:00:00:00:02")] == ["g2"]
    asyncio.run(drv.unplug(port.uuid))
    assert net.ports == {}
    with pytest.raises(VirError) as e:
        asyncio.run(drv.unplug(port.uuid))
    assert e.value.code == ErrorCode.NO_NETWORK_PORT


def test_define_clashes(tmp_path: Path, rt: FakeRuntime) -> None:
    drv = _fresh(tmp_path)
    net = drv.define_xml(ISO)
    other = ISO.replace("<name>iso</name>", f"<name>iso</name><uuid>{uuid.uuid4()}</uuid>")
    with pytest.raises(VirError, match="network 'iso' already exists with uuid"):
        drv.define_xml(other)
    same_uuid = ISO.replace("<name>iso</name>", f"<name>iso2</name><uuid>"
                            f"{uuid.UUID(bytes=net.uuid)}</uuid>").replace("avdiso0", "x0")
    with pytest.raises(VirError, match="network 'iso' is already defined with uuid"):
        drv.define_xml(same_uuid)
    asyncio.run(drv.create(net))
    with pytest.raises(VirError, match="network is already active as 'iso'"):
        asyncio.run(drv.create_xml(net.xml()))
