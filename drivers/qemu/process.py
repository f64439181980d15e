"""Launching, watching and stopping one QEMU process.

QEMU runs in its own session so that it outlives the daemon; a later daemon
finds it again by pid and monitor socket (:meth:`QemuProcess.attach`). Its exit
is seen at once through a pidfd, which works for processes that are not our
children too (after a re-attach they belong to init).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shlex
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from drivers.qemu.monitor import EventCallback, Monitor
from protocol.errors import ErrorCode, ErrorDomain, VirError

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0
# libvirt waits 10 s after SIGTERM, then 5 s after SIGKILL.
TERM_TIMEOUT = 10.0
KILL_TIMEOUT = 5.0
LOG_TAIL = 1024


def log_timestamp() -> str:
    """The time stamp libvirt puts before its lines in a guest's log."""
    now = time.time()
    millis = int(now * 1000) % 1000
    return time.strftime("%Y-%m-%d %H:%M:%S.", time.gmtime(now)) + f"{millis:03d}+0000"


def format_command(env: dict[str, str], argv: list[str]) -> str:
    """The command line as libvirt logs it: one option (and its value) per line."""
    lines = [f"{k}={shlex.quote(v)}" for k, v in env.items()]
    current: list[str] = []
    for arg in argv:
        if arg.startswith("-") and current:
            lines.append(" ".join(current))
            current = []
        current.append(shlex.quote(arg))
    lines.append(" ".join(current))
    return " \\\n".join(lines) + "\n"


