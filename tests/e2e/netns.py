"""Network namespaces for tests that make bridges, taps, dnsmasq or firewall rules.

A test daemon started inside one (``DaemonProcess(netns=ns.name)``) builds its
networks there, and so do the QEMUs it starts: nothing reaches the host's own
interfaces, routes or nftables. Deleting the namespace takes its links with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence


class NetNS:
    """``ip netns add`` on enter, every process in it killed and the namespace gone on exit."""

    def __init__(self, prefix: str = "avd") -> None:
        self.name = f"{prefix}-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> "NetNS":
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.run("ip", "link", "set", "lo", "up")
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def run(self, *argv: str, check: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace."""
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True,
                              text=True, check=check, timeout=timeout)

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed so that it runs inside the namespace (same PID: ip execs it)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def pids(self) -> list[int]:
        res = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True)
        return [int(p) for p in res.stdout.split()]

    def delete(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)
