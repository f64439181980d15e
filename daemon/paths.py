"""Where the daemon keeps things: libvirtd's layout, optionally moved under a root."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    """libvirtd's system paths below ``root`` ("/" for the real thing).

    ``--root DIR`` keeps the same relative layout under DIR, so several daemons
    (and every test) run side by side without touching the host's own.
    """

    root: Path = Path("/")

    @property
    def run_dir(self) -> Path:
        return self.root / "run/libvirt"

    @property
    def config_dir(self) -> Path:
        return self.root / "etc/libvirt"

    @property
    def lib_dir(self) -> Path:
        return self.root / "var/lib/libvirt"

    @property
    def log_dir(self) -> Path:
        return self.root / "var/log/libvirt"

    @property
    def cache_dir(self) -> Path:
        return self.root / "var/cache/libvirt"

    @property
    def config_file(self) -> Path:
        return self.config_dir / "libvirtd.conf"

    @property
    def pid_file(self) -> Path:
        return self.root / "run/libvirtd.pid"

    def driver(self, name: str) -> "DriverPaths":
        return DriverPaths(self, name)


@dataclass(frozen=True)
class DriverPaths:
    """One driver's directories, e.g. ``etc/libvirt/qemu`` for the QEMU driver."""

    paths: Paths
    name: str

    @property
    def config_dir(self) -> Path:
        """Persistent definitions (``NAME.xml``), and ``autostart/`` links."""
        return self.paths.config_dir / self.name

    @property
    def state_dir(self) -> Path:
        """Live status of running objects; gone after a host reboot."""
        return self.paths.run_dir / self.name

    @property
    def lib_dir(self) -> Path:
        """Per-object private data, e.g. QEMU's monitor sockets."""
        return self.paths.lib_dir / self.name

    @property
    def log_dir(self) -> Path:
        return self.paths.log_dir / self.name

    @property
    def cache_dir(self) -> Path:
        return self.paths.cache_dir / self.name
