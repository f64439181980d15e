"""Helpers of the access tests (console, graphics, QEMU program): guests and a console.

The Linux test guest talks on its serial console; a firmware-only guest is
enough where only QEMU itself answers (monitor, VNC, screenshots).
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from guest import PROMPT, ensure_guest

from e2e.daemon import DaemonProcess

BOOT_TIMEOUT = 60.0
KVM = "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "qemu"
DEVICES = (
    "<serial type='pty'/><console type='pty'/>"
    "<graphics type='vnc' autoport='yes'/><video><model type='vga'/></video>"
)


def linux_xml(name: str) -> str:
    g = ensure_guest()
    return (
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory>"
        "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type>"
        f"<kernel>{g.kernel}</kernel><initrd>{g.initrd}</initrd>"
        f"<cmdline>{g.cmdline}</cmdline></os><features><acpi/></features>"
        f"<on_reboot>destroy</on_reboot><devices>{DEVICES}</devices></domain>"
    )


def firmware_xml(name: str) -> str:
    return (
        f"<domain type='{KVM}'><name>{name}</name><memory unit='MiB'>64</memory>"
        "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
        f"<devices>{DEVICES}</devices></domain>"
    )


def define_and_start(daemon: DaemonProcess, name: str, xml: str) -> None:
    path = daemon.root / f"{name}.xml"
    path.write_text(xml)
    daemon.virsh("define", str(path))
    daemon.virsh("start", name)


@contextmanager
def running(daemon: DaemonProcess, name: str, xml: str) -> Iterator[None]:
    """The guest defined and running for the block, destroyed and undefined after it."""
    define_and_start(daemon, name, xml)
    try:
        yield
    finally:
        daemon.virsh("destroy", name, check=False)
        daemon.virsh("undefine", name, check=False)


@functools.cache
def run_event_loop() -> None:
    """libvirt's default event loop, run by a thread for the rest of the session.

    With it registered before a connection opens, that connection's socket is
    read as data comes (so a non-blocking stream receives without other calls),
    and libvirt-python's event callbacks fire. Once per process.
    """
    import libvirt

    libvirt.virEventRegisterDefaultImpl()

    def run() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()

    threading.Thread(target=run, name="libvirt-events", daemon=True).start()


class Console:
    """A console stream of libvirt-python, read by a thread into a buffer.

    The stream is non-blocking and the thread polls it (the event loop above
    fills it): libvirt's client can deadlock when one thread sits in a blocking
    virStreamRecv while another makes calls on the same connection (seen
    against libvirtd 9.0 as well).
    """

    def __init__(self, conn: Any, dom: Any, dev: str | None = None, flags: int = 0) -> None:
        import libvirt

        self.stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
        dom.openConsole(dev, self.stream, flags)
        self.buf = bytearray()
        self.error: Any = None  # how the stream failed, if it did
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        import libvirt

        try:
            while (data := self.stream.recv(65536)) != b"":
                if data == -2:  # nothing yet
                    time.sleep(0.01)
                    continue
                self.buf.extend(data)
        except libvirt.libvirtError as e:
            self.error = e
        self.ended.set()

    def send(self, text: str) -> None:
        data = text.encode()
        while data:
            sent = self.stream.send(data)
            if sent == -2:  # the stream's buffer is full for now
                time.sleep(0.01)
                continue
            data = data[sent:]

    def wait_for(self, what: bytes, start: int = 0, timeout: float = 30.0) -> bytes:
        """The output from ``start`` once it holds ``what``."""
        deadline = time.monotonic() + timeout
        while what not in self.buf[start:]:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what!r} on the console: {bytes(self.buf[start:])!r}")
            time.sleep(0.05)
        return bytes(self.buf[start:])

    def run(self, command: str, timeout: float = 30.0) -> str:
        """Run a shell command in the guest; its output up to the next prompt."""
        start = len(self.buf)
        self.send(command + "\r")
        marker = (command + "\r\n").encode()
        self.wait_for(marker, start, timeout)
        begin = self.buf.index(marker, start) + len(marker)
        self.wait_for(PROMPT.encode(), begin, timeout)
        end = self.buf.index(PROMPT.encode(), begin)
        return bytes(self.buf[begin:end]).decode(errors="replace")

    def wait_prompt(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Press Enter until the shell answers (it may still be booting)."""
        deadline = time.monotonic() + timeout
        while True:
            start = len(self.buf)
            self.send("\r")
            try:
                self.wait_for(PROMPT.encode(), start, timeout=2.0)
                return
            except AssertionError:
                if time.monotonic() > deadline:
                    raise

    def close(self) -> None:
        import libvirt

        try:
            self.stream.finish()
        except libvirt.libvirtError:
            pass
        self.ended.wait(5)
