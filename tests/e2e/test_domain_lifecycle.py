"""Guests through their whole life with stock virsh and libvirt-python.

Firmware-only guests (no disk, 64 MiB) under KVM where /dev/kvm is usable,
else TCG. Every guest lives under the test daemon's root, so the fixture's
teardown kills whatever a failing test leaves running.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.qemu.process import cpu_cgroup_root
from e2e.daemon import DaemonProcess
from e2e.netns import NetNS
from e2e.watch import VirshEvents

pytestmark = pytest.mark.slow

VIRT = "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "qemu"
UUID = "5b1e7a52-8a5c-4d6c-9f3e-0c2d9a1b7e01"


def guest_xml(name: str, uuid: str | None = None) -> str:
    return (
        f"<domain type='{VIRT}'><name>{name}</name>"
        + (f"<uuid>{uuid}</uuid>" if uuid else "")
        + "<memory unit='MiB'>64</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
        "<devices><serial type='pty'/><console type='pty'/></devices></domain>"
    )


class EventWatch(VirshEvents):
    """``virsh event --loop --all``, each line as what happened: "Started Booted"."""

    def __init__(self, daemon: DaemonProcess) -> None:
        super().__init__(daemon, "event", "--loop", "--all")
        time.sleep(0.5)  # let it register before anything happens

    def lines(self) -> list[str]:
        return [line.split(": ", 1)[1] for line in super().lines()]

    def wait_for(self, line: str, timeout: float = 15.0) -> list[str]:
        return super().wait_for(re.escape(line), timeout)


@pytest.fixture
def events(daemon: DaemonProcess) -> Iterator[EventWatch]:
    watch = EventWatch(daemon)
    yield watch
    watch.close()


def define(daemon: DaemonProcess, name: str, uuid: str | None = None) -> None:
    path = daemon.root / f"{name}.xml"
    path.write_text(guest_xml(name, uuid))
    daemon.virsh("define", str(path))


def out(daemon: DaemonProcess, *args: str) -> str:
    return daemon.virsh(*args).stdout.strip()


def qemu_pid(daemon: DaemonProcess, name: str) -> int:
    return int((daemon.root / f"run/libvirt/qemu/{name}.pid").read_text())


def wait_until(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def test_persistent_guest_life(daemon: DaemonProcess, events: EventWatch) -> None:
    define(daemon, "g1", UUID)
    xml = out(daemon, "dumpxml", "g1")
    assert "<name>g1</name>" in xml and f"<uuid>{UUID}</uuid>" in xml
    assert "machine='pc-i440fx-" in xml
    assert out(daemon, "domstate", "--reason", "g1") == "shut off (unknown)"

    daemon.virsh("start", "g1")
    assert out(daemon, "domstate", "--reason", "g1") == "running (booted)"
    assert out(daemon, "domid", "g1") == "1"
    assert out(daemon, "domuuid", "g1") == UUID
    assert out(daemon, "domname", "1") == "g1"
    info = out(daemon, "dominfo", "g1")
    for line in ("Id:             1", "State:          running", "Persistent:     yes",
                 "Max memory:     65536 KiB", "CPU(s):         1"):
        assert line in info
    live = out(daemon, "dumpxml", "g1")
    assert f"<domain type='{VIRT}' id='1'>" in live and "<source path='/dev/pts/" in live
    group = f"/machine/qemu-{UUID}.aiovirtd"
    if cpu_cgroup_root() is not None:  # the guest competes with the daemon as one
        assert group in Path(f"/proc/{qemu_pid(daemon, 'g1')}/cgroup").read_text()
    assert f"<domain type='{VIRT}'>" in out(daemon, "dumpxml", "--inactive", "g1")

    daemon.virsh("suspend", "g1")
    assert out(daemon, "domstate", "--reason", "g1") == "paused (user)"
    daemon.virsh("resume", "g1")
    assert out(daemon, "domstate", "--reason", "g1") == "running (unpaused)"
    assert " 1    g1     running" in out(daemon, "list")

    daemon.virsh("destroy", "g1")
    assert out(daemon, "domstate", "--reason", "g1") == "shut off (destroyed)"
    root = cpu_cgroup_root()
    assert root is None or not (root / group.lstrip("/")).exists()
    assert out(daemon, "domid", "g1") == "-"
    assert " -    g1     shut off" in out(daemon, "list", "--all")
    daemon.virsh("undefine", "g1")
    assert "g1" not in out(daemon, "list", "--all")

    assert events.wait_for("Undefined Removed") == [
        "Defined Added",
        "Resumed Unpaused",
        "Started Booted",
        "Suspended Paused",
        "Resumed Unpaused",
        "Shutdown Finished after host request",
        "Stopped Destroyed",
        "Undefined Removed",
    ]


def test_transient_guest(daemon: DaemonProcess) -> None:
    path = daemon.root / "t1.xml"
    path.write_text(guest_xml("t1"))
    daemon.virsh("create", str(path), "--paused")
    assert out(daemon, "domstate", "--reason", "t1") == "paused (user)"
    assert "Persistent:     no" in out(daemon, "dominfo", "t1")
    ids = [1, 2]
    define(daemon, "g2")
    daemon.virsh("start", "g2")
    assert [int(out(daemon, "domid", n)) for n in ("t1", "g2")] == ids
    daemon.virsh("destroy", "t1")
    assert "t1" not in out(daemon, "list", "--all")
    res = daemon.virsh("dominfo", "t1", check=False)
    assert res.returncode != 0 and "failed to get domain 't1'" in res.stderr
    daemon.virsh("destroy", "g2")
    daemon.virsh("undefine", "g2")


def test_killed_qemu_is_a_crash(daemon: DaemonProcess, events: EventWatch) -> None:
    define(daemon, "g3")
    daemon.virsh("start", "g3")
    os.kill(qemu_pid(daemon, "g3"), signal.SIGKILL)
    events.wait_for("Stopped Failed")
    assert out(daemon, "domstate", "--reason", "g3") == "shut off (crashed)"
    assert not (daemon.root / "run/libvirt/qemu/g3.xml").exists()
    daemon.virsh("undefine", "g3")


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_daemon_restart_reattaches(daemon: DaemonProcess, how: str) -> None:
    define(daemon, "g4")
    daemon.virsh("start", "g4")
    path = daemon.root / "t4.xml"
    path.write_text(guest_xml("t4"))
    daemon.virsh("create", str(path))
    daemon.virsh("suspend", "t4")
    pids = {n: qemu_pid(daemon, n) for n in ("g4", "t4")}
    if how == "SIGTERM":
        daemon.stop()
    else:
        daemon.kill()
    assert all(os.path.exists(f"/proc/{pid}") for pid in pids.values())
    daemon.start()
    listing = out(daemon, "list", "--all")
    assert " 1    g4     running" in listing and " 2    t4     paused" in listing
    assert out(daemon, "domstate", "--reason", "t4") == "paused (user)"
    assert pids == {n: qemu_pid(daemon, n) for n in ("g4", "t4")}
    daemon.virsh("resume", "t4")
    # New guests get ids after the re-attached ones.
    define(daemon, "g5")
    daemon.virsh("start", "g5")
    assert out(daemon, "domid", "g5") == "3"
    for name in ("g4", "t4", "g5"):
        daemon.virsh("destroy", name)
    for name in ("g4", "g5"):
        daemon.virsh("undefine", name)
    assert out(daemon, "list", "--all") == "Id   Name   State\n--------------------"


def test_guest_dead_while_daemon_down(daemon: DaemonProcess) -> None:
    define(daemon, "g6")
    daemon.virsh("start", "g6")
    pid = qemu_pid(daemon, "g6")
    daemon.kill()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"))
    daemon.start()
    assert out(daemon, "domstate", "--reason", "g6") == "shut off (crashed)"
    daemon.virsh("start", "g6")
    daemon.virsh("destroy", "g6")
    daemon.virsh("undefine", "g6")


def test_libvirt_python(daemon: DaemonProcess) -> None:
    import libvirt

    conn = daemon.conn()
    dom = conn.defineXML(guest_xml("p1", UUID))
    assert (dom.isActive(), dom.isPersistent(), dom.ID()) == (0, 1, -1)
    assert dom.info() == [libvirt.VIR_DOMAIN_SHUTOFF, 65536, 65536, 1, 0]
    dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
    assert dom.state() == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER]
    dom.resume()
    assert conn.lookupByID(dom.ID()).name() == "p1"
    assert [d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING)] == [
        "p1"
    ]
    assert conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_INACTIVE) == []
    with pytest.raises(libvirt.libvirtError) as e:
        dom.create()
    assert e.value.get_error_message() == (
        "Requested operation is not valid: domain is already running"
    )
    with pytest.raises(libvirt.libvirtError) as e:
        conn.defineXML(guest_xml("p2", UUID))
    assert e.value.get_error_message() == (
        f"operation failed: domain 'p1' is already defined with uuid {UUID}"
    )
    # Undefining a running guest leaves it running, transient.
    dom.undefine()
    assert (dom.isActive(), dom.isPersistent()) == (1, 0)
    dom.destroy()
    with pytest.raises(libvirt.libvirtError) as e:
        dom.info()
    assert e.value.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN
    assert e.value.get_error_message() == (
        f"Domain not found: no domain with matching uuid '{UUID}' (p1)"
    )
    with pytest.raises(libvirt.libvirtError) as e:
        conn.lookupByName("p1")
    assert e.value.get_error_message() == "Domain not found: no domain with matching name 'p1'"


def test_autostart_once_per_boot(daemon: DaemonProcess) -> None:
    define(daemon, "a1")
    daemon.virsh("autostart", "a1")
    assert "Autostart:      enable" in out(daemon, "dominfo", "a1")
    assert out(daemon, "list", "--all", "--autostart", "--name") == "a1"
    daemon.stop()
    daemon.start()  # the same boot of the host: nothing is started
    assert out(daemon, "domstate", "a1") == "shut off"
    daemon.stop()
    (daemon.root / "run/libvirt/qemu/autostarted").unlink()  # as a reboot empties /run
    daemon.start()
    assert out(daemon, "domstate", "--reason", "a1") == "running (booted)"
    daemon.virsh("destroy", "a1")
    daemon.virsh("undefine", "a1")
    assert not (daemon.root / "etc/libvirt/qemu/autostart/a1.xml").exists()


def test_autodestroy_ends_with_the_connection(daemon: DaemonProcess) -> None:
    import libvirt

    conn = daemon.conn()
    conn.createXML(guest_xml("ad1"), libvirt.VIR_DOMAIN_START_AUTODESTROY)
    define(daemon, "ad2")
    conn.lookupByName("ad2").createWithFlags(libvirt.VIR_DOMAIN_START_AUTODESTROY)
    assert sorted(out(daemon, "list", "--name").split()) == ["ad1", "ad2"]
    conn.close()
    wait_until(lambda: out(daemon, "list", "--name") == "")
    assert out(daemon, "domstate", "--reason", "ad2") == "shut off (destroyed)"
    daemon.virsh("undefine", "ad2")


class PtyConsole:
    """A guest's serial console through the pty QEMU opened for it."""

    def __init__(self, path: str) -> None:
        import termios
        import tty

        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd, termios.TCSANOW)
        self.output = b""

    def expect(self, text: bytes, timeout: float, poke: bool = False) -> None:
        """Read until ``text``; with ``poke``, press Enter now and then (a pty
        drops what the guest wrote while nobody was reading)."""
        deadline = time.monotonic() + timeout
        next_poke = 0.0
        while text not in self.output:
            now = time.monotonic()
            if now > deadline:
                raise AssertionError(f"no {text!r} on the console: {self.output[-500:]!r}")
            if poke and now > next_poke:
                os.write(self.fd, b"\n")
                next_poke = now + 1.0
            try:
                self.output += os.read(self.fd, 4096)
            except BlockingIOError:
                time.sleep(0.05)

    def send(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\n")

    def close(self) -> None:
        os.close(self.fd)


def test_guest_powers_itself_off(daemon: DaemonProcess, events: EventWatch) -> None:
    import re

    from guest import PROMPT, ensure_guest

    g = ensure_guest()
    path = daemon.root / "linux.xml"
    path.write_text(
        "<domain type='qemu'><name>linux</name><memory unit='MiB'>128</memory>"
        "<os><type arch='x86_64' machine='pc'>hvm</type>"
        f"<kernel>{g.kernel}</kernel><initrd>{g.initrd}</initrd><cmdline>{g.cmdline}</cmdline>"
        "</os><features><acpi/></features><devices><serial type='pty'/></devices></domain>"
    )
    daemon.virsh("define", str(path))
    daemon.virsh("start", "linux")
    pty = re.search(r"<source path='(/dev/pts/\d+)'/>", out(daemon, "dumpxml", "linux"))
    assert pty is not None
    console = PtyConsole(pty.group(1))
    try:
        console.expect(PROMPT.encode(), 90, poke=True)
        cpu = int(daemon.conn().lookupByName("linux").info()[4])
        assert cpu > 100_000_000  # booting Linux under TCG takes CPU time
        console.send("poweroff -f")
        events.wait_for("Stopped Shutdown", 30)
    finally:
        console.close()
    assert out(daemon, "domstate", "--reason", "linux") == "shut off (shutdown)"
    assert events.lines()[-2:] == ["Shutdown Finished after guest request", "Stopped Shutdown"]
    daemon.virsh("undefine", "linux")


@pytest.fixture
def bridge(netns: NetNS) -> str:
    """A Linux bridge for the test's taps, in the test's own network namespace."""
    name = "avdbr0"
    res = netns.run("ip", "link", "add", name, "type", "bridge", check=False)
    if res.returncode != 0:
        pytest.skip(f"cannot create a bridge: {res.stderr.strip()}")
    return name


def test_nics_on_a_bridge(netns_daemon: DaemonProcess, netns: NetNS, bridge: str) -> None:
    daemon = netns_daemon
    path = daemon.root / "n1.xml"
    path.write_text(
        guest_xml("n1").replace(
            "<devices>",
            "<devices><interface type='bridge'><mac address='52:54:00:aa:bb:01'/>"
            f"<source bridge='{bridge}'/><model type='virtio'/></interface>"
            "<interface type='network'><source network='nowhere'/></interface>",
        )
    )
    daemon.virsh("define", str(path))
    res = daemon.virsh("start", "n1", check=False)
    assert "Network not found: no network with matching name 'nowhere'" in res.stderr
    xml = out(daemon, "dumpxml", "--inactive", "n1")
    xml = xml.replace("<interface type='network'>", "<interface type='user'>")
    path.write_text(xml)
    daemon.virsh("define", str(path))
    daemon.virsh("start", "n1")
    live = out(daemon, "dumpxml", "n1")
    tap = live.split("<target dev='", 1)[1].split("'", 1)[0]
    assert tap.startswith("vnet")
    members = netns.run("ip", "-br", "link", "show", "master", bridge).stdout
    assert tap in members and "fe:54:00:aa:bb:01" in members
    daemon.restart()
    assert f"<target dev='{tap}'/>" in out(daemon, "dumpxml", "n1")
    daemon.virsh("destroy", "n1")
    wait_until(lambda: netns.run("ip", "link", "show", tap, check=False).returncode != 0)
    daemon.virsh("undefine", "n1")


def test_uefi_guest_and_channel_survive_restart(daemon: DaemonProcess) -> None:
    if not Path("/usr/share/qemu/firmware").is_dir():
        pytest.skip("no firmware descriptors")
    path = daemon.root / "u1.xml"
    path.write_text(
        guest_xml("u1")
        .replace(f"type='{VIRT}'", "type='qemu'")  # the secure-boot firmware needs SMM
        .replace("<os>", "<os firmware='efi'>")
        .replace("</os>", "</os><features><acpi/></features>")
        .replace("machine='pc'", "machine='q35'")
        .replace(
            "<devices>",
            "<devices><channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/>"
            "</channel>",
        )
    )
    daemon.virsh("define", str(path))
    daemon.virsh("start", "u1")
    live = out(daemon, "dumpxml", "u1")
    nvram = live.split("<nvram", 1)[1].split(">", 1)[1].split("<", 1)[0]
    assert Path(nvram).is_file() and "<loader readonly='yes'" in live
    channel = live.split("<channel type='unix'>", 1)[1].split("</channel>", 1)[0]
    assert "/channel/target/domain-1-u1/org.qemu.guest_agent.0" in channel
    daemon.restart()
    # Same content; the order of controllers may differ after the re-parse.
    assert sorted(out(daemon, "dumpxml", "u1").splitlines()) == sorted(live.splitlines())
    daemon.virsh("destroy", "u1")
    res = daemon.virsh("undefine", "u1", check=False)
    assert "cannot undefine domain with nvram" in res.stderr
    daemon.virsh("undefine", "--nvram", "u1")
    assert not Path(nvram).exists()
