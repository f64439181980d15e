"""A FUSE mount that can be frozen (tests/hangfs.py under SIGSTOP), and the
timing checks the hung-mount tests share: calls about other objects answer at
once, calls about the hung one fail after the daemon's file system timeout.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from e2e.daemon import DaemonProcess

HANGFS = Path(__file__).resolve().parent.parent / "hangfs.py"
#: The storage timeout the test daemon runs with (seconds).
TIMEOUT = 2.0
#: What "at once" means for calls about other objects while a pool hangs.
AT_ONCE = 1.0


def _unusable() -> str | None:
    """Why a FUSE mount cannot be made here, if it cannot."""
    if os.geteuid() != 0:
        return "needs root to mount FUSE"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine"
    if shutil.which("fusermount") is None and shutil.which("fusermount3") is None:
        return "no fusermount (Debian package fuse3)"
    try:
        import fuse  # noqa: F401
    except (ImportError, OSError) as e:  # fusepy raises OSError without libfuse2
        return f"fusepy is not usable: {e}"
    return None


#: For the modules that need the mount: root, /dev/fuse, fusermount and fusepy.
NEEDS_FUSE = [pytest.mark.slow, pytest.mark.skipif(_unusable() is not None,
                                                  reason=str(_unusable()))]


def _mounted(point: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(point) for line in f)


class HangFS:
    """tests/hangfs.py mounted on ``mnt`` over ``src``; ``freeze`` stops it."""

    def __init__(self, base: Path) -> None:
        self.src, self.mnt = base / "src", base / "mnt"
        self.log = base / "hangfs.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.src.mkdir()
        self.mnt.mkdir()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(HANGFS), str(self.src), str(self.mnt)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + 10
        while not _mounted(self.mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"hangfs did not mount: {self.log.read_text()}")
            time.sleep(0.05)

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        """Continue, unmount (lazily if need be), end the process."""
        self.thaw()
        if _mounted(self.mnt):
            tool = shutil.which("fusermount") or shutil.which("fusermount3") or "fusermount"
            if subprocess.run([tool, "-u", str(self.mnt)], capture_output=True,
                              timeout=10, check=False).returncode:
                subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True,
                               timeout=10, check=False)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    start = time.monotonic()
    result = fn(*args)
    return time.monotonic() - start, result


def virsh_at_once(d: DaemonProcess, *args: str) -> str:
    took, res = timed(lambda: d.virsh(*args))
    assert took < AT_ONCE, f"virsh {' '.join(args)} took {took:.2f}s"
    return res.stdout


def virsh_times_out(d: DaemonProcess, *args: str) -> None:
    took, res = timed(lambda: d.virsh(*args, check=False))
    assert res.returncode != 0, res.stdout
    assert "Timed out during operation" in res.stderr, res.stderr
    assert TIMEOUT - 0.5 < took < TIMEOUT + 4, f"virsh {' '.join(args)} failed in {took:.2f}s"
