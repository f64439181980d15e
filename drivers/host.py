"""Facts about the host for the connection-level calls and the capabilities XML.

Everything is read from /proc and /sys the way libvirtd 9.0 reads it, so that
``virsh nodeinfo``, ``freecell``, ``hostname`` and ``sysinfo`` print the same
numbers against us as against libvirtd. Each function takes ``root`` (a
directory standing in for ``/``) so tests can point it at a fake tree.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from protocol.errors import ErrorCode, ErrorDomain, VirError

_DMIDECODE_TYPES = "0,1,2,3,4,11,17"


# -- small readers -----------------------------------------------------------


def _read(root: str, path: str) -> str | None:
    try:
        return Path(root, path.lstrip("/")).read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _read_int(root: str, path: str, default: int) -> int:
    text = _read(root, path)
    if text is None:
        return default
    return int(text.strip())


def parse_cpu_list(text: str) -> set[int]:
    """Parse a kernel CPU/node list such as ``0-3,8,10-11``."""
    result: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        result.update(range(int(lo), int(hi or lo) + 1))
    return result


def format_cpu_list(ids: set[int]) -> str:
    """Format ids the way libvirt prints a bitmap: ``0-3,8``."""
    runs: list[str] = []
    ordered = sorted(ids)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        runs.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(runs)


def _listdir(root: str, path: str) -> list[str]:
    try:
        return os.listdir(Path(root, path.lstrip("/")))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _numbered(root: str, path: str, prefix: str) -> list[int]:
    """The N of every ``prefixN`` entry in a sysfs directory, sorted."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)$")
    return sorted(int(m.group(1)) for n in _listdir(root, path) if (m := pattern.match(n)))


def host_arch() -> str:
    """The host architecture as libvirt names it (``virArchFromHost``)."""
    machine = os.uname().machine
    if re.fullmatch(r"i[3-6]86", machine):
        return "i686"
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


# -- hostname ----------------------------------------------------------------


def hostname() -> str:
    """The host name as ``virGetHostname`` gives it.

    A name that is already qualified (or is ``localhost*``) is returned as is;
    otherwise the resolver's canonical name is used, unless resolution fails
    or lands on ``localhost``. This may consult DNS, so async callers should
    run it in a thread.
    """
    name = socket.gethostname()
    if name.startswith("localhost") or "." in name:
        return name
    try:
        flags = socket.AI_CANONNAME | getattr(socket, "AI_CANONIDN", 0)
        infos = socket.getaddrinfo(name, None, flags=flags)
    except (OSError, UnicodeError):
        return name
    canon = infos[0][3] if infos else ""
    if not canon or canon.startswith("localhost"):
        return name
    return canon


# -- memory ------------------------------------------------------------------


def _node_ids(root: str) -> list[int]:
    return _numbered(root, "/sys/devices/system/node", "node")


def _node_meminfo(root: str, node: int) -> tuple[int, int]:
    """(MemTotal, MemFree) of a NUMA node in bytes, as libnuma reports them."""
    text = _read(root, f"/sys/devices/system/node/node{node}/meminfo")
    if text is None:
        raise VirError(
            ErrorCode.INTERNAL_ERROR,
            f"internal error: Failed to query NUMA free memory for node: {node}",
        )
    total = free = 0
    for line in text.splitlines():
        m = re.search(r"(\d+)\s*kB", line)
        if not m:
            continue
        if "MemTotal" in line:
            total = int(m.group(1)) << 10
        elif "MemFree" in line:
            free = int(m.group(1)) << 10
    return total, free


