"""What one QEMU binary can do, learnt once over QMP and cached on disk.

Probing costs a QEMU start (~100 ms), so the answer is kept under the driver's
cache dir keyed by the binary's path, mtime and size: an upgraded QEMU is
re-probed, an unchanged one is not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qemu.qmp import QMPClient

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 30.0
# Bumped whenever the cached JSON's layout changes, so old caches are ignored.
CACHE_FORMAT = 1

# Guest architectures and the binary libvirt uses for each on an x86 host.
EMULATORS = {
    "x86_64": "/usr/bin/qemu-system-x86_64",
    "i686": "/usr/bin/qemu-system-i386",
}


@dataclass(frozen=True)
class MachineInfo:
    name: str
    alias: str | None = None
    max_cpus: int = 1
    is_default: bool = False
    deprecated: bool = False


@dataclass
class QemuCaps:
    """Facts about one emulator binary, as the XML parser and command builder need them."""

    emulator: str
    arch: str
    version: int  # major * 1_000_000 + minor * 1_000 + micro, e.g. 7002022
    kvm_usable: bool
    machines: dict[str, MachineInfo] = field(default_factory=dict)
    cpu_models: list[str] = field(default_factory=list)
    package: str = ""

    def canonical_machine(self, name: str | None) -> str:
        """The versioned machine type for an alias ("pc" -> "pc-i440fx-7.2"), or the default.

        Unknown names come back unchanged: whether they are acceptable is for the caller.
        """
        if name is None:
            for info in self.machines.values():
                if info.is_default:
                    return info.name
            raise LookupError(f"no default machine type for {self.emulator}")
        for info in self.machines.values():
            if info.alias == name:
                return info.name
        return name

    def has_machine(self, name: str) -> bool:
        return name in self.machines or any(m.alias == name for m in self.machines.values())

    def to_json(self) -> dict:
        return {"format": CACHE_FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict) -> QemuCaps:
        if data.get("format") != CACHE_FORMAT:
            raise ValueError("stale capabilities cache format")
        machines = {k: MachineInfo(**v) for k, v in data["machines"].items()}
        return cls(
            emulator=data["emulator"],
            arch=data["arch"],
            version=data["version"],
            kvm_usable=data["kvm_usable"],
            machines=machines,
            cpu_models=list(data["cpu_models"]),
            package=data.get("package", ""),
        )
