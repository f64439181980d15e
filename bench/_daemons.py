"""Start the two daemons a benchmark compares, each on sockets of its own.

aiovirtd runs as root with ``--root`` under a temporary directory.

Debian's libvirtd runs as a *session* daemon of the unprivileged user
``nobody`` with its own XDG_RUNTIME_DIR, XDG_CONFIG_HOME and XDG_CACHE_HOME.
A second privileged libvirtd would share /etc/libvirt, /run/libvirt and
/var/lib/libvirt with the host's (its QEMU driver locks a pid file there) and
would touch host networking; as another user it cannot reach any of that, so
a libvirtd the machine already runs is left alone. Its QEMU driver does the
same work for the calls measured (define, list, info, XML); only starting
guests differs between session and system mode.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534
START_TIMEOUT = 30.0


@dataclass
class Daemon:
    """A running daemon: where to connect and how to measure and stop it."""

    name: str
    uri: str
    sock: Path
    tmp: Path
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"{self.name}: no VmRSS")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _wait_listening(d: Daemon) -> Daemon:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if d.proc.poll() is not None:
            log = d.log.read_text(errors="replace")
            d.stop()
            raise RuntimeError(f"{d.name} exited with {d.proc.returncode}:\n{log}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(d.sock))
            return d
        except OSError:
            if time.monotonic() > deadline:
                d.stop()
                raise TimeoutError(f"{d.name} did not listen on {d.sock}")
            time.sleep(0.02)


def start_aiovirtd() -> Daemon:
    tmp = Path(tempfile.mkdtemp(prefix="avb-", dir="/tmp"))
    sock = tmp / "run/libvirt/libvirt-sock"
    log = tmp / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "--root", str(tmp)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=tmp,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
    return _wait_listening(Daemon("aiovirtd", f"qemu+unix:///system?socket={sock}",
                                  sock, tmp, proc, log))


def start_libvirtd(timeout: int = 600) -> Daemon:
    """libvirtd as nobody's session daemon; ``--timeout`` ends it if we do not."""
    libvirtd = shutil.which("libvirtd") or "/usr/sbin/libvirtd"
    if not os.path.exists(libvirtd):
        raise RuntimeError("libvirtd not found: apt-get install libvirt-daemon")
    tmp = Path(tempfile.mkdtemp(prefix="lvb-", dir="/tmp"))
    os.chown(tmp, NOBODY, NOBODY)
    sock = tmp / "run/libvirt/libvirt-sock"
    log = tmp / "daemon.log"
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(tmp),
        "XDG_RUNTIME_DIR": str(tmp / "run"),
        "XDG_CONFIG_HOME": str(tmp / "config"),
        "XDG_CACHE_HOME": str(tmp / "cache"),
        "LC_ALL": "C",
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             libvirtd, "--timeout", str(timeout)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=tmp, env=env,
        )
    return _wait_listening(Daemon("libvirtd", f"qemu+unix:///session?socket={sock}",
                                  sock, tmp, proc, log))
