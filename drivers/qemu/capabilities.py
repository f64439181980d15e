"""What one QEMU binary can do, learnt once over QMP and cached on disk.

Probing costs a QEMU start (~100 ms), so the answer is kept under the driver's
cache dir keyed by the binary's path, mtime and size: an upgraded QEMU is
re-probed, an unchanged one is not.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qemu.qmp import ExecuteError, QMPClient

from drivers import host
from drivers.files import write_atomic

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 30.0
# Bumped whenever the cached JSON's layout changes, so old caches are ignored.
CACHE_FORMAT = 4

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
    # Per accelerator ("kvm", "tcg"): each CPU model in QEMU's order -> the features
    # it lacks there (QEMU's names); an empty list means the model is usable.
    cpu_blockers: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    # Non-abstract QOM types: which devices and backends this binary has.
    qom_types: frozenset[str] = frozenset()
    # Per accelerator: the properties of the CPU a guest gets from "-cpu host" (KVM)
    # or "-cpu max" (TCG), as a full query-cpu-model-expansion gives them.
    host_cpu_props: dict[str, dict[str, object]] = field(default_factory=dict)

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
        return {"format": CACHE_FORMAT, **asdict(self), "qom_types": sorted(self.qom_types)}

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
            cpu_blockers={acc: {model: _shared(blockers) for model, blockers in models.items()}
                          for acc, models in data["cpu_blockers"].items()},
            qom_types=frozenset(_shared(data["qom_types"])),
            host_cpu_props={k: dict(v) for k, v in data["host_cpu_props"].items()},
        )


def _shared(names: list[str]) -> list[str]:
    """One string object per name: the same few feature names recur in the blockers of
    most CPU models and of both emulators; kept apart they cost half a megabyte."""
    return [sys.intern(name) for name in names]


def _version_number(v: dict) -> int:
    return v["major"] * 1_000_000 + v["minor"] * 1_000 + v["micro"]


def _machines(reply: list[dict]) -> dict[str, MachineInfo]:
    """Machine types in QEMU's order with the default first, as libvirt lists them.

    "none" is a probing aid, not something a guest runs on, so it is left out.
    """
    found = [
        MachineInfo(
            name=m["name"],
            alias=m.get("alias"),
            max_cpus=m.get("cpu-max", 1),
            is_default=bool(m.get("is-default")),
            deprecated=bool(m.get("deprecated")),
        )
        for m in reply
        if m["name"] != "none"
    ]
    found.sort(key=lambda m: not m.is_default)  # stable: keeps QEMU's order otherwise
    return {m.name: m for m in found}


async def _quiet_disconnect(qmp: QMPClient) -> None:
    """Close our end; QEMU closing its end first (after "quit") is not an error."""
    try:
        await qmp.disconnect()
    except (EOFError, OSError):
        pass


async def _query(emulator: str, arch: str) -> QemuCaps:
    """What ``emulator`` knows; CPU models usable under KVM and under TCG differ,
    so a TCG-only QEMU is asked as well when KVM answered the first time."""
    caps = await _ask(emulator, arch, ("kvm", "tcg"))
    if "tcg" not in caps.cpu_blockers:
        tcg = await _ask(emulator, arch, ("tcg",))
        caps.cpu_blockers.update(tcg.cpu_blockers)
        caps.host_cpu_props.update(tcg.host_cpu_props)
    return caps


async def _ask(emulator: str, arch: str, accels: tuple[str, ...]) -> QemuCaps:
    """Start ``emulator`` with no machine, ask it what it knows over QMP, and stop it.

    The first of ``accels`` QEMU can use decides which CPU models count as usable.
    The monitor runs over a socketpair: no socket path, no race waiting for it to appear.
    """
    accel_args = [arg for a in accels for arg in ("-accel", a)]
    ours, theirs = socket.socketpair()
    proc = await asyncio.create_subprocess_exec(
        emulator,
        "-machine", "none",
        *accel_args,
        "-nodefaults", "-nographic", "-S", "-display", "none",
        "-chardev", f"socket,id=probe,fd={theirs.fileno()}",
        "-mon", "chardev=probe,mode=control",
        pass_fds=[theirs.fileno()],
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    theirs.close()
    qmp = QMPClient(f"probe-{arch}")
    try:
        await qmp.connect(ours)
        version = await qmp.execute("query-version")
        kvm = await qmp.execute("query-kvm")
        machines = await qmp.execute("query-machines")
        cpus = await qmp.execute("query-cpu-definitions")
        types = await qmp.execute("qom-list-types", {"abstract": False})
        accel = "kvm" if kvm["enabled"] else "tcg"
        host_cpu = await _expand_host_cpu(qmp, accel)
        await qmp.execute("quit")
        await _quiet_disconnect(qmp)
    except BaseException:
        proc.kill()
        await _quiet_disconnect(qmp)
        raise
    finally:
        ours.close()
        await proc.wait()
    return QemuCaps(
        emulator=emulator,
        arch=arch,
        version=_version_number(version["qemu"]),
        kvm_usable=bool(kvm["present"] and kvm["enabled"]),
        machines=_machines(machines),
        cpu_models=[c["name"] for c in cpus],
        package=version.get("package", ""),
        cpu_blockers={accel: {c["name"]: _shared(c.get("unavailable-features", []))
                              for c in cpus}},
        qom_types=frozenset(_shared([t["name"] for t in types])),
        host_cpu_props={accel: host_cpu} if host_cpu else {},
    )


async def _expand_host_cpu(qmp: QMPClient, accel: str) -> dict[str, object]:
    """Every property of the host-like CPU, non-migratable features included;
    empty where QEMU cannot expand CPU models for this target."""
    model: dict[str, object] = {"name": "max"}
    if accel == "kvm":
        model = {"name": "host", "props": {"migratable": False}}
    try:
        reply = await qmp.execute("query-cpu-model-expansion", {"type": "full", "model": model})
    except ExecuteError:
        return {}
    return dict(reply["model"].get("props", {}))


def _cache_key(emulator: str) -> dict:
    st = os.stat(emulator)
    # /dev/kvm's mode decides whether KVM is usable, so a chmod invalidates too.
    try:
        kvm = os.stat("/dev/kvm")
        kvm_key = [kvm.st_mode, kvm.st_ctime_ns]
    except OSError:
        kvm_key = None
    return {"path": emulator, "mtime": st.st_mtime_ns, "size": st.st_size, "kvm": kvm_key}


async def probe(emulator: str, arch: str, cache_dir: Path | None = None) -> QemuCaps:
    """Capabilities of ``emulator``, from the cache when the binary has not changed."""
    key = _cache_key(emulator)
    # Named after the path too: two binaries of one name (domcapabilities --emulatorbin
    # can name any) must not keep evicting each other's entry.
    tag = hashlib.sha256(emulator.encode()).hexdigest()[:12]
    cache = cache_dir / "capabilities" / f"{Path(emulator).name}-{tag}.json" if cache_dir else None
    if cache is not None:
        try:
            data = json.loads(cache.read_text())
            if data.get("key") == key:
                return QemuCaps.from_json(data["caps"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    caps = await asyncio.wait_for(_query(emulator, arch), PROBE_TIMEOUT)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache, json.dumps({"key": key, "caps": caps.to_json()}), mode=0o644)
    return caps


async def probe_all(cache_dir: Path | None = None) -> dict[str, QemuCaps]:
    """Capabilities of every installed emulator we know, by guest architecture."""
    found = {arch: path for arch, path in EMULATORS.items() if shutil.which(path)}
    results = await asyncio.gather(*(probe(p, a, cache_dir) for a, p in found.items()))
    return dict(zip(found, results))


# -- capabilities XML ----------------------------------------------------------

_WORDSIZE = {"x86_64": 64, "i686": 32, "aarch64": 64, "ppc64": 64, "ppc64le": 64, "s390x": 64}


def _host_uuid() -> str:
    """The machine id written as a UUID: stable across restarts, unlike a random one."""
    try:
        mid = Path("/etc/machine-id").read_text().strip()
        if len(mid) == 32:
            return f"{mid[:8]}-{mid[8:12]}-{mid[12:16]}-{mid[16:20]}-{mid[20:]}"
    except OSError:
        pass
    return "00000000-0000-0000-0000-000000000000"


def _host_cpu_xml(cpu: host.HostCPU) -> list[str]:
    out = ["    <cpu>", f"      <arch>{cpu.arch}</arch>"]
    if cpu.model:
        out.append(f"      <model>{cpu.model}</model>")
    if cpu.vendor:
        out.append(f"      <vendor>{cpu.vendor}</vendor>")
    if cpu.microcode is not None:
        out.append(f"      <microcode version='{cpu.microcode}'/>")
    if cpu.family is not None and cpu.model_number is not None:
        out.append(
            f"      <signature family='{cpu.family}' model='{cpu.model_number}'"
            f" stepping='{cpu.stepping or 0}'/>"
        )
    if cpu.tsc_frequency:
        out.append(f"      <counter name='tsc' frequency='{cpu.tsc_frequency}' scaling='no'/>")
    out.append(
        f"      <topology sockets='{cpu.sockets}' dies='{cpu.dies}'"
        f" cores='{cpu.cores}' threads='{cpu.threads}'/>"
    )
    if cpu.phys_bits:
        out.append(f"      <maxphysaddr mode='emulate' bits='{cpu.phys_bits}'/>")
    out += [f"      <feature name='{f}'/>" for f in cpu.features]
    out += [f"      <pages unit='KiB' size='{size}'/>" for size in cpu.page_sizes]
    out.append("    </cpu>")
    return out


def _topology_xml(cells: list[host.NumaCell]) -> list[str]:
    out = ["    <topology>", f"      <cells num='{len(cells)}'>"]
    for cell in cells:
        out.append(f"        <cell id='{cell.id}'>")
        out.append(f"          <memory unit='KiB'>{cell.memory}</memory>")
        out += [
            f"          <pages unit='KiB' size='{size}'>{count}</pages>"
            for size, count in cell.pages.items()
        ]
        if cell.distances:
            out.append("          <distances>")
            out += [
                f"            <sibling id='{node}' value='{value}'/>"
                for node, value in cell.distances
            ]
            out.append("          </distances>")
        out.append(f"          <cpus num='{len(cell.cpus)}'>")
        out += [
            f"            <cpu id='{c.id}' socket_id='{c.socket_id}' die_id='{c.die_id}'"
            f" core_id='{c.core_id}' siblings='{c.siblings}'/>"
            for c in cell.cpus
        ]
        out += ["          </cpus>", "        </cell>"]
    out += ["      </cells>", "    </topology>"]
    return out


def _cache_xml(banks: list[host.CacheBank]) -> list[str]:
    out = ["    <cache>"]
    for b in banks:
        size, unit = b.pretty_size()
        out.append(
            f"      <bank id='{b.id}' level='{b.level}' type='{b.type}'"
            f" size='{size}' unit='{unit}' cpus='{b.cpus}'/>"
        )
    out.append("    </cache>")
    return out


def _guest_xml(caps: QemuCaps) -> list[str]:
    out = [
        "  <guest>",
        "    <os_type>hvm</os_type>",
        f"    <arch name='{caps.arch}'>",
        f"      <wordsize>{_WORDSIZE.get(caps.arch, 64)}</wordsize>",
        f"      <emulator>{caps.emulator}</emulator>",
    ]
    for m in caps.machines.values():
        deprecated = " deprecated='yes'" if m.deprecated else ""
        out.append(f"      <machine maxCpus='{m.max_cpus}'{deprecated}>{m.name}</machine>")
        if m.alias:
            out.append(
                f"      <machine canonical='{m.name}' maxCpus='{m.max_cpus}'{deprecated}>"
                f"{m.alias}</machine>"
            )
    out.append("      <domain type='qemu'/>")
    if caps.kvm_usable:
        out.append("      <domain type='kvm'/>")
    out += ["    </arch>", "    <features>"]
    if caps.arch == "i686":
        out += ["      <pae/>", "      <nonpae/>"]
    out += [
        "      <acpi default='on' toggle='yes'/>",
        "      <apic default='on' toggle='no'/>",
        "      <cpuselection/>",
        "      <deviceboot/>",
        "      <disksnapshot default='on' toggle='no'/>",
        "    </features>",
        "  </guest>",
    ]
    return out


def capabilities_xml(
    all_caps: dict[str, QemuCaps],
    cpu: host.HostCPU,
    cells: list[host.NumaCell],
    banks: list[host.CacheBank] | None = None,
    host_uuid: str | None = None,
) -> str:
    """The document ``virsh capabilities`` prints, for the emulators we probed.

    Only what this daemon really does is claimed: no migration transports and
    no security driver beyond "none" (guests run as the daemon's user).
    """
    iommu = "yes" if any(Path("/sys/kernel/iommu_groups").glob("*")) else "no"
    out = [
        "<capabilities>",
        "",
        "  <host>",
        f"    <uuid>{host_uuid or _host_uuid()}</uuid>",
        *_host_cpu_xml(cpu),
        "    <power_management/>",
        f"    <iommu support='{iommu}'/>",
        *(_topology_xml(cells) if cells else []),
        *(_cache_xml(banks) if banks else []),
        "    <secmodel>",
        "      <model>none</model>",
        "      <doi>0</doi>",
        "    </secmodel>",
        "  </host>",
        "",
    ]
    # libvirt lists i686 before x86_64; keep a fixed order whatever the probe order was.
    for arch in sorted(all_caps, key=lambda a: (a != "i686", a)):
        out += _guest_xml(all_caps[arch])
        out.append("")
    out.append("</capabilities>")
    return "\n".join(out) + "\n"
