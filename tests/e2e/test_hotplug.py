"""Hotplug with stock virsh on the Linux test guest: what the guest sees, the XML, the events.

One guest (i440fx, TCG, an empty IDE CD-ROM) serves the whole module; each test
leaves it with the devices it started with.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from e2e.access import BOOT_TIMEOUT, Console
from e2e.daemon import DaemonProcess
from e2e.watch import VirshEvents
from guest import ensure_guest

pytestmark = pytest.mark.slow

NAME = "hotplug"


def guest_xml(name: str = NAME, machine: str = "pc") -> str:
    """The test guest; on i440fx with an empty IDE CD-ROM (q35 has no IDE)."""
    cdrom = "<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>"
    g = ensure_guest()
    return (
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory>"
        f"<vcpu>1</vcpu><os><type arch='x86_64' machine='{machine}'>hvm</type>"
        f"<kernel>{g.kernel}</kernel><initrd>{g.initrd}</initrd>"
        f"<cmdline>{g.cmdline}</cmdline></os><features><acpi/></features>"
        "<on_reboot>destroy</on_reboot><devices>"
        f"{cdrom if machine == 'pc' else ''}"
        "<serial type='pty'/><console type='pty'/></devices></domain>"
    )


class Events(VirshEvents):
    """``virsh event --loop --all`` in the background."""

    def __init__(self, daemon: DaemonProcess) -> None:
        super().__init__(daemon, "event", "--loop", "--all")
        time.sleep(0.5)  # registered before anything happens

    def wait_for(self, line: str, timeout: float = 30.0) -> list[str]:
        return super().wait_for(re.escape(f"event {line}"), timeout)


class Guest:
    def __init__(self, daemon: DaemonProcess, console: Console, events: Events) -> None:
        self.daemon, self.console, self.events = daemon, console, events

    def virsh(self, *args: str) -> str:
        return self.daemon.virsh(*args).stdout

    def fails(self, *args: str) -> str:
        res = self.daemon.virsh(*args, check=False)
        assert res.returncode != 0, res.stdout
        return res.stderr

    def sh(self, command: str) -> str:
        return self.console.run(command, timeout=BOOT_TIMEOUT)

    def live_xml(self) -> str:
        return self.virsh("dumpxml", NAME)

    def config_xml(self) -> str:
        return self.virsh("dumpxml", "--inactive", NAME)


def wait_until(
    predicate: Callable[[], bool], timeout: float = 30.0, why: Callable[[], str] = lambda: ""
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(why() or "condition not met")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def guest(module_daemon: DaemonProcess) -> Iterator[Guest]:
    d = module_daemon
    path = d.root / f"{NAME}.xml"
    path.write_text(guest_xml())
    d.virsh("define", str(path))
    events = Events(d)
    d.virsh("start", NAME)
    conn = d.conn()
    g = Guest(d, Console(conn, conn.lookupByName(NAME)), events)
    try:
        g.console.wait_prompt()
        yield g
    finally:  # a test may have replaced them
        g.console.close()
        g.events.close()
        d.virsh("destroy", NAME, check=False)
        d.virsh("undefine", NAME, check=False)


def block_devices(g: Guest) -> set[str]:
    return set(g.sh("ls /sys/block").split())


def qcow2(g: Guest, name: str) -> str:
    path = g.daemon.root / name
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    return str(path)


def query_block(g: Guest) -> list[dict[str, Any]]:
    import json

    out = g.virsh("qemu-monitor-command", NAME, '{"execute":"query-block"}')
    return json.loads(out)["return"]


def test_attach_and_detach_disk_live(guest: Guest) -> None:
    before = block_devices(guest)
    image = qcow2(guest, "live.qcow2")
    assert "Disk attached successfully" in guest.virsh(
        "attach-disk", NAME, image, "vdb", "--subdriver", "qcow2"
    )
    guest.events.wait_for(f"'device-added' for domain '{NAME}': virtio-disk1")
    wait_until(lambda: len(block_devices(guest) - before) == 1, why=lambda: "no new disk")
    new = (block_devices(guest) - before).pop()
    assert new.startswith("vd")
    assert guest.sh(f"cat /sys/block/{new}/size").split() == ["32768"]
    xml = guest.live_xml()
    assert f"<source file='{image}'" in xml and "<alias name='virtio-disk1'/>" in xml
    assert image not in guest.config_xml()
    assert "target 'vdb' duplicated for disk sources" in guest.fails(
        "attach-disk", NAME, image, "vdb", "--subdriver", "qcow2"
    )

    assert "Disk detached successfully" in guest.virsh("detach-disk", NAME, "vdb")
    guest.events.wait_for(f"'device-removed' for domain '{NAME}': virtio-disk1")
    wait_until(lambda: block_devices(guest) == before, why=lambda: "the disk stayed")
    assert image not in guest.live_xml()
    nodes = [e["inserted"]["file"] for e in query_block(guest) if e.get("inserted")]
    assert image not in nodes


def test_detach_of_what_is_not_there(guest: Guest) -> None:
    path = guest.daemon.root / "missing.xml"
    path.write_text("<disk type='file'><source file='/nowhere'/><target dev='vdz'/></disk>")
    assert "device not found: no target device vdz" in guest.fails(
        "detach-device", NAME, str(path)
    )
    assert "no device found with alias ua-nothing" in guest.fails(
        "detach-device-alias", NAME, "ua-nothing", "--config"
    )


def test_interface_attach_link_and_detach(guest: Guest) -> None:
    path = guest.daemon.root / "nic.xml"
    path.write_text(
        "<interface type='user'><mac address='52:54:00:0a:0b:0c'/>"
        "<model type='virtio'/></interface>"
    )
    assert "Device attached successfully" in guest.virsh("attach-device", NAME, str(path))
    guest.events.wait_for(f"'device-added' for domain '{NAME}': net0")
    wait_until(lambda: "eth0" in guest.sh("ls /sys/class/net"), why=lambda: "no eth0")
    assert "52:54:00:0a:0b:0c" in guest.sh("cat /sys/class/net/eth0/address")
    assert "52:54:00:0a:0b:0c" in guest.virsh("domiflist", NAME)

    guest.virsh("domif-setlink", NAME, "52:54:00:0a:0b:0c", "down")
    assert "<link state='down'/>" in guest.live_xml()
    assert "down" in guest.virsh("domif-getlink", NAME, "52:54:00:0a:0b:0c")
    guest.virsh("domif-setlink", NAME, "52:54:00:0a:0b:0c", "up")

    assert "Device detached successfully" in guest.virsh("detach-device", NAME, str(path))
    guest.events.wait_for(f"'device-removed' for domain '{NAME}': net0")
    wait_until(lambda: "eth0" not in guest.sh("ls /sys/class/net"), why=lambda: "eth0 stayed")
    assert "<interface" not in guest.live_xml()


@pytest.fixture
def bridge() -> Iterator[str]:
    name = f"avdhp{os.getpid() % 100000}"
    ip = shutil.which("ip")
    if ip is None or os.geteuid() != 0:
        pytest.skip("making a bridge needs root and iproute2")
    subprocess.run([ip, "link", "add", name, "type", "bridge"], check=True)
    try:
        yield name
    finally:
        subprocess.run([ip, "link", "del", name], check=False)


def test_attach_interface_on_a_bridge(guest: Guest, bridge: str) -> None:
    guest.virsh("attach-interface", NAME, "bridge", bridge, "--model", "virtio")
    wait_until(lambda: "eth0" in guest.sh("ls /sys/class/net"), why=lambda: "no eth0")
    listing = guest.virsh("domiflist", NAME)
    tap = next(line.split()[0] for line in listing.splitlines() if bridge in line)
    assert bridge in subprocess.run(
        ["ip", "-o", "link", "show", tap], capture_output=True, text=True, check=True
    ).stdout
    guest.virsh("detach-interface", NAME, "bridge")
    wait_until(lambda: "<interface" not in guest.live_xml(), why=lambda: "NIC stayed")
    wait_until(
        lambda: subprocess.run(["ip", "link", "show", tap], capture_output=True).returncode != 0,
        why=lambda: f"{tap} stayed",
    )


def test_cdrom_media_change_and_eject(guest: Guest) -> None:
    iso = guest.daemon.root / "media.iso"
    iso.write_bytes(b"\0" * 2048 * 16)
    path = guest.daemon.root / "cdrom.xml"
    path.write_text(
        f"<disk type='file' device='cdrom'><source file='{iso}'/>"
        "<target dev='hdc' bus='ide'/><readonly/></disk>"
    )
    assert "Device updated successfully" in guest.virsh("update-device", NAME, str(path))
    assert str(iso) in guest.virsh("domblklist", NAME)
    index = int(guest.live_xml().split(f"<source file='{iso}' index='")[1].split("'")[0])
    inserted = [e["inserted"]["file"] for e in query_block(guest) if e.get("inserted")]
    assert str(iso) in inserted
    assert str(iso) not in guest.config_xml()

    assert "Successfully ejected media" in guest.virsh("change-media", NAME, "hdc", "--eject")
    assert str(iso) not in guest.virsh("domblklist", NAME)
    assert f"<source index='{index + 1}'/>" in guest.live_xml()  # as libvirtd numbers it
    assert not [e for e in query_block(guest) if e.get("inserted")]


def test_config_only_attach(guest: Guest) -> None:
    image = qcow2(guest, "config.qcow2")
    before = block_devices(guest)
    guest.virsh("attach-disk", NAME, image, "vdc", "--subdriver", "qcow2", "--config")
    assert image in guest.config_xml()
    assert image not in guest.live_xml()
    assert block_devices(guest) == before
    assert "target vdc already exists" in guest.fails(
        "attach-disk", NAME, image, "vdc", "--config"
    )
    guest.virsh("detach-disk", NAME, "vdc", "--config")
    assert image not in guest.config_xml()


def test_persistent_attach_and_detach(guest: Guest) -> None:
    image = qcow2(guest, "both.qcow2")
    before = block_devices(guest)
    guest.virsh("attach-disk", NAME, image, "vdd", "--subdriver", "qcow2", "--persistent")
    assert image in guest.live_xml() and image in guest.config_xml()
    wait_until(lambda: len(block_devices(guest) - before) == 1, why=lambda: "no new disk")
    guest.virsh("detach-disk", NAME, "vdd", "--persistent")
    assert image not in guest.config_xml()
    wait_until(lambda: image not in guest.live_xml(), why=lambda: "the disk stayed")
    wait_until(lambda: block_devices(guest) == before, why=lambda: "the guest kept the disk")


def test_q35_plugs_into_the_spare_root_port(guest: Guest) -> None:
    """q35 gets one free pcie-root-port at define: one disk fits, a second does not."""
    d, name = guest.daemon, "hotplug-q35"
    path = d.root / f"{name}.xml"
    path.write_text(guest_xml(name, "q35"))
    d.virsh("define", str(path))
    d.virsh("start", name)
    conn = d.conn()
    console = Console(conn, conn.lookupByName(name))
    try:
        console.wait_prompt()
        image = qcow2(guest, "q35.qcow2")
        d.virsh("attach-disk", name, image, "vdb", "--subdriver", "qcow2")
        wait_until(lambda: "vda" in console.run("ls /sys/block"), why=lambda: "no disk")
        res = d.virsh("attach-disk", name, image, "vdc", "--subdriver", "qcow2", check=False)
        assert "internal error: No more available PCI slots" in res.stderr
        d.virsh("detach-disk", name, "vdb")
        wait_until(lambda: "vda" not in console.run("ls /sys/block"), why=lambda: "disk stayed")
    finally:
        console.close()
        d.virsh("destroy", name, check=False)
        d.virsh("undefine", name, check=False)


def nic(guest: Guest, mac: str) -> str:
    path = guest.daemon.root / f"nic-{mac[-2:]}.xml"
    path.write_text(f"<interface type='user'><mac address='{mac}'/><model type='virtio'/>"
                    "</interface>")
    return str(path)


def test_hotplugged_devices_survive_a_daemon_kill(guest: Guest) -> None:
    """After plugging net0, net1 and a disk and removing net0, a new daemon still
    knows net1 as net1 (not by its place) and can unplug what is there."""
    first, second = nic(guest, "52:54:00:00:00:01"), nic(guest, "52:54:00:00:00:02")
    guest.virsh("attach-device", NAME, first)
    guest.virsh("attach-device", NAME, second)
    image = qcow2(guest, "restart.qcow2")
    guest.virsh("attach-disk", NAME, image, "vdb", "--subdriver", "qcow2")
    wait_until(lambda: "eth1" in guest.sh("ls /sys/class/net"), why=lambda: "no eth1")
    guest.virsh("detach-device", NAME, first)
    wait_until(lambda: "52:54:00:00:00:01" not in guest.live_xml(), why=lambda: "net0 stayed")
    index = guest.live_xml().split(f"<source file='{image}' index='")[1].split("'")[0]

    guest.console.close()
    guest.events.close()
    guest.daemon.kill()
    guest.daemon.start()
    conn = guest.daemon.conn()
    guest.console = Console(conn, conn.lookupByName(NAME))
    guest.events = Events(guest.daemon)
    guest.console.wait_prompt()

    xml = guest.live_xml()
    assert "<alias name='net1'/>" in xml and "<alias name='net0'/>" not in xml
    assert f"<source file='{image}' index='{index}'/>" in xml
    guest.virsh("detach-device", NAME, second)
    guest.events.wait_for(f"'device-removed' for domain '{NAME}': net1")
    guest.virsh("detach-disk", NAME, "vdb")
    guest.events.wait_for(f"'device-removed' for domain '{NAME}': virtio-disk1")
    wait_until(lambda: "eth" not in guest.sh("ls /sys/class/net"), why=lambda: "a NIC stayed")
    inserted = [e["inserted"]["file"] for e in query_block(guest) if e.get("inserted")]
    assert image not in inserted


@pytest.mark.parametrize("xml, alias", [
    ("<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>", "rng0"),
    ("<input type='keyboard' bus='virtio'/>", "input2"),  # after the two PS/2 ones
    ("<input type='tablet' bus='usb'/>", "input2"),
    ("<controller type='scsi' index='0' model='virtio-scsi'/>", "scsi0"),
    ("<controller type='virtio-serial'/>", "virtio-serial0"),
    ("<watchdog model='i6300esb' action='poweroff'/>", "watchdog0"),
])
def test_other_devices_plug_and_unplug(guest: Guest, xml: str, alias: str) -> None:
    path = guest.daemon.root / "other.xml"
    path.write_text(xml)
    guest.virsh("attach-device", NAME, str(path))
    guest.events.wait_for(f"'device-added' for domain '{NAME}': {alias}")
    assert f"<alias name='{alias}'/>" in guest.live_xml()
    peripheral = guest.virsh("qemu-monitor-command", NAME, "--hmp", "info qtree")
    assert f'id "{alias}"' in peripheral
    guest.virsh("detach-device", NAME, str(path))
    guest.events.wait_for(f"'device-removed' for domain '{NAME}': {alias}")
    assert f"<alias name='{alias}'/>" not in guest.live_xml()


def test_guest_agent_channel_plugs_and_unplugs(guest: Guest) -> None:
    controller = guest.daemon.root / "vser.xml"
    controller.write_text("<controller type='virtio-serial' index='0'/>")
    channel = guest.daemon.root / "ga.xml"
    channel.write_text(
        "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
    )
    guest.virsh("attach-device", NAME, str(controller))
    guest.virsh("attach-device", NAME, str(channel))
    guest.events.wait_for(f"'device-added' for domain '{NAME}': channel0")
    xml = guest.live_xml()
    assert "<address type='virtio-serial' controller='0' bus='0' port='1'/>" in xml
    path = xml.split("<channel type='unix'>")[1].split("path='")[1].split("'")[0]
    assert path.endswith("/org.qemu.guest_agent.0") and os.path.exists(path)
    guest.virsh("detach-device", NAME, str(channel))
    guest.events.wait_for(f"'device-removed' for domain '{NAME}': channel0")
    assert "<channel" not in guest.live_xml()
    guest.virsh("detach-device", NAME, str(controller))
    guest.events.wait_for(f"'device-removed' for domain '{NAME}': virtio-serial0")
