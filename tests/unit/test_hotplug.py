"""Hotplug in the QEMU driver without QEMU: a recording monitor stands in.

Checked: the QMP sequences of live attach, detach and media change, the
asynchronous end of an unplug the guest confirms late, config changes and
libvirt's errors for each flag combination.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from qemu_fakes import FakeMonitor, make_driver, run

from drivers.qemu import hotplug
from drivers.qemu.affect import AFFECT_CONFIG, AFFECT_LIVE
from drivers.qemu.driver import QemuDriver
from protocol.errors import ErrorCode, ErrorDomain, VirError

XML = (
    "<domain type='qemu'><name>t</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>"
    "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
    "<disk type='file' device='disk'><source file='/img/a.raw'/><target dev='vda'/></disk>"
    "<disk type='file' device='cdrom'><target dev='hdc'/><readonly/></disk>"
    "</devices></domain>"
)
DISK = "<disk type='file'><driver name='qemu' type='qcow2'/><source file='/img/b.qcow2'/>" \
    "<target dev='vdb'/></disk>"
NIC = "<interface type='user'><mac address='52:54:00:01:02:03'/><model type='virtio'/></interface>"


class HotplugMonitor(FakeMonitor):
    """Answers the queries hotplug makes; ``on_device_del`` plays the guest letting go."""

    def __init__(self) -> None:
        super().__init__()
        self.block: list[dict[str, Any]] = []
        self.on_device_del: Any = None

    def answer(self, cmd: str, args: Any) -> Any:
        if cmd in self.replies:
            return super().answer(cmd, args)
        if cmd == "query-block":
            return self.block
        if cmd == "query-named-block-nodes":
            return [{"node-name": "libvirt-2-format"}, {"node-name": "libvirt-2-storage"}]
        if cmd == "device_del" and self.on_device_del is not None:
            asyncio.get_running_loop().call_soon(self.on_device_del, args["id"])
        return {}


@pytest.fixture
def driver(tmp_path: Path) -> QemuDriver:
    return make_driver(tmp_path)


@pytest.fixture
def events(driver: QemuDriver) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    driver.bus.subscribe(
        lambda kind, obj, **data: seen.append((kind, data["alias"])) if "alias" in data else None
    )
    return seen


def targets(d: Any) -> list[str]:
    return [x.target for x in d.devices.disks]


async def test_live_disk_attach_sends_libvirts_sequence(
    driver: QemuDriver, events: list[tuple[str, str]]
) -> None:
    dom = await driver.define_xml(XML)
    mon = run(dom, HotplugMonitor())
    await hotplug.attach(driver, dom, DISK, AFFECT_LIVE)
    assert mon.sent() == ["blockdev-add", "blockdev-add", "device_add"]
    storage, fmt, dev = (args for cmd, args in mon.calls if not cmd.startswith("query-"))
    assert storage["node-name"] == "libvirt-3-storage" and storage["filename"] == "/img/b.qcow2"
    assert fmt == {"node-name": "libvirt-3-format", "read-only": False, "driver": "qcow2",
                   "file": "libvirt-3-storage"}
    assert dev["driver"] == "virtio-blk-pci" and dev["id"] == "virtio-disk1"
    assert dev["drive"] == "libvirt-3-format" and dev["bus"] == "pci.0"
    assert targets(dom.live) == ["vda", "vdb", "hdc"]
    assert "index='3'" in driver.get_xml_desc(dom)
    assert targets(dom.config) == ["vda", "hdc"]
    assert events == [("domain-device-added", "virtio-disk1")]


async def test_live_attach_errors(driver: QemuDriver) -> None:
    dom = await driver.define_xml(XML)
    with pytest.raises(VirError) as e:
        await hotplug.attach(driver, dom, DISK, AFFECT_LIVE)
    assert e.value.message == "Requested operation is not valid: domain is not running"
    mon = run(dom, HotplugMonitor())
    taken = DISK.replace("vdb", "vda")
    with pytest.raises(VirError) as e:
        await hotplug.attach(driver, dom, taken, AFFECT_LIVE)
    assert e.value.message == (
        "XML error: target 'vda' duplicated for disk sources '/img/a.raw' and '/img/b.qcow2'"
    )
    floppy = DISK.replace("<disk type='file'>", "<disk type='file' device='floppy'>")
    with pytest.raises(VirError) as e:
        await hotplug.attach(driver, dom, floppy.replace("vdb", "fda"), AFFECT_LIVE)
    assert e.value.message == "Operation not supported: floppy device hotplug isn't supported"
    usb = DISK.replace("<target dev='vdb'/>", "<target dev='sdb' bus='usb'/>")
    with pytest.raises(VirError) as e:
        await hotplug.attach(driver, dom, usb, AFFECT_LIVE)
    assert e.value.code == ErrorCode.OPERATION_UNSUPPORTED
    assert e.value.message == "Operation not supported: disk bus 'usb' cannot be hotplugged."
    sata = DISK.replace("<target dev='vdb'/>", "<target dev='sdb' bus='sata'/>")
    with pytest.raises(VirError) as e:
        await hotplug.attach(driver, dom, sata, AFFECT_LIVE)
    assert e.value.message == (
        "internal error: Could not find sata controller with index 0 required for device"
    )
    with pytest.raises(VirError) as e:
        await hotplug.attach(driver, dom, "<foo/>", 0)
    assert e.value.message == "unsupported configuration: unknown device type 'foo'"
    assert mon.sent() == []


async def test_detach_returns_after_the_timeout_and_finishes_later(
    driver: QemuDriver, events: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hotplug, "UNPLUG_TIMEOUT", 0.05)
    dom = await driver.define_xml(XML)
    mon = run(dom, HotplugMonitor())
    mon.block = [{"qdev": "/machine/peripheral/virtio-disk0/virtio-backend",
                  "inserted": {"node-name": "libvirt-2-format"}}]
    await hotplug.detach(driver, dom, "<disk><target dev='vda'/></disk>", 0)
    assert mon.sent() == ["device_del"]
    assert "vda" in targets(dom.live)  # the guest has not let go yet
    hotplug.on_device_event(driver, dom, "DEVICE_DELETED", {"path": "/machine/x/virtio-backend"})
    hotplug.on_device_event(driver, dom, "DEVICE_DELETED", {"device": "virtio-disk0"})
    for _ in range(20):
        await asyncio.sleep(0)
    assert targets(dom.live) == ["hdc"]
    assert mon.sent() == ["device_del", "blockdev-del", "blockdev-del"]
    assert [args["node-name"] for cmd, args in mon.calls if cmd == "blockdev-del"] == [
        "libvirt-2-format", "libvirt-2-storage"
    ]
    assert events == [("domain-device-removed", "virtio-disk0")]


async def test_detach_waits_for_a_prompt_guest(
    driver: QemuDriver, events: list[tuple[str, str]]
) -> None:
    dom = await driver.define_xml(XML)
    mon = run(dom, HotplugMonitor())
    mon.on_device_del = lambda alias: hotplug.on_device_event(
        driver, dom, "DEVICE_DELETED", {"device": alias}
    )
    await hotplug.attach(driver, dom, NIC, AFFECT_LIVE)
    assert mon.sent() == ["netdev_add", "device_add"]
    assert mon.calls[0][1] == {"type": "user", "id": "hostnet0"}
    assert mon.calls[1][1]["driver"] == "virtio-net-pci" and mon.calls[1][1]["id"] == "net0"
    await hotplug.detach(driver, dom, NIC, AFFECT_LIVE)
    assert dom.live is not None and dom.live.devices.interfaces == []
    assert mon.sent()[2:] == ["device_del", "netdev_del"]
    assert events == [("domain-device-added", "net0"), ("domain-device-removed", "net0")]
    with pytest.raises(VirError) as e:
        await hotplug.detach(driver, dom, NIC, AFFECT_LIVE)
    assert e.value.code == ErrorCode.DEVICE_MISSING


async def test_config_attach_and_detach(driver: QemuDriver) -> None:
    dom = await driver.define_xml(XML)
    await hotplug.attach(driver, dom, DISK, 0)  # current = config while shut off
    assert dom.config is not None
    added = dom.config.devices.disks[1]
    assert (added.target, added.bus, added.driver["type"]) == ("vdb", "virtio", "qcow2")
    assert added.info.address is not None
    saved = (driver.dirs.config_dir / "t.xml").read_text()
    assert "/img/b.qcow2" in saved
    with pytest.raises(VirError) as e:
        await hotplug.attach(driver, dom, DISK, AFFECT_CONFIG)
    assert e.value.message == "Requested operation is not valid: target vdb already exists"
    await hotplug.detach(driver, dom, DISK, AFFECT_CONFIG)
    assert targets(dom.config) == ["vda", "hdc"]
    with pytest.raises(VirError) as e:
        await hotplug.detach(driver, dom, DISK, AFFECT_CONFIG)
    assert e.value.message == "device not found: no target device vdb"


async def test_config_of_a_transient_domain(driver: QemuDriver) -> None:
    dom = await driver.define_xml(XML)
    run(dom, HotplugMonitor())
    dom.set_config(None)
    with pytest.raises(VirError) as e:
        await hotplug.attach(driver, dom, DISK, AFFECT_CONFIG)
    assert e.value.message == (
        "Requested operation is not valid: transient domains do not have any persistent config"
    )
    assert e.value.domain == ErrorDomain.DOMAIN


async def test_live_change_of_a_stopped_domain(driver: QemuDriver) -> None:
    dom = await driver.define_xml(XML)
    with pytest.raises(VirError) as e:
        await hotplug.attach(driver, dom, DISK, AFFECT_LIVE)
    assert e.value.message == "Requested operation is not valid: domain is not running"
    assert e.value.domain == ErrorDomain.DOMAIN


async def test_cdrom_change_and_eject(driver: QemuDriver) -> None:
    dom = await driver.define_xml(XML)
    mon = run(dom, HotplugMonitor())
    mon.block = [{"qdev": "ide0-1-0", "tray_open": True, "removable": True}]
    media = "<disk type='file' device='cdrom'><source file='/img/x.iso'/><target dev='hdc'/></disk>"
    await hotplug.update(driver, dom, media, AFFECT_LIVE)
    assert mon.sent() == [
        "blockdev-open-tray", "blockdev-remove-medium", "blockdev-add", "blockdev-add",
        "blockdev-insert-medium", "blockdev-close-tray",
    ]
    assert dom.live is not None and dom.live.devices.disks[1].source == "/img/x.iso"
    assert dom.config is not None and dom.config.devices.disks[1].source is None
    mon.calls.clear()
    mon.block[0]["inserted"] = {"node-name": "libvirt-3-format"}
    eject = "<disk type='file' device='cdrom'><target dev='hdc'/></disk>"
    await hotplug.update(driver, dom, eject, AFFECT_LIVE | AFFECT_CONFIG)
    assert mon.sent() == [
        "blockdev-open-tray", "blockdev-remove-medium", "blockdev-del", "blockdev-del",
    ]
    assert dom.live.devices.disks[1].source is None
    with pytest.raises(VirError) as e:
        await hotplug.update(driver, dom, DISK.replace("vdb", "vda"), AFFECT_LIVE)
    assert e.value.code == ErrorCode.CONFIG_UNSUPPORTED


async def test_link_state_and_alias_detach(driver: QemuDriver) -> None:
    dom = await driver.define_xml(XML.replace("</devices>", NIC + "</devices>"))
    mon = run(dom, HotplugMonitor())
    down = NIC.replace("</interface>", "<link state='down'/></interface>")
    await hotplug.update(driver, dom, down, 0)
    assert mon.calls == [("set_link", {"name": "net0", "up": False})]
    assert "<link state='down'/>" in driver.get_xml_desc(dom)
    with pytest.raises(VirError) as e:
        await hotplug.update(driver, dom, down.replace("virtio", "e1000"), 0)
    assert e.value.message == (
        "Operation not supported: cannot modify network device model from virtio to e1000"
    )
    await hotplug.detach_alias(driver, dom, "net0", AFFECT_LIVE)
    assert mon.sent()[-1] == "device_del"
    with pytest.raises(VirError) as e:
        await hotplug.detach_alias(driver, dom, "ua-none", AFFECT_CONFIG)
    assert e.value.message == "internal error: no device found with alias ua-none"


async def test_refresh_from_qemu_after_a_restart(driver: QemuDriver) -> None:
    xml = XML.replace("</devices>", NIC + NIC.replace("01:02:03", "01:02:04") + "</devices>")
    dom = await driver.define_xml(xml)
    mon = run(dom, HotplugMonitor())
    d = dom.live
    assert d is not None
    assert [n.info.alias for n in d.devices.interfaces] == ["net0", "net1"]
    peripheral = ["virtio-disk0", "net1", "ide0-1-0"]  # net0 went while no daemon watched
    mon.replies = {
        "qom-list": lambda args: [{"name": n, "type": "child<x>"} for n in peripheral]
        + [{"name": "type", "type": "string"}],
        "qom-get": lambda args: "52:54:00:01:02:03",  # the MAC the second NIC was given
        "query-block": lambda args: [
            {"qdev": "/machine/peripheral/virtio-disk0/virtio-backend",
             "inserted": {"node-name": "libvirt-5-format"}},
            {"qdev": "ide0-1-0"},
        ],
    }
    await hotplug.refresh_from_qemu(dom.process, d, {"net1": "vnet7"})  # type: ignore[arg-type]
    assert [(n.mac, n.info.alias, n.target_dev) for n in d.devices.interfaces] == [
        ("52:54:00:01:02:03", "net1", "vnet7")
    ]
    assert [(x.target, x.node_index) for x in d.devices.disks] == [("vda", 5), ("hdc", None)]


async def test_ide_attach_is_left_to_qemu(driver: QemuDriver) -> None:
    """libvirtd lets QEMU refuse an IDE hotplug; the nodes made for it go again."""
    dom = await driver.define_xml(XML)
    mon = run(dom, HotplugMonitor())

    async def refuse(cmd: str, args: Any = None, timeout: float | None = None) -> Any:
        mon.calls.append((cmd, args))
        if cmd == "device_add":
            raise VirError(ErrorCode.INTERNAL_ERROR, "internal error: unable to execute QEMU"
                           " command 'device_add': Bus 'ide.0' does not support hotplugging")
        return []

    mon.execute = refuse  # type: ignore[method-assign]
    with pytest.raises(VirError) as e:
        await hotplug.attach(driver, dom, DISK.replace("vdb", "hdb"), AFFECT_LIVE)
    assert "does not support hotplugging" in e.value.message
    device = next(args for cmd, args in mon.calls if cmd == "device_add")
    assert (device["driver"], device["bus"], device["unit"]) == ("ide-hd", "ide.0", 1)
    assert [cmd for cmd, _ in mon.calls if cmd.startswith("blockdev")] == [
        "blockdev-add", "blockdev-add", "blockdev-del", "blockdev-del"
    ]
    assert dom.live is not None and targets(dom.live) == ["vda", "hdc"]


async def test_rng_backend_object_comes_and_goes_with_it(driver: QemuDriver) -> None:
    dom = await driver.define_xml(XML)
    mon = run(dom, HotplugMonitor())
    mon.on_device_del = lambda alias: hotplug.on_device_event(
        driver, dom, "DEVICE_DELETED", {"device": alias}
    )
    rng = "<rng model='virtio'><backend model='random'/></rng>"
    await hotplug.attach(driver, dom, rng, AFFECT_LIVE)
    assert mon.calls[0] == (
        "object-add", {"qom-type": "rng-random", "id": "objrng0", "filename": "/dev/random"}
    )
    assert mon.calls[1][0] == "device_add" and mon.calls[1][1]["rng"] == "objrng0"
    await hotplug.detach(driver, dom, rng, AFFECT_LIVE)
    assert mon.sent()[2:] == ["device_del", "object-del"]
    assert dom.live is not None and dom.live.devices.rngs == []


async def test_a_busy_controller_stays(driver: QemuDriver) -> None:
    xml = XML.replace("<target dev='vda'/>", "<target dev='sda' bus='scsi'/>")
    dom = await driver.define_xml(xml)
    mon = run(dom, HotplugMonitor())
    with pytest.raises(VirError) as e:
        await hotplug.detach(driver, dom, "<controller type='scsi' index='0'/>", 0)
    assert e.value.message == "operation failed: device cannot be detached: device is busy"
    with pytest.raises(VirError) as e:
        await hotplug.attach(driver, dom, "<controller type='scsi' index='0'/>", 0)
    assert e.value.message == "operation failed: target scsi:0 already exists"
    assert mon.sent() == []