def _proc_meminfo(root: str) -> tuple[int, int]:
    """(MemTotal, MemFree) in bytes for a host without NUMA nodes in sysfs."""
    values = {}
    for line in (_read(root, "/proc/meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            values[key] = int(rest.split()[0]) << 10
    return values.get("MemTotal", 0), values.get("MemFree", 0)


def _memory(root: str) -> tuple[int, int]:
    nodes = _node_ids(root)
    if not nodes:
        return _proc_meminfo(root)
    total = free = 0
    for node in nodes:
        t, f = _node_meminfo(root, node)
        total += t
        free += f
    return total, free


def free_memory(root: str = "/") -> int:
    """Free memory of the whole host in bytes (``virNodeGetFreeMemory``)."""
    return _memory(root)[1]


def cells_free_memory(start: int, maxcells: int, root: str = "/") -> list[int]:
    """Free bytes of NUMA cells ``start`` .. ``start + maxcells - 1``.

    Cells past the last one are silently dropped; a start past it is an error,
    as in ``virNodeGetCellsFreeMemory``.
    """
    nodes = _node_ids(root)
    last = nodes[-1] if nodes else 0
    if start > last:
        raise VirError(
            ErrorCode.INTERNAL_ERROR,
            f"internal error: start cell {start} out of range (0-{last})",
        )
    end = min(start + maxcells - 1, last)
    if not nodes:
        return [_proc_meminfo(root)[1]] if start <= end else []
    result = []
    for node in range(start, end + 1):
        result.append(_node_meminfo(root, node)[1] if node in nodes else 0)
    return result


# -- CPU topology (nodeinfo) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """The fields of ``virNodeInfo``; memory in KiB, mhz truncated."""

    model: str
    memory: int
    cpus: int
    mhz: int
    nodes: int
    sockets: int
    cores: int
    threads: int


def _cpu_mhz(root: str, arch: str) -> int:
    """The last ``cpu MHz`` line of /proc/cpuinfo, fraction dropped."""
    prefix = {
        "x86_64": "cpu MHz",
        "i686": "cpu MHz",
        "ppc64": "clock",
        "ppc64le": "clock",
        "s390x": "cpu MHz dynamic",
        "loongarch64": "CPU MHz",
    }.get(arch)
    mhz = 0
    if prefix is None:
        return mhz
    for line in (_read(root, "/proc/cpuinfo") or "").splitlines():
        if not line.startswith(prefix):
            continue
        rest = line[len(prefix):].lstrip()
        if not rest.startswith(":"):
            continue
        m = re.match(r"\s*(\d+)(?:[.\s]|$)", rest[1:])
        if m:
            mhz = int(m.group(1))
    return mhz


# Missing topology files mean 0 (or the CPU alone), negative ids mean 0: libvirt's rules.
def _cpu_socket(root: str, cpu: int) -> int:
    value = _read_int(root, f"/sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id", 0)
    return max(value, 0)


def _cpu_die(root: str, cpu: int) -> int:
    value = _read_int(root, f"/sys/devices/system/cpu/cpu{cpu}/topology/die_id", 0)
    return max(value, 0)


def _cpu_core(root: str, cpu: int) -> int:
    return _read_int(root, f"/sys/devices/system/cpu/cpu{cpu}/topology/core_id", 0)


def _cpu_siblings(root: str, cpu: int) -> set[int]:
    text = _read(root, f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
    return parse_cpu_list(text) if text is not None else {cpu}


def _present_online(root: str) -> tuple[set[int], set[int]]:
    listed = set(_numbered(root, "/sys/devices/system/cpu", "cpu"))
    present_text = _read(root, "/sys/devices/system/cpu/present")
    present = parse_cpu_list(present_text) if present_text is not None else listed
    online_text = _read(root, "/sys/devices/system/cpu/online")
    online = parse_cpu_list(online_text) if online_text is not None else present
    return present, online


def _scan_cpus(
    cpus: list[int], present: set[int], online: set[int], root: str
) -> tuple[int, int, int, int, int]:
    """(processors, sockets, cores, threads, offline) of one node's CPUs."""
    members = sorted(c for c in cpus if c in present)
    alive = [c for c in members if c in online]
    sockets: dict[int, set[int]] = {}
    threads = 0
    for cpu in alive:
        cores = sockets.setdefault(_cpu_socket(root, cpu), set())
        cores.add(_cpu_core(root, cpu))
        threads = max(threads, len(_cpu_siblings(root, cpu)))
    max_cores = max((len(c) for c in sockets.values()), default=0)
    return len(alive), len(sockets), max_cores, threads, len(members) - len(alive)


def node_info(root: str = "/") -> NodeInfo:
    """What ``virNodeGetInfo`` reports (``virsh nodeinfo``)."""
    arch = host_arch()
    present, online = _present_online(root)
    cpus = nodes = sockets = cores = threads = offline = 0
    for node in _node_ids(root):
        node_cpus = _numbered(root, f"/sys/devices/system/node/node{node}", "cpu")
        n_cpus, n_sockets, n_cores, n_threads, n_off = _scan_cpus(
            node_cpus, present, online, root
        )
        nodes += 1
        cpus += n_cpus
        offline += n_off
        sockets = max(sockets, n_sockets)
        cores = max(cores, n_cores)
        threads = max(threads, n_threads)
    if not (cpus and nodes):
        all_cpus = _numbered(root, "/sys/devices/system/cpu", "cpu")
        cpus, sockets, cores, threads, offline = _scan_cpus(all_cpus, present, online, root)
        nodes = 1
    for value, what in ((cpus, "CPUs"), (sockets, "sockets"), (threads, "threads")):
        if value == 0:
            raise VirError(ErrorCode.INTERNAL_ERROR, f"internal error: no {what} found")
    if nodes * sockets * cores * threads != cpus + offline:
        # libvirt's escape hatch for topologies nodeinfo cannot express.
        nodes, sockets, cores, threads = 1, 1, cpus + offline, 1
    return NodeInfo(
        model=arch,
        memory=_memory(root)[0] // 1024,
        cpus=cpus,
        mhz=_cpu_mhz(root, arch),
        nodes=nodes,
        sockets=sockets,
        cores=cores,
        threads=threads,
    )


# -- host CPU and NUMA cells (capabilities XML) ------------------------------

# /proc/cpuinfo spells some CPUID features differently from libvirt's cpu_map.
_FLAG_NAMES = {
    "pclmulqdq": "pclmuldq",
    "sse4_1": "sse4.1",
    "sse4_2": "sse4.2",
    "tsc_deadline_timer": "tsc-deadline",
    "cr8_legacy": "cr8legacy",
    "nonstop_tsc": "invtsc",
    "sha_ni": "sha-ni",
    "avx512_vpopcntdq": "avx512-vpopcntdq",
    "avx512_bf16": "avx512-bf16",
    "avx512_fp16": "avx512-fp16",
    "avx512_4vnniw": "avx512-4vnniw",
    "avx512_4fmaps": "avx512-4fmaps",
    "avx512_vp2intersect": "avx512-vp2intersect",
    "avx512_vnni": "avx512vnni",
    "avx512_bitalg": "avx512bitalg",
    "avx512_vbmi2": "avx512vbmi2",
    "avx_vnni": "avx-vnni",
    "virt_ssbd": "virt-ssbd",
    "amd_ssbd": "amd-ssbd",
    "amd_stibp": "amd-stibp",
    "flush_l1d": "flush-l1d",
    "arch_capabilities": "arch-capabilities",
    "md_clear": "md-clear",
    "spec_ctrl": "spec-ctrl",
    "ibrs_enhanced": "ibrs-all",
    "tsc_scale": "tsc-scale",
    "vmcb_clean": "vmcb-clean",
    "pausefilter": "pause-filter",
    "nrip_save": "nrip-save",
    "svm_lock": "svm-lock",
}

# Flags the kernel synthesises or keeps for itself; libvirt never reports them.
_KERNEL_ONLY_FLAGS = frozenset(
    "constant_tsc rep_good nopl xtopology cpuid extd_apicid tsc_known_freq "
    "tsc_reliable nonstop_tsc_s3 aperfmperf arch_perfmon pebs bts art amd_dcm up "
    "vmmcall cpb hw_pstate proc_feedback sme sev sev_es tpr_shadow flexpriority "
    "ept vpid ept_ad pti retpoline retpoline_amd rsb_ctxsw use_ibpb use_ibrs_fw "
    "ring3mwait cpuid_fault epb cat_l3 cdp_l3 invpcid_single mba cqm cqm_llc "
    "cqm_occup_llc cqm_mbm_total cqm_mbm_local intel_ppin dtherm ida pln pts hwp "
    "hwp_notify hwp_act_window hwp_epp hwp_pkg_req user_shstk".split()
)


@dataclass(frozen=True, slots=True)
class HostCPU:
    """The host CPU as far as /proc and /sys tell it.

    ``model`` is libvirt's closest CPU map model when the map is installed
    (None otherwise); ``features`` are the ones beyond that model, in
    libvirt's spelling and order, or all of them when there is no model.
    """

    arch: str
    vendor: str | None
    model: str | None
    microcode: int | None
    family: int | None
    model_number: int | None
    stepping: int | None
    tsc_frequency: int | None
    sockets: int
    dies: int
    cores: int
    threads: int
    phys_bits: int | None
    features: tuple[str, ...]
    page_sizes: tuple[int, ...]


_VENDORS = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD", "HygonGenuine": "Hygon"}


def _first_cpuinfo_block(root: str) -> dict[str, str]:
    block: dict[str, str] = {}
    for line in (_read(root, "/proc/cpuinfo") or "").splitlines():
        if not line.strip():
            if block:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            block.setdefault(key.strip(), value.strip())
    return block


def _maybe_int(text: str | None, base: int = 10) -> int | None:
    if text is None:
        return None
    try:
        return int(text, base)
    except ValueError:
        return None


def page_sizes(root: str = "/") -> tuple[int, ...]:
    """Page sizes in KiB: the base page, then every huge page size."""
    huge = []
    for name in _listdir(root, "/sys/kernel/mm/hugepages"):
        m = re.fullmatch(r"hugepages-(\d+)kB", name)
        if m:
            huge.append(int(m.group(1)))
    return (os.sysconf("SC_PAGE_SIZE") // 1024, *sorted(huge))


CPU_MAP_DIR = "/usr/share/libvirt/cpu_map"


@dataclass(frozen=True, slots=True)
class _CPUModel:
    name: str
    vendor: str | None
    signatures: frozenset[tuple[int, int]]
    decode_host: bool
    features: frozenset[str]


@dataclass(frozen=True, slots=True)
class _CPUMap:
    features: tuple[str, ...]        # libvirt's order, which it prints in
    aliases: dict[str, str]
    models: tuple[_CPUModel, ...]    # index.xml order


@functools.cache
def _load_cpu_map(directory: str) -> _CPUMap | None:
    """The x86 half of libvirt's installed CPU map, if there is one."""
    from xml.etree import ElementTree

    base = Path(directory)
    try:
        index = ElementTree.parse(base / "index.xml").getroot()
    except (OSError, ElementTree.ParseError):
        return None
    arch = index.find("arch[@name='x86']")
    if arch is None:
        return None
    features: list[str] = []
    aliases: dict[str, str] = {}
    models: list[_CPUModel] = []
    for include in arch.findall("include"):
        try:
            doc = ElementTree.parse(base / include.get("filename", "")).getroot()
        except (OSError, ElementTree.ParseError):
            return None
        for feat in doc.findall("feature"):
            features.append(feat.get("name", ""))
            for alias in feat.findall("alias"):
                aliases[alias.get("name", "")] = feat.get("name", "")
        for model in doc.findall("model"):
            decode = model.find("decode")
            vendor = model.find("vendor")
            models.append(_CPUModel(
                name=model.get("name", ""),
                vendor=vendor.get("name") if vendor is not None else None,
                signatures=frozenset(
                    (int(s.get("family", -1)), int(s.get("model", -1)))
                    for s in model.findall("signature")
                ),
                decode_host=decode is None or decode.get("host") != "off",
                features=frozenset(f.get("name", "") for f in model.findall("feature")),
            ))
    return _CPUMap(tuple(features), aliases, tuple(models))


def _closest_model(
    cpu_map: _CPUMap, have: set[str], vendor: str | None, signature: tuple[int, int]
) -> _CPUModel | None:
    """libvirt's choice of host CPU model: newest first, nothing the host lacks,
    a matching family/model wins, then the fewest features left over."""
    best: _CPUModel | None = None
    best_extra = 0
    for model in reversed(cpu_map.models):
        if not model.decode_host or (vendor and model.vendor and model.vendor != vendor):
            continue
        if not model.features <= have:
            continue
        extra = len(have - model.features)
        if best is not None:
            best_sig = signature in best.signatures
            this_sig = signature in model.signatures
            if best_sig and not this_sig:
                continue
            if best_sig == this_sig and extra >= best_extra:
                continue
        best, best_extra = model, extra
    return best


def host_cpu(root: str = "/", cpu_map_dir: str = CPU_MAP_DIR) -> HostCPU:
    """Facts for ``<host><cpu>`` of the capabilities XML.

    With libvirt's CPU map installed, the model and the features beyond it
    are chosen as libvirt does, from /proc/cpuinfo flags instead of raw
    CPUID; without it, model is None and every feature is listed.
    """
    info = _first_cpuinfo_block(root)
    flags = info.get("flags", "").split()
    cpu_map = _load_cpu_map(cpu_map_dir)
    aliases = cpu_map.aliases if cpu_map else {}
    features = []
    for flag in flags:
        if flag in _KERNEL_ONLY_FLAGS:
            continue
        name = _FLAG_NAMES.get(flag) or aliases.get(flag, flag)
        features.append(name)
    if "xsave" in flags:
        # Linux turns XSAVE on whenever the CPU has it, which sets OSXSAVE.
        features.append("osxsave")
    vendor = _VENDORS.get(info.get("vendor_id", ""))
    family = _maybe_int(info.get("cpu family"))
    model_number = _maybe_int(info.get("model"))
    stepping = _maybe_int(info.get("stepping"))
    if vendor == "Intel" and family == 6 and (
        model_number in (60, 69, 70) or (model_number == 63 and (stepping or 0) < 4)
    ):
        features = [f for f in features if f not in ("hle", "rtm")]
    model = None
    if cpu_map is not None:
        known = set(cpu_map.features)
        have = {f for f in features if f in known}
        chosen = _closest_model(cpu_map, have, vendor, (family or -1, model_number or -1))
        if chosen is not None:
            model = chosen.name
            have -= chosen.features
        features = [f for f in cpu_map.features if f in have]
    tsc = None
    if "constant_tsc" in flags and "nonstop_tsc" in flags and "cpu MHz" in info:
        tsc = round(float(info["cpu MHz"]) * 1_000_000)
    phys = re.match(r"(\d+) bits physical", info.get("address sizes", ""))
    node = node_info(root)
    return HostCPU(
        arch=node.model,
        vendor=vendor,
        model=model,
        microcode=_maybe_int(info.get("microcode"), 0),
        family=family,
        model_number=model_number,
        stepping=stepping,
        tsc_frequency=tsc,
        sockets=node.sockets,
        dies=1,
        cores=node.cores,
        threads=node.threads,
        phys_bits=int(phys.group(1)) if phys else None,
        features=tuple(dict.fromkeys(features)),
        page_sizes=page_sizes(root),
    )


@dataclass(frozen=True, slots=True)
class CellCPU:
    id: int
    socket_id: int
    die_id: int
    core_id: int
    siblings: str


@dataclass(frozen=True, slots=True)
class NumaCell:
    """One ``<cell>`` of the capabilities topology; memory in KiB."""

    id: int
    memory: int
    pages: dict[int, int] = field(default_factory=dict)
    distances: list[tuple[int, int]] = field(default_factory=list)
    cpus: list[CellCPU] = field(default_factory=list)


def numa_cells(root: str = "/") -> list[NumaCell]:
    """The host NUMA cells with their memory, pages, distances and CPUs."""
    cells = []
    page_kib = os.sysconf("SC_PAGE_SIZE") // 1024
    nodes = _node_ids(root)
    _, online = _present_online(root)
    for node in nodes:
        base = f"/sys/devices/system/node/node{node}"
        total, _ = _node_meminfo(root, node)
        pages = {page_kib: total // 1024 // page_kib}
        for name in _listdir(root, base + "/hugepages"):
            m = re.fullmatch(r"hugepages-(\d+)kB", name)
            if m:
                count = _read_int(root, f"{base}/hugepages/{name}/nr_hugepages", 0)
                pages[int(m.group(1))] = count
        distances = []
        dist_text = _read(root, base + "/distance")
        if dist_text:
            distances = list(zip(nodes, map(int, dist_text.split())))
        cpus = [
            CellCPU(
                id=cpu,
                socket_id=_cpu_socket(root, cpu),
                die_id=_cpu_die(root, cpu),
                core_id=_cpu_core(root, cpu),
                siblings=format_cpu_list(_cpu_siblings(root, cpu)),
            )
            for cpu in _numbered(root, base, "cpu")
            if cpu in online
        ]
        cells.append(NumaCell(node, total // 1024, dict(sorted(pages.items())), distances, cpus))
    return cells


_CACHE_TYPES = {"Unified": "both", "Instruction": "code", "Data": "data"}
_SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


@dataclass(frozen=True, slots=True)
class CacheBank:
    """One ``<bank>`` of the capabilities ``<cache>``; size in bytes."""

    id: int
    level: int
    type: str
    size: int
    cpus: str

    def pretty_size(self) -> tuple[int, str]:
        """The size in the largest unit that divides it, as libvirt prints it."""
        value, unit = self.size, 0
        while value and value % 1024 == 0 and unit < len(_SIZE_UNITS) - 1:
            value //= 1024
            unit += 1
        return value, _SIZE_UNITS[unit]


def _scaled(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]?)", text.strip())
    if not m:
        raise ValueError(f"bad size {text!r}")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]


def cache_banks(root: str = "/") -> list[CacheBank]:
    """Level 3 and higher caches of the online CPUs, each shared bank once."""
    _, online = _present_online(root)
    banks: list[CacheBank] = []
    for cpu in sorted(online):
        base = f"/sys/devices/system/cpu/cpu{cpu}/cache"
        for index in sorted(n for n in _listdir(root, base) if n.startswith("index")):
            files = {}
            for name in ("level", "id", "type", "size", "shared_cpu_list"):
                files[name] = _read(root, f"{base}/{index}/{name}")
            if files["level"] is None or int(files["level"]) < 3:
                continue
            if any(v is None for v in files.values()):
                continue
            kind = files["type"].strip()
            if kind not in _CACHE_TYPES:
                raise VirError(ErrorCode.INTERNAL_ERROR,
                               f"internal error: Unknown cache type '{kind}'")
            bank = CacheBank(
                id=int(files["id"]),
                level=int(files["level"]),
                type=_CACHE_TYPES[kind],
                size=_scaled(files["size"]),
                cpus=format_cpu_list(parse_cpu_list(files["shared_cpu_list"])),
            )
            if bank not in banks:
                banks.append(bank)
    return sorted(banks, key=lambda b: (b.level, b.id))


# -- sysinfo (SMBIOS via dmidecode, like libvirtd) ---------------------------

#: dmidecode reads firmware tables; one that hangs must not hold up the call.
DMIDECODE_TIMEOUT = 10.0

_SECTIONS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    (
        "BIOS Information",
        "bios",
        (("Vendor: ", "vendor"), ("Version: ", "version"),
         ("Release Date: ", "date"), ("BIOS Revision: ", "release")),
    ),
    (
        "System Information",
        "system",
        (("Manufacturer: ", "manufacturer"), ("Product Name: ", "product"),
         ("Version: ", "version"), ("Serial Number: ", "serial"), ("UUID: ", "uuid"),
         ("SKU Number: ", "sku"), ("Family: ", "family")),
    ),
    (
        "Chassis Information",
        "chassis",
        (("Manufacturer: ", "manufacturer"), ("Version: ", "version"),
         ("Serial Number: ", "serial"), ("Asset Tag: ", "asset"), ("SKU Number: ", "sku")),
    ),
)
_BOARD_FIELDS = (
    ("Manufacturer: ", "manufacturer"), ("Product Name: ", "product"),
    ("Version: ", "version"), ("Serial Number: ", "serial"),
    ("Asset Tag: ", "asset"), ("Location In Chassis: ", "location"),
)
_PROCESSOR_FIELDS = (
    ("Socket Designation: ", "socket_destination"), ("Type: ", "type"),
    ("Family: ", "family"), ("Manufacturer: ", "manufacturer"),
    ("Signature: ", "signature"), ("Version: ", "version"),
    ("External Clock: ", "external_clock"), ("Max Speed: ", "max_speed"),
    ("Status: ", "status"), ("Serial Number: ", "serial_number"),
    ("Part Number: ", "part_number"),
)
_MEMORY_FIELDS = (
    ("Size: ", "size"), ("Form Factor: ", "form_factor"), ("Locator: ", "locator"),
    ("Bank Locator: ", "bank_locator"), ("Type: ", "type"),
    ("Type Detail: ", "type_detail"), ("Speed: ", "speed"),
    ("Manufacturer: ", "manufacturer"), ("Serial Number: ", "serial_number"),
    ("Part Number: ", "part_number"),
)


def _value_after(text: str, start: int, label: str) -> str | None:
    """The rest of the line after the first ``label`` at or past ``start``.

    Like libvirt, the search runs on to the end of the whole output, not
    only the current section; trailing blanks are dropped and a blank
    value counts as absent.
    """
    pos = text.find(label, start)
    if pos < 0:
        return None
    pos += len(label)
    eol = text.find("\n", pos)
    value = (text[pos:] if eol < 0 else text[pos:eol]).rstrip()
    return value or None


def _fields(text: str, start: int, spec: tuple[tuple[str, str], ...]) -> dict[str, str]:
    found = {}
    for label, name in spec:
        value = _value_after(text, start, label)
        if value is not None:
            found[name] = value
    return found


def _escape(value: str) -> str:
    value = "".join(c for c in value if c >= " " or c in "\t\n\r")
    return (
        value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        .replace('"', "&quot;").replace("'", "&apos;")
    )


def _block(tag: str, entries: dict[str, str], order: tuple[tuple[str, str], ...]) -> str:
    lines = [f"  <{tag}>\n"]
    for _, name in order:
        if name in entries:
            lines.append(f"    <entry name='{name}'>{_escape(entries[name])}</entry>\n")
    lines.append(f"  </{tag}>\n")
    return "".join(lines)


def _oem_strings(text: str, dmidecode: str) -> list[str] | None:
    pos = text.find("OEM Strings")
    if pos < 0:
        return None
    values = []
    index = 1
    for m in re.finditer(r"String (\d*):? ?([^\n]*)\n", text[pos:]):
        value = m.group(2).rstrip()
        if not value:
            continue
        if "." in value:
            # dmidecode prints a newline inside a string as '.'; ask for the raw one.
            try:
                value = subprocess.run(
                    [dmidecode, "--dump", "--oem-string", str(index)],
                    capture_output=True, text=True, check=False, timeout=DMIDECODE_TIMEOUT,
                ).stdout
            except subprocess.TimeoutExpired:
                pass  # keep the dotted form
        values.append(value)
        index += 1
    return values


def format_sysinfo(text: str, dmidecode: str = "dmidecode") -> str:
    """``<sysinfo type='smbios'>`` from ``dmidecode -q -t 0,1,2,3,4,11,17`` output."""
    parts = []
    for heading, tag, spec in _SECTIONS[:2]:
        pos = text.find(heading)
        if pos >= 0 and (entries := _fields(text, pos, spec)):
            parts.append(_block(tag, entries, spec))
    pos = text.find("Base Board Information")
    while pos >= 0:
        pos += len("Base Board Information")
        if entries := _fields(text, pos, _BOARD_FIELDS):
            parts.append(_block("baseBoard", entries, _BOARD_FIELDS))
        pos = text.find("Base Board Information", pos)
    heading, tag, spec = _SECTIONS[2]
    pos = text.find(heading)
    if pos >= 0 and (entries := _fields(text, pos, spec)):
        parts.append(_block(tag, entries, spec))
    pos = text.find("Processor Information")
    while pos >= 0:
        if entries := _fields(text, pos, _PROCESSOR_FIELDS):
            parts.append(_block("processor", entries, _PROCESSOR_FIELDS))
        pos = text.find("Processor Information", pos + len("Processor Information"))
    pos = text.find("Memory Device")
    while pos >= 0:
        size = text.find("Size: ", pos)
        eol = text.find("\n", size + 6) if size >= 0 else -1
        empty_slot = size >= 0 and "No Module Installed".startswith(text[size + 6:eol])
        if not empty_slot and (entries := _fields(text, pos, _MEMORY_FIELDS)):
            parts.append(_block("memory_device", entries, _MEMORY_FIELDS))
        pos = text.find("Memory Device", pos + len("Memory Device"))
    oem = _oem_strings(text, dmidecode)
    if oem is not None:
        parts.append(
            "  <oemStrings>\n"
            + "".join(f"    <entry>{_escape(v)}</entry>\n" for v in oem)
            + "  </oemStrings>\n"
        )
    if not parts:
        return "<sysinfo type='smbios'/>\n"
    return "<sysinfo type='smbios'>\n" + "".join(parts) + "</sysinfo>\n"


@functools.cache
def _host_sysinfo() -> str | None:
    """Read SMBIOS once, as libvirtd does when its QEMU driver starts."""
    dmidecode = shutil.which("dmidecode", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if dmidecode is None:
        return None
    try:
        result = subprocess.run(
            [dmidecode, "-q", "-t", _DMIDECODE_TYPES],
            capture_output=True, text=True, errors="replace", check=False,
            timeout=DMIDECODE_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return None
    if result.returncode != 0:
        return None
    return format_sysinfo(result.stdout, dmidecode)


def sysinfo_xml() -> str:
    """What ``virConnectGetSysinfo`` returns; raises as libvirtd's QEMU driver
    does when SMBIOS cannot be read (no dmidecode, no /sys/firmware/dmi)."""
    xml = _host_sysinfo()
    if xml is None:
        raise VirError(
            ErrorCode.CONFIG_UNSUPPORTED,
            "unsupported configuration: Host SMBIOS information is not available",
            ErrorDomain.QEMU,
        )
    return xml
