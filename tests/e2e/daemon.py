"""A throw-away aiovirtd for end-to-end tests: its own root, its own sockets.

Everything a test daemon creates lives under one short temporary root, so
tests never meet the host's libvirtd, and teardown can find (and kill) every
QEMU the daemon started by that root appearing on the process's command line.
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
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
VIRSH_TIMEOUT = 60.0

# Daemons not cleaned up yet, for a last sweep when the test session ends.
_LIVE: set["DaemonProcess"] = set()


class DaemonProcess:
    """One ``python -m daemon --root ROOT`` and the ways to poke at it."""

    def __init__(self, args: tuple[str, ...] = (), root: Path | None = None,
                 netns: str | None = None) -> None:
        # Unix socket paths are capped at 108 bytes: keep the root short.
        self.root = root or Path(tempfile.mkdtemp(prefix="avd-", dir="/tmp"))
        self.args = args
        # Inside a network namespace (tests/e2e/netns.py) its bridges, taps,
        # dnsmasq and firewall rules stay out of the host's network.
        self.netns = netns
        self.sock = self.root / "run/libvirt/libvirt-sock"
        self.ro_sock = self.root / "run/libvirt/libvirt-sock-ro"
        self.admin_sock = self.root / "run/libvirt/libvirt-admin-sock"
        self.uri = f"qemu+unix:///system?socket={self.sock}"
        self.ro_uri = f"qemu+unix:///system?socket={self.ro_sock}"
        self.log_path = self.root / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._conns: list[Any] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None, "daemon not started"
        return self.proc.pid

    def command(self) -> list[str]:
        argv = [sys.executable, "-m", "daemon", "--root", str(self.root), *self.args]
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else argv

    def start(self, wait: bool = True) -> "DaemonProcess":
        _LIVE.add(self)
        if self.netns is None:
            # A daemon makes (and autostarts) the ``default`` network only when it
            # finds no network config dir: one on the host's network must not.
            (self.root / "etc/libvirt/qemu/networks").mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(REPO), LC_ALL="C")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=env, cwd=self.root,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Return once the read-write socket accepts a connection."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"aiovirtd exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.connect(str(self.sock))
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"aiovirtd did not listen within {timeout}s:\n{self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait; a daemon that does not exit in time is killed."""
        self._close_conns()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode

    def kill(self) -> None:
        self._close_conns()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> "DaemonProcess":
        self.stop()
        return self.start()

    def virsh(self, *args: str, check: bool = True, uri: str | None = None,
              timeout: float = VIRSH_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run stock virsh against this daemon (``uri`` e.g. ``self.ro_uri``)."""
        res = subprocess.run(
            ["virsh", "-c", uri or self.uri, *args], capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL, env=dict(os.environ, LC_ALL="C"),
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"virsh {' '.join(args)} exited {res.returncode}\n"
                f"stdout: {res.stdout}\nstderr: {res.stderr}"
            )
        return res

    def conn(self, readonly: bool = False) -> Any:
        """A libvirt-python connection, closed at teardown."""
        import libvirt

        conn = libvirt.openReadOnly(self.ro_uri) if readonly else libvirt.open(self.uri)
        self._conns.append(conn)
        return conn

    def _close_conns(self) -> None:
        for conn in self._conns:
            try:
                conn.close()
            except Exception:
                pass
        self._conns.clear()

    def cleanup(self) -> None:
        """Stop the daemon, kill whatever it left running, remove the root."""
        try:
            self.stop()
        except subprocess.TimeoutExpired:
            pass
        kill_under(self.root)
        shutil.rmtree(self.root, ignore_errors=True)
        _LIVE.discard(self)


def cleanup_all() -> None:
    """Clean up every daemon a test forgot (or an interrupted run left)."""
    for d in list(_LIVE):
        d.cleanup()


def sweep_stale(max_age: float = 600.0) -> None:
    """Clean up the roots of test runs that were killed before their teardown.

    A root is stale when no daemon runs for it any more and it is older than
    ``max_age`` seconds (so the roots of test runs going on beside this one are
    left alone); its guests are killed and the directory removed.
    """
    now = time.time()
    for root in Path("/tmp").glob("avd-*"):
        try:
            if now - root.stat().st_mtime < max_age:
                continue
        except OSError:
            continue
        daemon_arg = b"--root\0" + str(root).encode() + b"\0"
        if any(daemon_arg in _cmdline(pid) for pid in processes_under(root)):
            continue
        kill_under(root)
        shutil.rmtree(root, ignore_errors=True)


def processes_under(root: Path) -> list[int]:
    """PIDs of processes whose command line or pid file ties them to ``root``."""
    needle = str(root).encode()
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle in f.read():
                    pids.add(int(entry))
        except OSError:
            continue
    for pidfile in (root / "run/libvirt/qemu").glob("*.pid"):
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            continue
        if _cmdline(pid) and b"qemu" in _cmdline(pid):
            pids.add(pid)
    return sorted(pids)


def kill_under(root: Path) -> list[int]:
    """SIGKILL every process tied to ``root`` and wait for them to go."""
    pids = processes_under(root)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return pids


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
