"""The serial console of the Linux test guest, through libvirt-python and `virsh console`.

One guest boots for the whole module; every test leaves its console closed.
"""

from __future__ import annotations

import os
import pty
import select
import time
from collections.abc import Iterator

import libvirt
import pytest

from e2e.access import Console, define_and_start, firmware_xml, linux_xml
from e2e.daemon import DaemonProcess
from guest import PROMPT

pytestmark = pytest.mark.slow

NAME = "i3e-console"


@pytest.fixture(scope="module")
def guest(module_daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    define_and_start(module_daemon, NAME, linux_xml(NAME))
    conn = module_daemon.conn()
    console = Console(conn, conn.lookupByName(NAME))
    try:
        console.wait_prompt()
    finally:
        console.close()
    yield module_daemon
    module_daemon.virsh("destroy", NAME, check=False)
    module_daemon.virsh("undefine", NAME, check=False)


def test_console_reads_and_writes(guest: DaemonProcess) -> None:
    conn = guest.conn()
    console = Console(conn, conn.lookupByName(NAME))
    try:
        console.wait_prompt()
        assert console.run("echo hi").strip() == "hi"
        assert console.run("echo $((6 * 7))").strip() == "42"
    finally:
        console.close()


def test_one_session_at_a_time_unless_forced(guest: DaemonProcess) -> None:
    conn = guest.conn()
    dom = conn.lookupByName(NAME)
    first = Console(conn, dom)
    try:
        with pytest.raises(libvirt.libvirtError) as err:
            Console(conn, dom)
        assert err.value.get_error_code() == libvirt.VIR_ERR_OPERATION_FAILED
        assert err.value.get_error_message() == (
            "operation failed: Active console session exists for this domain")
        second = Console(conn, dom, flags=libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        try:
            assert first.ended.wait(10), "the forced-out session goes on"
            assert first.error is not None  # as libvirtd ends it: an I/O failure
            assert first.error.get_error_message() == "stream had I/O failure"
            second.wait_prompt()
            assert second.run("echo taken").strip() == "taken"
        finally:
            second.close()
    finally:
        first.close()
    again = Console(conn, dom)  # the device is free once the holder closed
    again.close()


def test_console_by_device_name_and_errors(guest: DaemonProcess) -> None:
    conn = guest.conn()
    dom = conn.lookupByName(NAME)
    console = Console(conn, dom, dev="serial0")
    try:
        console.wait_prompt()
    finally:
        console.close()
    with pytest.raises(libvirt.libvirtError) as err:
        Console(conn, dom, dev="nosuch0")
    assert err.value.get_error_message() == (
        "internal error: cannot find character device nosuch0")
    with pytest.raises(libvirt.libvirtError) as err:
        dom.openConsole(None, conn.newStream(0), 1 << 5)
    assert "unsupported flags (0x20)" in err.value.get_error_message()


def test_console_of_a_guest_not_running(guest: DaemonProcess) -> None:
    path = guest.root / "i3e-off.xml"
    path.write_text(linux_xml("i3e-off"))
    guest.virsh("define", str(path))
    try:
        conn = guest.conn()
        with pytest.raises(libvirt.libvirtError) as err:
            conn.lookupByName("i3e-off").openConsole(None, conn.newStream(0), 0)
        assert err.value.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID
        assert err.value.get_error_message() == (
            "Requested operation is not valid: domain is not running")
    finally:
        guest.virsh("undefine", "i3e-off")


def _read_until(fd: int, what: bytes, timeout: float = 30.0) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while what not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {what!r} in {buf!r}")
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the terminal closed: virsh exited
                break
            if not chunk:
                break
            buf += chunk
    return buf


def _enter_until_prompt(fd: int) -> None:
    """Press Enter until the guest answers: virsh drops what is typed before it
    has made its terminal raw."""
    for _ in range(15):
        os.write(fd, b"\r")
        try:
            _read_until(fd, PROMPT.encode(), timeout=2.0)
            return
        except AssertionError:
            continue
    raise AssertionError("the guest does not answer on virsh console")


def _virsh_console(daemon: DaemonProcess, *extra: str) -> tuple[int, int]:
    """`virsh console` on a terminal of its own: (pid, terminal fd)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: become virsh
        os.environ["LC_ALL"] = "C"
        os.execvp("virsh", ["virsh", "-c", daemon.uri, "console", NAME, *extra])
    return pid, fd


def test_virsh_console_on_a_terminal(guest: DaemonProcess) -> None:
    pid, fd = _virsh_console(guest)
    try:
        _read_until(fd, b"Escape character is ^]")
        _enter_until_prompt(fd)
        os.write(fd, b"echo from-virsh\r")
        assert b"from-virsh\r\n" in _read_until(fd, b"from-virsh\r\n" + PROMPT.encode())
        busy_pid, busy_fd = _virsh_console(guest)
        try:
            out = _read_until(busy_fd, b"exists")
            assert b"error: operation failed: Active console session exists" in out
            assert os.waitpid(busy_pid, 0)[1] != 0
        finally:
            os.close(busy_fd)
        os.write(fd, b"\x1d")  # Ctrl-]: virsh leaves, the guest runs on
        assert os.waitpid(pid, 0)[1] == 0
    finally:
        os.close(fd)
    forced_pid, forced_fd = _virsh_console(guest, "--force")
    try:
        _read_until(forced_fd, b"Escape character is ^]")
        _enter_until_prompt(forced_fd)
        os.write(forced_fd, b"\x1d")
        assert os.waitpid(forced_pid, 0)[1] == 0
    finally:
        os.close(forced_fd)


def test_send_key_reaches_the_keyboard(guest: DaemonProcess) -> None:
    """Keys pressed through QEMU raise the guest's keyboard interrupt (IRQ 1); how
    many times per key depends on how the guest drains the controller."""
    conn = guest.conn()
    console = Console(conn, conn.lookupByName(NAME))

    def keyboard_irqs() -> int:
        line = console.run("grep ' 1:' /proc/interrupts")
        return int(line.split()[1])

    try:
        console.wait_prompt()
        for keys in (["KEY_A"], ["--codeset", "xt", "0x1c"],
                     ["--holdtime", "50", "KEY_LEFTSHIFT", "KEY_B"]):
            before = keyboard_irqs()
            guest.virsh("send-key", NAME, *keys)
            assert keyboard_irqs() > before, keys
        for keys in (["--codeset", "usb", "0x04"], ["--codeset", "win32", "0x41"]):
            before = keyboard_irqs()
            guest.virsh("send-key", NAME, *keys)
            assert keyboard_irqs() > before, keys
        res = guest.virsh("send-key", NAME, "--codeset", "linux", "700", check=False)
        assert "cannot translate keycode 700 of linux codeset to qnum keycode" in res.stderr
    finally:
        console.close()


def test_channels(guest: DaemonProcess) -> None:
    """Unix socket channels open by target name or alias, one session at a time."""
    name = "i3e-channels"
    xml = firmware_xml(name).replace(
        "</devices>",
        "<channel type='unix'><target type='virtio' name='org.example.test.0'/></channel>"
        "<channel type='pty'><target type='virtio' name='org.example.pty.0'/></channel>"
        "</devices>")
    define_and_start(guest, name, xml)
    conn = guest.conn()
    dom = conn.lookupByName(name)
    try:
        for which in ("org.example.test.0", "channel0", None):
            first = conn.newStream(0)
            dom.openChannel(which, first, 0)
            with pytest.raises(libvirt.libvirtError) as err:
                dom.openChannel(which, conn.newStream(0), 0)
            assert err.value.get_error_message() == (
                "operation failed: Active channel stream exists for this domain")
            second = conn.newStream(0)
            dom.openChannel(which, second, libvirt.VIR_DOMAIN_CHANNEL_FORCE)
            assert second.send(b"hello") == 5
            with pytest.raises(libvirt.libvirtError, match="stream had I/O failure"):
                first.recv(10)
            second.finish()
        for which, message in (
            ("nosuch", "internal error: cannot find channel nosuch"),
            ("org.example.pty.0",
             "internal error: channel org.example.pty.0 is not using a UNIX socket"),
        ):
            with pytest.raises(libvirt.libvirtError) as err:
                dom.openChannel(which, conn.newStream(0), 0)
            assert err.value.get_error_message() == message
    finally:
        guest.virsh("destroy", name, check=False)
        guest.virsh("undefine", name, check=False)