def append_log(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def _log_since(path: Path, offset: int) -> str:
    """What QEMU wrote to its log after ``offset`` (its last words on a failed start)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(offset, f.tell() - LOG_TAIL))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


# -- the host side of a guest's NICs ------------------------------------------

_TUNSETIFF = 0x400454CA
_IFF_TAP, _IFF_NO_PI, _IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _SIOCSIFHWADDR, _SIOCBRADDIF = 0x8913, 0x8914, 0x8924, 0x89A2
_SIOCGIFMTU, _SIOCSIFMTU = 0x8921, 0x8922
_IFF_UP = 0x1
_ARPHRD_ETHER = 1


def _ifreq(name: str, fmt: str = "", *values: object) -> bytes:
    """A ``struct ifreq``: the interface name, then the union (40 bytes in all)."""
    return struct.pack("16s" + fmt, name.encode(), *values).ljust(40, b"\0")


def open_tap(
    name: str, mac: str, bridge: str | None, mtu: int | None = None
) -> tuple[int, str]:
    """Create a tap device for QEMU, up, and on ``bridge`` if given.

    ``name`` may hold ``%d`` for the kernel to number it (libvirt's "vnet%d").
    The tap has the guest's MAC with the first byte 0xFE, as libvirt gives it,
    so the bridge never takes the guest's address as its own. Its MTU is
    ``mtu``, else the bridge's (a smaller port would shrink the bridge). It goes
    away when QEMU, the last holder of the returned fd, exits. Returns (fd, name).
    """
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise VirError(
            ErrorCode.SYSTEM_ERROR, f"Unable to open /dev/net/tun: {e.strerror}", ErrorDomain.NONE
        ) from None
    try:
        flags = _IFF_TAP | _IFF_NO_PI | _IFF_VNET_HDR
        ifr = fcntl.ioctl(fd, _TUNSETIFF, _ifreq(name, "H", flags))
        actual = ifr[:16].split(b"\0", 1)[0].decode()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            hwaddr = bytes([0xFE]) + bytes.fromhex(mac.replace(":", ""))[1:]
            fcntl.ioctl(s, _SIOCSIFHWADDR, _ifreq(actual, "H6s", _ARPHRD_ETHER, hwaddr))
            if mtu is None and bridge is not None:
                mtu = struct.unpack_from("16xi", fcntl.ioctl(s, _SIOCGIFMTU, _ifreq(bridge)))[0]
            if mtu:
                fcntl.ioctl(s, _SIOCSIFMTU, _ifreq(actual, "i", mtu))
            if bridge is not None:
                index = socket.if_nametoindex(actual)
                fcntl.ioctl(s, _SIOCBRADDIF, _ifreq(bridge, "i", index))
            current = fcntl.ioctl(s, _SIOCGIFFLAGS, _ifreq(actual, "H", 0))
            up = struct.unpack_from("16xH", current)[0] | _IFF_UP
            fcntl.ioctl(s, _SIOCSIFFLAGS, _ifreq(actual, "H", up))
    except OSError as e:
        os.close(fd)
        where = f" to bridge '{bridge}'" if bridge else ""
        raise VirError(
            ErrorCode.SYSTEM_ERROR,
            f"Unable to add tap interface '{name}'{where}: {e.strerror}",
            ErrorDomain.NONE,
        ) from None
    return fd, actual


def tap_to_bridge(tap: str, bridge: str) -> None:
    """Put an existing tap back on ``bridge`` (a restarted network's new bridge)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, _SIOCBRADDIF, _ifreq(bridge, "i", socket.if_nametoindex(tap)))


# -- CPU cgroup --------------------------------------------------------------


def cpu_cgroup_root() -> Path | None:
    """Where the cpu controller's hierarchy is (cgroup v1 or v2), or None."""
    v1 = Path("/sys/fs/cgroup/cpu")
    if (v1 / "cpu.shares").exists():
        return v1
    v2 = Path("/sys/fs/cgroup")
    try:
        if "cpu" in (v2 / "cgroup.controllers").read_text().split():
            return v2
    except OSError:
        pass
    return None


def join_cgroup(group: Path, pid: int) -> None:
    """Move ``pid`` (all its threads) into ``group``, made if needed.

    Guests in a group of their own compete with the daemon as one: without it
    a few busy vCPUs starve the daemon's single thread. A failure only costs
    that fairness, so it is logged, not raised.
    """
    try:
        group.mkdir(parents=True, exist_ok=True)
        if (group.parent / "cgroup.subtree_control").exists():  # v2: let cpu reach the leaf
            for parent in (group.parent.parent, group.parent):
                (parent / "cgroup.subtree_control").write_text("+cpu")
        (group / "cgroup.procs").write_text(str(pid))
    except OSError as e:
        log.warning("cannot put QEMU %d into cgroup %s: %s", pid, group, e)


def pid_alive(pid: int) -> bool:
    """True for a live, non-zombie process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


class QemuProcess:
    """A QEMU process, its pidfd watch and its monitor."""

    def __init__(
        self,
        name: str,
        pid: int,
        monitor_path: str,
        on_event: EventCallback,
        on_exit: Callable[[QemuProcess], None],
        child: subprocess.Popen[bytes] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self.log_offset = 0
        self.pid = pid
        self.monitor_path = monitor_path
        self.monitor = Monitor(name, on_event)
        self._on_exit = on_exit
        self._child = child
        self._loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[None] = self._loop.create_future()
        self._pidfd = -1
        self._watch()

    # -- start and re-attach -------------------------------------------------

    @classmethod
    async def launch(
        cls,
        argv: list[str],
        *,
        name: str,
        monitor_path: str,
        log_path: Path,
        env: dict[str, str],
        on_event: EventCallback,
        on_exit: Callable[[QemuProcess], None],
        header: str,
        pass_fds: tuple[int, ...] = (),
        cgroup: Path | None = None,
        timeout: float = START_TIMEOUT,
    ) -> QemuProcess:
        """Start QEMU (stopped, with ``-S`` in ``argv``) and connect to its monitor."""
        try:
            os.unlink(monitor_path)
        except FileNotFoundError:
            pass
        append_log(log_path, f"{log_timestamp()}: {header}\n" + format_command(env, argv))
        with open(log_path, "ab") as logf:
            offset = logf.tell()
            try:
                child = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=logf,
                    env=env,
                    cwd="/",
                    start_new_session=True,
                    close_fds=True,
                    pass_fds=pass_fds,
                )
            except OSError as e:
                raise VirError(
                    ErrorCode.SYSTEM_ERROR,
                    f"Cannot run {argv[0]}: {e.strerror}",
                    ErrorDomain.QEMU,
                ) from None
        if cgroup is not None:
            join_cgroup(cgroup, child.pid)
        proc = cls(name, child.pid, monitor_path, on_event, on_exit, child, log_path)
        proc.log_offset = offset
        try:
            await proc._connect(timeout)
        except BaseException:
            await proc.kill(graceful=False)
            raise
        return proc

    @classmethod
    async def attach(
        cls,
        name: str,
        pid: int,
        monitor_path: str,
        on_event: EventCallback,
        on_exit: Callable[[QemuProcess], None],
        timeout: float = 10.0,
    ) -> QemuProcess:
        """Take over a QEMU a previous daemon started."""
        proc = cls(name, pid, monitor_path, on_event, on_exit)
        try:
            await proc._connect(timeout)
        except BaseException:
            proc.detach_now()
            raise
        return proc

    async def _connect(self, timeout: float) -> None:
        """Connect to the monitor as soon as QEMU listens on it.

        QEMU creates the socket early in its start-up; until then (or while
        the previous client's connection is being torn down) connecting fails
        and is retried. Dying before that is reported with QEMU's own words.
        """
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            if self.exited.done():
                raise self._start_error("QEMU exited before its monitor came up")
            if time.monotonic() > deadline:
                raise self._start_error("the monitor socket did not come up in time")
            if not os.path.exists(self.monitor_path):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)
                continue
            try:
                await self.monitor.connect(self.monitor_path, max(0.1, deadline - time.monotonic()))
                return
            except asyncio.TimeoutError:
                raise self._start_error("the monitor did not answer in time") from None
            except Exception as e:  # qemu.qmp wraps OS errors in its ConnectError
                cause = e.__cause__ or e
                if not isinstance(cause, (ConnectionRefusedError, FileNotFoundError)):
                    raise self._start_error(f"cannot connect to the monitor: {e}") from None
            # Bound but not yet listening, or the previous client not yet gone.
            self.monitor = Monitor(self.name, self.monitor.on_event)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _start_error(self, what: str) -> VirError:
        tail = _log_since(self.log_path, self.log_offset) if self.log_path else ""
        return VirError(
            ErrorCode.INTERNAL_ERROR,
            f"internal error: process exited while connecting to monitor: {tail or what}",
            ErrorDomain.QEMU,
        )

    # -- exit detection ------------------------------------------------------

    def _watch(self) -> None:
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            self._reap()
            self.exited.set_result(None)
            return
        self._loop.add_reader(self._pidfd, self._on_pidfd)

    def _unwatch(self) -> None:
        if self._pidfd >= 0:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

    def _reap(self) -> None:
        if self._child is not None:
            self._child.poll()

    def _on_pidfd(self) -> None:
        self._unwatch()
        self._reap()
        if not self.exited.done():
            self.exited.set_result(None)
        self._on_exit(self)

    @property
    def alive(self) -> bool:
        return not self.exited.done()

    # -- stopping ------------------------------------------------------------

    async def kill(self, graceful: bool) -> bool:
        """SIGTERM, and SIGKILL if that was not enough (unless ``graceful``).

        Returns whether the process is gone.
        """
        for sig, wait in ((signal.SIGTERM, TERM_TIMEOUT), (signal.SIGKILL, KILL_TIMEOUT)):
            if graceful and sig == signal.SIGKILL:
                break
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(asyncio.shield(self.exited), wait)
                return True
            except asyncio.TimeoutError:
                continue
        return not self.alive

    async def detach(self) -> None:
        """Stop watching and close the monitor; QEMU keeps running."""
        self._unwatch()
        await self.monitor.close()

    def detach_now(self) -> None:
        self._unwatch()
