"""Event commands of virsh (``event``, ``qemu-monitor-event`` ...) run with
``--loop`` in the background, their output kept in a file read on demand."""

from __future__ import annotations

import os
import re
import subprocess
import time

from e2e.daemon import DaemonProcess


class VirshEvents:
    """``virsh ARGS`` against ``daemon`` until ``close``; its lines under the daemon's root."""

    def __init__(self, daemon: DaemonProcess, *args: str) -> None:
        self.path = daemon.root / f"events-{time.monotonic_ns()}.txt"
        self._out = open(self.path, "w")
        self.proc = subprocess.Popen(
            ["virsh", "-c", daemon.uri, *args],
            stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(os.environ, LC_ALL="C"),
        )

    def lines(self) -> list[str]:
        """The ``event ...`` lines so far."""
        return [line for line in self.path.read_text().splitlines() if line.startswith("event ")]

    def wait_for(self, pattern: str, timeout: float = 30.0) -> list[str]:
        """``lines()`` once one of them matches ``pattern`` (a regular expression) whole."""
        deadline = time.monotonic() + timeout
        while not any(re.fullmatch(pattern, line) for line in self.lines()):
            if time.monotonic() > deadline:
                raise AssertionError(f"no event like {pattern!r} in {self.lines()}")
            time.sleep(0.05)
        return self.lines()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        self._out.close()
