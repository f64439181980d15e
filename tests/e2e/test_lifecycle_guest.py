"""Guest power with a real Linux inside: shutdown, reboot, reset, on_poweroff, the agent.

The tiny test guest (tests/guest) boots under TCG, prints its banner on the
serial port (logged to a file, so nothing is lost while nobody reads) and
powers off on the ACPI power button. Events are watched with ``virsh event``;
the expected sequences are those the reference libvirtd 9.0 gives.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.daemon import DaemonProcess
from e2e.test_domain_lifecycle import EventWatch, PtyConsole, out
from guest import BANNER, PROMPT, ensure_guest

pytestmark = pytest.mark.slow

BOOT = 90.0  # TCG on shared cores: generous, never a timed assertion
AGENT = "org.qemu.guest_agent.0"


def guest_xml(name: str, log: Path, extra: str = "", devices: str = "", args: str = "") -> str:
    """The test guest; ``args`` go on its kernel command line (noagent, silentagent)."""
    g = ensure_guest()
    return (
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory>"
        "<os><type arch='x86_64' machine='pc'>hvm</type>"
        f"<kernel>{g.kernel}</kernel><initrd>{g.initrd}</initrd>"
        f"<cmdline>{g.cmdline} {args}</cmdline>"
        f"</os><features><acpi/></features>{extra}<devices>"
        f"<serial type='pty'><log file='{log}'/></serial><console type='pty'/>{devices}"
        "</devices></domain>"
    )


class Guest:
    """One guest of the test daemon, its serial log and events."""

    def __init__(self, daemon: DaemonProcess, name: str, extra: str = "",
                 devices: str = "", args: str = "") -> None:
        self.daemon, self.name = daemon, name
        self.log = daemon.root / f"{name}-console.log"
        path = daemon.root / f"{name}.xml"
        path.write_text(guest_xml(name, self.log, extra, devices, args))
        daemon.virsh("define", str(path))
        self.events = EventWatch(daemon)

    def start(self) -> None:
        self.daemon.virsh("start", self.name)
        self.wait_banners(1)

    def banners(self) -> int:
        try:
            return self.log.read_bytes().count(BANNER.encode())
        except FileNotFoundError:
            return 0

    def wait_banners(self, count: int, timeout: float = BOOT) -> None:
        """Until the guest has booted ``count`` times in this run; then give
        acpid a moment, as the power button is lost before it listens."""
        deadline = time.monotonic() + timeout
        while self.banners() < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {self.banners()} boots, not {count}")
            time.sleep(0.1)
        time.sleep(0.5)

    def state(self) -> str:
        return out(self.daemon, "domstate", "--reason", self.name)

    def lifecycle(self) -> list[str]:
        """The lifecycle events so far, as virsh prints them ("Started Booted")."""
        return [line.split("': ", 1)[1] for line in self.events.path.read_text().splitlines()
                if line.startswith("event 'lifecycle'")]

    def wait_event(self, line: str, count: int = 1, timeout: float = BOOT) -> None:
        """Until ``line`` has come ``count`` times."""
        deadline = time.monotonic() + timeout
        while self.lifecycle().count(line) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no event {line!r} in {self.lifecycle()}")
            time.sleep(0.1)

    def reboots(self) -> int:
        return self.events.path.read_text().count("event 'reboot'")

    def close(self) -> None:
        self.events.close()
        self.daemon.virsh("destroy", self.name, check=False)
        self.daemon.virsh("undefine", self.name, check=False)


@pytest.fixture
def guest(module_daemon: DaemonProcess) -> Iterator[Guest]:
    g = Guest(module_daemon, "lc")
    yield g
    g.close()


def test_shutdown_powers_off(guest: Guest) -> None:
    guest.start()
    guest.daemon.virsh("shutdown", guest.name)
    guest.wait_event("Stopped Shutdown")
    assert guest.state() == "shut off (shutdown)"
    assert guest.lifecycle()[-2:] == [
        "Shutdown Finished after guest request", "Stopped Shutdown"]


def test_reboot_comes_back(guest: Guest) -> None:
    guest.start()
    res = guest.daemon.virsh("reboot", guest.name)
    assert f"Domain '{guest.name}' is being rebooted" in res.stdout
    guest.wait_banners(2)
    # The guest's power-off of a fake reboot is no shutdown: no lifecycle event.
    lines = guest.lifecycle()
    assert "Started Booted" in lines
    assert not any(line.startswith(("Shutdown", "Stopped", "Suspended")) for line in lines)
    assert guest.state() == "running (booted)"
    assert guest.reboots() >= 1
    # And once it is up again, the power button still powers it off.
    guest.daemon.virsh("shutdown", guest.name)
    guest.wait_event("Stopped Shutdown")


def test_reset(guest: Guest) -> None:
    guest.start()
    res = guest.daemon.virsh("reset", guest.name)
    assert f"Domain '{guest.name}' was reset" in res.stdout
    guest.wait_banners(2)
    assert guest.reboots() >= 1
    assert guest.state() == "running (booted)"
    # A graceful destroy is SIGTERM alone: QEMU reports a host shutdown, then goes.
    guest.daemon.virsh("destroy", "--graceful", guest.name)
    guest.wait_event("Stopped Destroyed")
    assert guest.lifecycle()[-2:] == ["Shutdown Finished after host request", "Stopped Destroyed"]
    assert guest.state() == "shut off (destroyed)"


def test_on_poweroff_restart(module_daemon: DaemonProcess) -> None:
    g = Guest(module_daemon, "lc-restart", "<on_poweroff>restart</on_poweroff>")
    try:
        g.start()
        g.daemon.virsh("shutdown", g.name)  # a shutdown that is a reboot, as libvirtd does it
        g.wait_banners(2)
        assert g.state() == "running (booted)"
        assert not any(line.startswith(("Shutdown", "Stopped")) for line in g.lifecycle())
    finally:
        g.close()


def test_on_reboot_destroy(module_daemon: DaemonProcess) -> None:
    g = Guest(module_daemon, "lc-noreboot", "<on_reboot>destroy</on_reboot>")
    try:
        g.start()
        g.daemon.virsh("reset", g.name)  # QEMU is told a reset is a power-off
        g.wait_event("Stopped Shutdown")
        assert g.lifecycle()[-2:] == ["Shutdown Finished after host request", "Stopped Shutdown"]
        assert g.state() == "shut off (shutdown)" and g.reboots() == 0
        g.log.unlink()
        g.start()
        g.daemon.virsh("reboot", g.name)  # a reboot that is a shutdown, as libvirtd does it
        g.wait_event("Stopped Shutdown", 2)
        assert g.lifecycle()[-2:] == ["Shutdown Finished after guest request", "Stopped Shutdown"]
        assert g.reboots() == 0
    finally:
        g.close()


def test_power_errors(guest: Guest) -> None:
    d, name = guest.daemon, guest.name
    res = d.virsh("shutdown", name, check=False)
    assert "Requested operation is not valid: domain is not running" in res.stderr
    res = d.virsh("reset", name, check=False)
    assert "Requested operation is not valid: domain is not running" in res.stderr
    guest.start()
    for cmd in (["shutdown", "--mode", "agent", name], ["reboot", "--mode", "agent", name],
                ["domhostname", name], ["domtime", name],
                ["domifaddr", name, "--source", "agent"],
                ["qemu-agent-command", name, '{"execute":"guest-ping"}']):
        res = d.virsh(*cmd, check=False)
        assert res.returncode == 1
        assert "argument unsupported: QEMU guest agent is not configured" in res.stderr, cmd
    res = d.virsh("domhostname", name, "--source", "lease", check=False)
    assert f"no hostname found: no hostname found for domain {name}" in res.stderr
    assert len(d.virsh("domifaddr", name).stdout.strip().splitlines()) == 2  # a header only
    # An agent mode that may fall back to ACPI powers off.
    d.virsh("shutdown", "--mode", "agent,acpi", name)
    guest.wait_event("Stopped Shutdown")


CHANNEL = f"<channel type='unix'><target type='virtio' name='{AGENT}'/></channel>"


def test_agent_not_connected(module_daemon: DaemonProcess) -> None:
    g = Guest(module_daemon, "lc-chan", devices=CHANNEL, args="noagent")
    try:
        g.start()
        xml = out(g.daemon, "dumpxml", g.name)
        assert f"name='{AGENT}' state='disconnected'" in xml
        for cmd in (["shutdown", "--mode", "agent"], ["domtime"], ["domhostname"]):
            res = g.daemon.virsh(*cmd, g.name, check=False)
            assert "Guest agent is not responding: QEMU guest agent is not connected" in res.stderr
        # With no flags the agent is only tried when it is there: ACPI it is.
        g.daemon.virsh("shutdown", g.name)
        g.wait_event("Stopped Shutdown")
    finally:
        g.close()


def wait_agent(g: Guest) -> None:
    deadline = time.monotonic() + BOOT
    while f"name='{AGENT}' state='connected'" not in out(g.daemon, "dumpxml", g.name):
        if time.monotonic() > deadline:
            raise AssertionError("the guest agent did not connect")
        time.sleep(0.2)


def test_agent_commands(module_daemon: DaemonProcess) -> None:
    g = Guest(module_daemon, "lc-agent", devices=CHANNEL)
    d = g.daemon
    try:
        g.start()
        wait_agent(g)
        text = g.events.path.read_text()
        assert "event 'agent-lifecycle' for domain 'lc-agent': state: 'disconnected'" \
            " reason: 'domain started'" in text
        assert "state: 'connected' reason: 'channel event'" in text
        assert out(d, "domhostname", g.name) == "tiny"
        seconds = int(out(d, "domtime", g.name).removeprefix("Time: "))
        assert abs(seconds - time.time()) < 300
        d.virsh("domtime", g.name, "--now")
        lines = out(d, "domifaddr", g.name, "--source", "agent").splitlines()
        assert lines[2].split() == ["lo", "00:00:00:00:00:00", "ipv4", "127.0.0.1/8"]
        assert out(d, "qemu-agent-command", g.name, '{"execute":"guest-ping"}') == '{"return":{}}'
        res = d.virsh("qemu-agent-command", g.name, '{"execute":"guest-info"}', check=False)
        assert res.stderr.startswith(
            "error: internal error: unable to execute QEMU agent command 'guest-info':"
            " The command guest-info has not been found")
        res = d.virsh("qemu-agent-command", g.name, "[1]", check=False)
        assert "unable to execute QEMU agent command '<unknown>'" in res.stderr
        d.virsh("shutdown", "--mode", "agent", g.name)
        g.wait_event("Stopped Shutdown")
        assert g.lifecycle()[-2:] == ["Shutdown Finished after guest request", "Stopped Shutdown"]
        assert g.state() == "shut off (shutdown)"
    finally:
        g.close()


def test_silent_agent_stalls_nobody(module_daemon: DaemonProcess) -> None:
    import subprocess

    g = Guest(module_daemon, "lc-silent", devices=CHANNEL, args="silentagent")
    d = g.daemon
    try:
        g.start()
        wait_agent(g)
        slow = subprocess.Popen(["virsh", "-c", d.uri, "domhostname", g.name],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        assert g.state() == "running (booted)"  # answered while the agent keeps silent
        assert slow.poll() is None
        _, err = slow.communicate(timeout=60)
        assert "Guest agent is not responding: Guest agent not available for now" in err
    finally:
        g.close()


@pytest.mark.parametrize("action, error", [
    ("<on_poweroff>preserve</on_poweroff>", "unsupported configuration: qemu driver doesn't"
     " support the 'preserve' action for 'on_reboot'/'on_poweroff'"),
    ("<on_crash>rename-restart</on_crash>", "unsupported configuration: qemu driver doesn't"
     " support the 'rename-restart' action for 'on_reboot'/'on_poweroff'/'on_crash'"),
    ("<on_reboot>coredump-destroy</on_reboot>", "unsupported configuration: Lifecycle event"
     " 'reboot' doesn't support 'coredump-destroy' action"),
])
def test_actions_the_driver_refuses(module_daemon: DaemonProcess, action: str, error: str) -> None:
    path = module_daemon.root / "refused.xml"
    path.write_text(guest_xml("lc-refused", module_daemon.root / "x.log", action))
    res = module_daemon.virsh("define", str(path), check=False)
    assert res.returncode == 1 and error in res.stderr


@pytest.mark.parametrize("action, state, events", [
    ("destroy", "shut off (crashed)", ["Crashed Panicked", "Stopped Crashed"]),
    ("restart", "running (crashed)", ["Crashed Panicked", "Resumed Unpaused"]),
    ("preserve", "crashed (panicked)", ["Crashed Panicked"]),
])
def test_on_crash(module_daemon: DaemonProcess, action: str, state: str,
                  events: list[str]) -> None:
    """A kernel panic told to QEMU by pvpanic, then what on_crash says."""
    import re

    g = Guest(module_daemon, f"lc-crash-{action}", f"<on_crash>{action}</on_crash>",
              "<panic model='isa'/>")
    try:
        g.start()
        pty = re.search(r"<source path='(/dev/pts/\d+)'/>", out(g.daemon, "dumpxml", g.name))
        assert pty is not None
        console = PtyConsole(pty.group(1))
        try:
            console.expect(PROMPT.encode(), BOOT, poke=True)
            console.send("echo c > /proc/sysrq-trigger")
            g.wait_event(events[-1])
        finally:
            console.close()
        if action == "restart":
            g.wait_banners(2)
        assert g.lifecycle()[2:] == events  # after Resumed Unpaused, Started Booted
        assert g.state() == state
    finally:
        g.close()
