"""Guest lifecycle latencies of aiovirtd against Debian's libvirtd 9.0.

Both daemons are started here (see _daemons.py) and driven by libvirt-python
with the tiny Linux test guest under TCG (tests/guest). Per round and daemon:

* start: ``defineXML`` + ``create`` until the call returns with the guest running;
* shutdown: ``shutdown`` (ACPI power button) until the guest is shut off, once
  the guest's shell answers on the serial console (acpid must be up to hear
  the button); the console is read on the pty the live XML names;
* destroy: ``destroy`` of a running guest until the call returns.

The daemons take turns round by round, so a change in the load of the shared
machine falls on both alike. Ratios are libvirtd/aiovirtd: above 1 favours
aiovirtd. A first round per daemon warms up (QEMU probing, caches) and is not
counted. Run ``.venv/bin/python bench/lifecycle.py [--rounds N]``; with the
default 3 rounds it takes about a minute.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import termios
import time
import tty
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _daemons import Daemon, start_aiovirtd, start_libvirtd  # noqa: E402
from guest import CMDLINE, PROMPT, Guest, ensure_guest  # noqa: E402

BOOT_TIMEOUT = 60.0
SESSION_GUEST_DIR = "/var/tmp/avd-guest"
SHUTDOWN_TIMEOUT = 30.0
DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  <on_reboot>destroy</on_reboot>
  <devices>
    <serial type='pty'/>
    <console type='pty'/>
  </devices>
</domain>
"""


def _libvirt() -> Any:
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def _wait(what: str, done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.005)


def _wait_for_shell(dom: Any, what: str) -> None:
    """Read the guest's serial pty until its shell prompt shows, pressing Enter now and
    then: the pty drops what the guest writes while nobody holds it open."""
    m = re.search(r"<serial type='pty'>\s*<source path='([^']+)'", dom.XMLDesc())
    if m is None:
        raise RuntimeError(f"{what}: no serial pty in the live XML")
    fd = os.open(m.group(1), os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        tty.setraw(fd, termios.TCSANOW)
        seen = b""
        deadline = time.monotonic() + BOOT_TIMEOUT
        next_enter = time.monotonic() + 1.0
        while PROMPT.encode() not in seen:
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"{what}: no shell prompt on the console")
            if now > next_enter:
                os.write(fd, b"\r")
                next_enter = now + 1.0
            try:
                seen = (seen + os.read(fd, 4096))[-4096:]
            except BlockingIOError:
                time.sleep(0.01)
    finally:
        os.close(fd)


def _start_virtlogd(libvirtd: Daemon) -> subprocess.Popen[bytes] | None:
    """libvirtd hands guest logs to virtlogd; the system one runs with its own empty
    /run (see _daemons.py), so a virtlogd is started in its mount namespace."""
    if "system" not in libvirtd.uri:
        return None  # the session daemon spawns its own
    virtlogd = shutil.which("virtlogd") or "/usr/sbin/virtlogd"
    proc = subprocess.Popen(
        ["nsenter", f"--target={libvirtd.pid}", "--mount", virtlogd, "--timeout", "300"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    sock = libvirtd.tmp / "run/libvirt/virtlogd-sock"
    _wait("virtlogd socket", sock.exists, 10.0)
    return proc


class Subject:
    """One daemon under test, with the guest definition it uses."""

    def __init__(self, daemon: Daemon, guest: Guest) -> None:
        self.daemon = daemon
        self.conn = _libvirt().open(daemon.uri)
        self.xml = DOMAIN_XML.format(
            name=f"bench-life-{daemon.name}", kernel=guest.kernel, initrd=guest.initrd,
            cmdline=CMDLINE,
        )
        self.results: dict[str, list[float]] = {"start": [], "shutdown": [], "destroy": []}
        self.shutdown_missing: str | None = None

    def start(self) -> Any:
        t0 = time.perf_counter()
        dom = self.conn.defineXML(self.xml)
        dom.create()
        self.results["start"].append(time.perf_counter() - t0)
        return dom

    def round(self) -> None:
        libvirt = _libvirt()
        dom = self.start()
        try:
            _wait_for_shell(dom, self.daemon.name)
            t0 = time.perf_counter()
            try:
                dom.shutdown()
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                    raise
                self.shutdown_missing = e.get_error_message()
            else:
                _wait(f"{self.daemon.name}: shut off",
                      lambda: dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF, SHUTDOWN_TIMEOUT)
                self.results["shutdown"].append(time.perf_counter() - t0)
            if not dom.isActive():
                dom.create()
            t0 = time.perf_counter()
            dom.destroy()
            self.results["destroy"].append(time.perf_counter() - t0)
        finally:
            if dom.isActive():
                dom.destroy()
            dom.undefine()

    def reset(self) -> None:
        self.results = {what: [] for what in self.results}

    def close(self) -> None:
        self.conn.close()


def _row(what: str, ours: list[float], theirs: list[float]) -> str:
    if not ours or not theirs:
        return f"{what:<10} {'n/a':>12} {'n/a':>12} {'n/a':>8}"
    a, b = statistics.median(ours), statistics.median(theirs)
    return f"{what:<10} {a * 1000:>10.1f}ms {b * 1000:>10.1f}ms {b / a:>7.2f}x"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--libvirtd", choices=("system", "session"), default="system")
    opts = parser.parse_args()
    # The system libvirtd sees an empty /var and runs QEMU as root: the default cache
    # under /root suits it; the session one runs QEMU as nobody, who needs /var/tmp.
    guest = ensure_guest(Path(SESSION_GUEST_DIR) if opts.libvirtd == "session" else None)
    daemons: list[Daemon] = []
    subjects: list[Subject] = []
    virtlogd = None
    try:
        daemons.append(start_aiovirtd())
        daemons.append(start_libvirtd(opts.libvirtd))
        virtlogd = _start_virtlogd(daemons[1])
        subjects = [Subject(d, guest) for d in daemons]
        for s in subjects:  # a first start probes QEMU and warms caches: not counted
            s.round()
            s.reset()
        for _ in range(opts.rounds):
            for s in subjects:
                s.round()
    finally:
        for s in subjects:
            s.close()
        for d in daemons:
            d.stop()
        if virtlogd is not None:
            virtlogd.terminate()
            virtlogd.wait()
    ours, theirs = subjects
    print(f"lifecycle latency, median of {opts.rounds} rounds (TCG test guest)")
    print(f"{'':<10} {'aiovirtd':>12} {'libvirtd':>12} {'ratio':>8}")
    for what in ("start", "shutdown", "destroy"):
        print(_row(what, ours.results[what], theirs.results[what]))
    for s in subjects:
        if s.shutdown_missing:
            print(f"{s.daemon.name}: shutdown not measured: {s.shutdown_missing}")
    print("ratio = libvirtd / aiovirtd (above 1 favours aiovirtd)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
