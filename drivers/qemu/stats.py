"""Guest statistics with libvirtd's names and meanings: domstats and the per-device calls.

Monitoring clients (virt-manager) ask for every guest's statistics each second,
so one guest whose QEMU does not answer must not hold up the others. Each
guest's monitor questions go out together as one batch that may take at most
``STATS_TIMEOUT``; while a batch is late the guest is asked nothing more and
reports only what the host itself knows (as libvirtd does when it cannot get
the guest's job). Everything else comes from /proc, the guest's
cgroup and the disk images. An image is read off the loop
(drivers/offload.py), so a hung mount holds up no other guest either: within
``STATS_TIMEOUT`` too, or its size fields are left out, and while that read is
late the image is not waited for again.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
import struct
import weakref
from typing import TYPE_CHECKING, Any

from drivers import offload
from drivers.qemu import cgroup
from drivers.qemu.domain import proc_stat, running_process, stat_cpu_time, ticks_ns
from protocol.errors import ErrorCode, ErrorDomain, VirError
from protocol.typed import BOOLEAN, INT, LLONG, STRING, UINT, ULLONG

if TYPE_CHECKING:
    from drivers.qemu.domain import Domain
    from drivers.qemu.domain_xml import Disk, DomainDef, Interface
    from drivers.qemu.process import QemuProcess

Param = tuple[str, int, Any]
Sizes = tuple[int, int, int]  # capacity, allocation, physical

# virDomainStatsTypes
STATE = 1 << 0
CPU_TOTAL = 1 << 1
BALLOON = 1 << 2
VCPU = 1 << 3
INTERFACE = 1 << 4
BLOCK = 1 << 5
PERF = 1 << 6
IOTHREAD = 1 << 7
MEMORY = 1 << 8
DIRTYRATE = 1 << 9
VM = 1 << 10
# No perf events or memory bandwidth monitors are ever enabled here: those
# groups are supported and always empty.
SUPPORTED = (
    STATE | CPU_TOTAL | BALLOON | VCPU | INTERFACE | BLOCK | PERF | IOTHREAD | MEMORY
    | DIRTYRATE | VM
)

STATS_TIMEOUT = 1.0

# virDomainMemoryStatTags
MEM_SWAP_IN, MEM_SWAP_OUT, MEM_MAJOR_FAULT, MEM_MINOR_FAULT = 0, 1, 2, 3
MEM_UNUSED, MEM_AVAILABLE, MEM_ACTUAL, MEM_RSS = 4, 5, 6, 7
MEM_USABLE, MEM_LAST_UPDATE, MEM_DISK_CACHES = 8, 9, 10
MEM_HUGETLB_PGALLOC, MEM_HUGETLB_PGFAIL = 11, 12

# guest-stats of QEMU's balloon: (its key, tag, domstats name, divisor to KiB or 1).
_GUEST_STATS = (
    ("stat-swap-in", MEM_SWAP_IN, "swap_in", 1024),
    ("stat-swap-out", MEM_SWAP_OUT, "swap_out", 1024),
    ("stat-major-faults", MEM_MAJOR_FAULT, "major_fault", 1),
    ("stat-minor-faults", MEM_MINOR_FAULT, "minor_fault", 1),
    ("stat-free-memory", MEM_UNUSED, "unused", 1024),
    ("stat-total-memory", MEM_AVAILABLE, "available", 1024),
    ("stat-available-memory", MEM_USABLE, "usable", 1024),
    ("last-update", MEM_LAST_UPDATE, "last-update", 1),
    ("stat-disk-caches", MEM_DISK_CACHES, "disk_caches", 1024),
    ("stat-htlb-pgalloc", MEM_HUGETLB_PGALLOC, "hugetlb_pgalloc", 1),
    ("stat-htlb-pgfail", MEM_HUGETLB_PGFAIL, "hugetlb_pgfail", 1),
)
_MEM_NAMES = {tag: name for _key, tag, name, _div in _GUEST_STATS}
_MEM_NAMES[MEM_RSS] = "rss"
_NOT_COLLECTED = (1 << 64) - 1  # QEMU's value for a statistic the guest does not give

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


# -- host-side facts -------------------------------------------------------------


def process_times(pid: int | None) -> tuple[int, int, int] | None:
    """(total, user, system) CPU time in ns of ``pid``, of this daemon for None."""
    fields = proc_stat(f"/proc/{pid}/stat" if pid is not None else "/proc/self/stat")
    if fields is None:
        return None
    user, system = ticks_ns(int(fields[11])), ticks_ns(int(fields[12]))
    return user + system, user, system


def cgroup_times(uuid: str) -> tuple[int, int, int] | None:
    """(total, user, system) CPU time in ns of the guest's cgroup, when it has
    one that accounts CPU time (v2 cpu, or v1 cpuacct): it covers every thread,
    wherever the tuning calls moved them within it."""
    try:
        if cgroup.is_v2():
            text = (cgroup.path("cpu", uuid) / "cpu.stat").read_text()
            values = dict(line.split() for line in text.splitlines())
            return tuple(  # type: ignore[return-value]
                int(values[k]) * 1000 for k in ("usage_usec", "user_usec", "system_usec")
            )
        group = cgroup.path("cpuacct", uuid)
        total = int((group / "cpuacct.usage").read_text())
        ticks = dict(line.split() for line in (group / "cpuacct.stat").read_text().splitlines())
        return total, ticks_ns(int(ticks["user"])), ticks_ns(int(ticks["system"]))
    except (OSError, KeyError, ValueError):
        return None


def rss_kib(pid: int) -> int | None:
    fields = proc_stat(f"/proc/{pid}/stat")
    return int(fields[21]) * _PAGE_SIZE // 1024 if fields else None


def _thread_wait_delay(pid: int, tid: int) -> tuple[int, int]:
    """Time a vCPU thread waited to run: scheduler-debug wait_sum and schedstat delay (ns)."""
    wait = delay = 0
    try:
        with open(f"/proc/{pid}/task/{tid}/sched") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("se.statistics.wait_sum", "se.wait_sum"):
                    wait = int(float(value) * 1_000_000)  # given in ms
                    break
    except (OSError, ValueError):
        pass
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            delay = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return wait, delay


def tap_counters() -> dict[str, list[int]]:
    """Every host interface's counters as a guest behind it as a tap sees them
    (the host's sending is its receiving): rx bytes, packets, errs, drop, then
    tx bytes, packets, errs, drop. One read serves all the guests of a call."""
    try:
        with open("/proc/net/dev") as f:
            lines = f.readlines()[2:]
    except OSError:
        return {}
    found = {}
    for line in lines:
        name, _, rest = line.partition(":")
        v = [int(x) for x in rest.split()]
        found[name.strip()] = [v[8], v[9], v[10], v[11], v[0], v[1], v[2], v[3]]
    return found


def image_sizes(path: str, fmt: str | None) -> Sizes:
    """(capacity, allocation, physical) of an image read from the disk, as
    libvirtd gives them for a guest that is not running.

    A regular file's allocation is what its blocks take, its physical size its
    length, its capacity that length (raw) or the size its qcow2 header gives.
    A block device is its size in all three.
    """
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if stat.S_ISREG(st.st_mode):
            capacity, allocation, physical = st.st_size, st.st_blocks * 512, st.st_size
        elif stat.S_ISDIR(st.st_mode):
            return 0, 0, 0
        else:
            end = f.seek(0, os.SEEK_END)
            capacity = allocation = physical = end
            f.seek(0)
        if fmt == "qcow2":
            header = f.read(32)
            if len(header) == 32 and header[:4] == b"QFI\xfb":
                capacity = struct.unpack(">Q", header[24:32])[0]
    return capacity, allocation, physical


# Image reads under way, by (path, format), and when each was started.
_sizing: dict[tuple[str, str | None], tuple[float, asyncio.Future[Sizes]]] = {}


async def sizes_briefly(path: str, fmt: str | None, deadline: float) -> Sizes | None:
    """:func:`image_sizes` read off the loop, or None when the image cannot be
    read or has not answered by ``deadline`` (loop time). A read running for
    ``STATS_TIMEOUT`` already means a hung image: not waited for at all."""
    loop = asyncio.get_running_loop()
    key = (path, fmt)
    running = _sizing.get(key)
    if running is None:
        job = offload.submit(os.path.dirname(path), image_sizes, path, fmt)
        _sizing[key] = (loop.time(), job)
        job.add_done_callback(lambda done: _read_done(key, done))
    else:
        started, job = running
        if not job.done() and loop.time() - started >= STATS_TIMEOUT:
            return None
    try:
        return await asyncio.wait_for(asyncio.shield(job), max(deadline - loop.time(), 0.01))
    except (TimeoutError, OSError):
        return None


def _read_done(key: tuple[str, str | None], job: asyncio.Future[Sizes]) -> None:
    _sizing.pop(key, None)
    if not job.cancelled():
        job.exception()  # seen: a late failure nobody waited for is no loose end


def _local(disk: Disk) -> bool:
    """A disk whose image is a file or device on this host."""
    return disk.source_type in ("file", "block") and disk.source is not None


async def _disk_sizes(dom: Domain, deadline: float) -> dict[int, Sizes]:
    """The sizes of the guest's local images that answered, by disk index."""
    disks = [(n, disk) for n, disk in enumerate(dom.definition.devices.disks) if _local(disk)]
    found = await asyncio.gather(
        *(sizes_briefly(str(disk.source), disk.driver.get("type"), deadline) for _n, disk in disks)
    )
    return {n: sizes for (n, _disk), sizes in zip(disks, found) if sizes is not None}


def _invalid_arg(what: str) -> VirError:
    return VirError(ErrorCode.INVALID_ARG, f"invalid argument: {what}", ErrorDomain.QEMU)


def find_disk(d: DomainDef, path: str) -> tuple[int, Disk] | None:
    """A disk by target name or source path, as libvirt's lookups accept either."""
    for n, disk in enumerate(d.devices.disks):
        if disk.target == path:
            return n, disk
    for n, disk in enumerate(d.devices.disks):
        if disk.source is not None and disk.source == path:
            return n, disk
    return None


def find_interface(d: DomainDef, device: str) -> Interface:
    """A NIC by MAC address or host-side name (libvirt does not take aliases here)."""
    if re.fullmatch(r"[0-9A-Fa-f]{1,2}(:[0-9A-Fa-f]{1,2}){5}", device):
        want = ":".join(f"{int(x, 16):02x}" for x in device.split(":"))
        for net in d.devices.interfaces:
            if net.mac.lower() == want:
                return net
    else:
        for net in d.devices.interfaces:
            if net.target_dev == device:
                return net
    raise _invalid_arg(f"'{device}' is not a known interface")


# -- the monitor batch -------------------------------------------------------------

# What each guest's query-stats figures are: name -> (field suffix, boolean).
_schemas: weakref.WeakKeyDictionary[QemuProcess, dict[str, tuple[str, bool]]] = (
    weakref.WeakKeyDictionary()
)
_SUFFIX = {"cumulative": ".sum", "instant": ".cur", "peak": ".max"}  # histograms left out

# The batch each guest is answering now, and when it was asked.
_inflight: weakref.WeakKeyDictionary[QemuProcess, tuple[float, asyncio.Task[dict[str, Any]]]] = (
    weakref.WeakKeyDictionary()
)


async def _ask(
    proc: QemuProcess, questions: dict[str, tuple[str, dict[str, Any] | None]]
) -> dict[str, Any]:
    """The answers QEMU gave; a command that failed has no entry."""
    keys = list(questions)
    answers = await asyncio.gather(
        *(proc.monitor.execute(*questions[k]) for k in keys), return_exceptions=True
    )
    return {k: a for k, a in zip(keys, answers) if not isinstance(a, BaseException)}


async def ask_briefly(
    proc: QemuProcess, questions: dict[str, tuple[str, dict[str, Any] | None]]
) -> dict[str, Any]:
    """Answers within ``STATS_TIMEOUT``, or none at all.

    A batch that runs late keeps going in the background (cancelling it would
    leave QEMU answering questions nobody waits for). While it is late the
    guest counts as stuck and is asked nothing more; a batch of another caller
    still within its time is waited for, then ours goes out.
    """
    if not questions:
        return {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STATS_TIMEOUT
    try:
        previous = _inflight.get(proc)
        if previous is not None and not previous[1].done():
            asked, task = previous
            if loop.time() - asked >= STATS_TIMEOUT:
                return {}
            await asyncio.wait_for(asyncio.shield(task), deadline - loop.time())
        task = asyncio.ensure_future(_ask(proc, questions))
        _inflight[proc] = (loop.time(), task)
        return await asyncio.wait_for(asyncio.shield(task), max(deadline - loop.time(), 0.01))
    except asyncio.TimeoutError:
        return {}


def _balloon_path(d: DomainDef) -> str | None:
    mb = d.devices.memballoon
    if mb is None or mb.model != "virtio" or not mb.info.alias:
        return None
    return f"/machine/peripheral/{mb.info.alias}"


def _questions(
    proc: QemuProcess, d: DomainDef, groups: int
) -> dict[str, tuple[str, dict[str, Any] | None]]:
    q: dict[str, tuple[str, dict[str, Any] | None]] = {}
    if groups & (VCPU | VM) and proc not in _schemas:
        q["schemas"] = ("query-stats-schemas", None)
    if groups & VM:
        q["vm-stats"] = ("query-stats", {"target": "vm"})
    if groups & CPU_TOTAL:
        args = {
            "target": "vcpu",
            "providers": [
                {"provider": "kvm", "names": ["halt_poll_success_ns", "halt_poll_fail_ns"]}
            ],
        }
        q["haltpoll"] = ("query-stats", args)
    balloon = _balloon_path(d)
    if groups & BALLOON and balloon is not None:
        q["guest-stats"] = ("qom-get", {"path": balloon, "property": "guest-stats"})
    if groups & VCPU:
        q["cpus"] = ("query-cpus-fast", None)
        q["vcpu-stats"] = ("query-stats", {"target": "vcpu"})
    if groups & BLOCK:
        q["blockstats"] = ("query-blockstats", None)
    if groups & IOTHREAD:
        q["iothreads"] = ("query-iothreads", None)
    if groups & DIRTYRATE:
        q["dirtyrate"] = ("query-dirty-rate", None)
    return q


# -- the groups ----------------------------------------------------------------------


def _state(dom: Domain, out: list[Param]) -> None:
    out.append(("state.state", INT, int(dom.state)))
    out.append(("state.reason", INT, int(dom.reason)))


def _cpu(dom: Domain, answers: dict[str, Any], out: list[Param]) -> None:
    proc = dom.process if dom.active else None
    # For a guest that is not running libvirtd reads the times of "no process",
    # which is its own: the fields are there, with the daemon's times.
    times = None
    if proc is not None:
        times = cgroup_times(dom.uuid_str) or process_times(proc.pid)
    else:
        times = process_times(None)
    if times is not None:
        out += [("cpu.time", ULLONG, times[0]), ("cpu.user", ULLONG, times[1])]
        out.append(("cpu.system", ULLONG, times[2]))
    if proc is None:
        return
    out.append(("cpu.cache.monitor.count", UINT, 0))
    halt = _haltpoll(answers.get("haltpoll"))
    if halt is not None:
        out.append(("cpu.haltpoll.success.time", ULLONG, halt[0]))
        out.append(("cpu.haltpoll.fail.time", ULLONG, halt[1]))


def _haltpoll(answer: Any) -> tuple[int, int] | None:
    if not isinstance(answer, list):
        return None
    success = fail = 0
    for entry in answer:
        values = {s.get("name"): s.get("value") for s in entry.get("stats", [])}
        if not isinstance(values.get("halt_poll_success_ns"), int):
            return None
        success += values["halt_poll_success_ns"]
        fail += int(values.get("halt_poll_fail_ns") or 0)
    return success, fail


def guest_memory_stats(answer: Any) -> list[tuple[int, int]]:
    """(tag, value) of what the balloon driver reported, in libvirt's order."""
    stats = answer.get("stats") if isinstance(answer, dict) else None
    if not isinstance(stats, dict):
        return []
    out = []
    for key, tag, _name, divisor in _GUEST_STATS:
        source = answer if key == "last-update" else stats
        value = source.get(key)
        if isinstance(value, int) and value != _NOT_COLLECTED and value >= 0:
            out.append((tag, value // divisor))
    return out


def _balloon(dom: Domain, answers: dict[str, Any], out: list[Param]) -> None:
    d = dom.definition
    has_balloon = d.devices.memballoon is not None and d.devices.memballoon.model != "none"
    out.append(("balloon.current", ULLONG, d.current_memory if has_balloon else d.memory))
    out.append(("balloon.maximum", ULLONG, d.memory))
    if not dom.active or dom.process is None:
        return
    if _balloon_path(d) is not None and "guest-stats" not in answers:
        return  # the monitor did not answer: nothing of what the guest reports
    stats = guest_memory_stats(answers.get("guest-stats"))
    rss = rss_kib(dom.process.pid)
    if rss is not None:
        stats.append((MEM_RSS, rss))
    out += [(f"balloon.{_MEM_NAMES[tag]}", ULLONG, value) for tag, value in stats]


def _vcpu(dom: Domain, answers: dict[str, Any], out: list[Param]) -> None:
    d = dom.definition
    current = d.vcpu_current or d.vcpus
    out.append(("vcpu.current", UINT, current))
    out.append(("vcpu.maximum", UINT, d.vcpus))
    proc = dom.process
    cpus = answers.get("cpus")
    if not dom.active or proc is None or not isinstance(cpus, list):
        return
    by_path = {e.get("qom-path"): e for e in answers.get("vcpu-stats") or []}
    for cpu in sorted(cpus, key=lambda c: c.get("cpu-index", 0)):
        n, tid = cpu.get("cpu-index", 0), cpu.get("thread-id", 0)
        fields = proc_stat(f"/proc/{proc.pid}/task/{tid}/stat")
        busy = stat_cpu_time(fields) if fields else 0
        wait, delay = _thread_wait_delay(proc.pid, tid)
        out.append((f"vcpu.{n}.state", INT, 1))  # VIR_VCPU_RUNNING, as libvirtd says of any
        out += [(f"vcpu.{n}.time", ULLONG, busy), (f"vcpu.{n}.wait", ULLONG, wait)]
        out.append((f"vcpu.{n}.delay", ULLONG, delay))
        entry = by_path.get(cpu.get("qom-path"))
        if entry is not None:
            _custom(entry, _schemas.get(proc, {}), f"vcpu.{n}", out)


def read_schemas(answer: Any) -> dict[str, tuple[str, bool]]:
    """query-stats-schemas as name -> (libvirt's suffix for its kind, boolean)."""
    found = {}
    for provider in answer if isinstance(answer, list) else []:
        for s in provider.get("stats", []):
            suffix = _SUFFIX.get(s.get("type"))
            if suffix is not None:
                found[s["name"]] = (suffix, s.get("unit") == "boolean")
    return found


def _custom(entry: dict[str, Any], schema: dict[str, tuple[str, bool]], prefix: str,
            out: list[Param]) -> None:
    """KVM's own figures of a vCPU or the VM, e.g. vcpu.0.exits.sum, vm.pages_4k.cur."""
    for s in entry.get("stats", []):
        name, value = s.get("name"), s.get("value")
        kind = schema.get(name)
        if kind is None:
            continue
        suffix, boolean = kind
        if boolean and isinstance(value, bool):
            out.append((f"{prefix}.{name}{suffix}", BOOLEAN, value))
        elif not boolean and isinstance(value, int) and not isinstance(value, bool):
            out.append((f"{prefix}.{name}{suffix}", ULLONG, value))


def _vm(dom: Domain, answers: dict[str, Any], out: list[Param]) -> None:
    entries = answers.get("vm-stats")
    if dom.process is not None and isinstance(entries, list) and len(entries) == 1:
        _custom(entries[0], _schemas.get(dom.process, {}), "vm", out)


_NET_FIELDS = (
    "rx.bytes", "rx.pkts", "rx.errs", "rx.drop", "tx.bytes", "tx.pkts", "tx.errs", "tx.drop"
)


def _interfaces(dom: Domain, taps: dict[str, list[int]], out: list[Param]) -> None:
    if not dom.active:
        return
    nets = dom.definition.devices.interfaces
    out.append(("net.count", UINT, len(nets)))
    for n, net in enumerate(nets):
        if not net.target_dev:
            continue  # user-mode networking has no host side to count
        out.append((f"net.{n}.name", STRING, net.target_dev))
        counters = taps.get(net.target_dev)
        if counters is not None:
            out += [(f"net.{n}.{f}", ULLONG, v) for f, v in zip(_NET_FIELDS, counters)]


def qdev_alias(entry: dict[str, Any]) -> str:
    """The alias of the disk a query-block(stats) entry belongs to.

    With -blockdev the device name is empty and "qdev" names the device: its
    id alone, or a path /machine/peripheral/<id>[/virtio-backend].
    """
    parts = str(entry.get("qdev") or "").split("/")
    if "peripheral" in parts[:-1]:
        return parts[parts.index("peripheral") + 1]
    if len(parts) == 1 and parts[0]:
        return parts[0]
    return str(entry.get("device") or "").removeprefix("drive-")


def blockstats_by_alias(answer: Any) -> dict[str, dict[str, Any]]:
    """query-blockstats entries by the alias of the disk they belong to."""
    return {qdev_alias(e): e for e in answer} if isinstance(answer, list) else {}


def _wr_highest(entry: dict[str, Any]) -> int:
    """The highest offset written, by the image's storage node (its file)."""
    parent = entry.get("parent") or {}
    return int((parent.get("stats") or {}).get("wr_highest_offset", 0))


def _block(dom: Domain, answers: dict[str, Any], sizes: dict[int, Sizes],
           out: list[Param]) -> None:
    disks = dom.definition.devices.disks
    out.append(("block.count", UINT, len(disks)))
    by_alias = blockstats_by_alias(answers.get("blockstats"))
    have_stats = "blockstats" in answers
    for n, disk in enumerate(disks):
        p = f"block.{n}."
        out.append((p + "name", STRING, disk.target))
        local = _local(disk)
        if local:
            out.append((p + "path", STRING, disk.source))
        if not dom.active:
            if n in sizes:
                capacity, allocation, physical = sizes[n]
                for name, value in (("allocation", allocation), ("capacity", capacity)):
                    if value:
                        out.append((p + name, ULLONG, value))
                if physical:
                    out.append((p + "physical", ULLONG, physical))
            continue
        if disk.source is not None or disk.net_source:
            # The N of its libvirt-N block nodes, as the live XML's index= shows.
            out.append((p + "backingIndex", UINT, disk.node_index or len(disks) - n))
        entry = by_alias.get(disk.info.alias or "") if have_stats else None
        if entry is None:
            continue
        s = entry.get("stats", {})
        out += [
            (p + "rd.reqs", ULLONG, s.get("rd_operations", 0)),
            (p + "rd.bytes", ULLONG, s.get("rd_bytes", 0)),
            (p + "rd.times", ULLONG, s.get("rd_total_time_ns", 0)),
            (p + "wr.reqs", ULLONG, s.get("wr_operations", 0)),
            (p + "wr.bytes", ULLONG, s.get("wr_bytes", 0)),
            (p + "wr.times", ULLONG, s.get("wr_total_time_ns", 0)),
            (p + "fl.reqs", ULLONG, s.get("flush_operations", 0)),
            (p + "fl.times", ULLONG, s.get("flush_total_time_ns", 0)),
        ]
        if not local:
            continue
        out.append((p + "allocation", ULLONG, _wr_highest(entry)))
        if n not in sizes:
            continue
        # QEMU's virtual-size and actual-size (the blocks a file uses; none
        # for a device, whose physical size is then its length).
        capacity, allocation, physical = sizes[n]
        in_use = allocation if disk.source_type == "file" else 0
        if capacity:
            out.append((p + "capacity", ULLONG, capacity))
        out.append((p + "physical", ULLONG, in_use or physical))


def _iothreads(answers: dict[str, Any], out: list[Param]) -> None:
    threads = answers.get("iothreads")
    if not threads:
        return
    out.append(("iothread.count", UINT, len(threads)))
    for t in threads:
        if "poll-max-ns" not in t:
            continue
        n = str(t.get("id", "")).removeprefix("iothread")
        out.append((f"iothread.{n}.poll-max-ns", ULLONG, t["poll-max-ns"]))
        out.append((f"iothread.{n}.poll-grow", UINT, t.get("poll-grow", 0)))
        out.append((f"iothread.{n}.poll-shrink", UINT, t.get("poll-shrink", 0)))


_DIRTYRATE_STATUS = {"unstarted": 0, "measuring": 1, "measured": 2}


def _dirtyrate(answers: dict[str, Any], out: list[Param]) -> None:
    info = answers.get("dirtyrate")
    if not isinstance(info, dict):
        return
    status = _DIRTYRATE_STATUS.get(str(info.get("status")), 0)
    out.append(("dirtyrate.calc_status", INT, status))
    out.append(("dirtyrate.calc_start_time", LLONG, int(info.get("start-time", 0))))
    out.append(("dirtyrate.calc_period", INT, int(info.get("calc-time", 0))))
    out.append(("dirtyrate.calc_mode", STRING, str(info.get("mode", "page-sampling"))))
    if status == 2 and "dirty-rate" in info:
        out.append(("dirtyrate.megabytes_per_second", LLONG, int(info["dirty-rate"])))
        for v in info.get("vcpu-dirty-rate") or []:
            out.append(
                (f"dirtyrate.vcpu.{v['id']}.megabytes_per_second", ULLONG, int(v["dirty-rate"]))
            )


async def domain_stats(
    dom: Domain, groups: int, taps: dict[str, list[int]] | None = None
) -> list[Param]:
    """One guest's record for the ``groups`` asked (already limited to SUPPORTED);
    ``taps`` as :func:`tap_counters` gives them, read here if not given."""
    proc = dom.process if dom.active else None
    asking = (
        ask_briefly(proc, _questions(proc, dom.definition, groups)) if proc is not None
        else _none()
    )
    answers: dict[str, Any]
    sizes: dict[int, Sizes] = {}
    if groups & BLOCK:  # the images are read while the monitor answers
        deadline = asyncio.get_running_loop().time() + STATS_TIMEOUT
        answers, sizes = await asyncio.gather(asking, _disk_sizes(dom, deadline))
    else:
        answers = await asking
    if proc is not None and "schemas" in answers:
        _schemas[proc] = read_schemas(answers["schemas"])
    out: list[Param] = []
    if groups & STATE:
        _state(dom, out)
    if groups & CPU_TOTAL:
        _cpu(dom, answers, out)
    if groups & BALLOON:
        _balloon(dom, answers, out)
    if groups & VCPU:
        _vcpu(dom, answers, out)
    if groups & INTERFACE:
        _interfaces(dom, tap_counters() if taps is None else taps, out)
    if groups & BLOCK:
        _block(dom, answers, sizes, out)
    if groups & IOTHREAD:
        _iothreads(answers, out)
    if groups & DIRTYRATE:
        _dirtyrate(answers, out)
    if groups & VM:
        _vm(dom, answers, out)
    return out


async def _none() -> dict[str, Any]:
    return {}


async def all_stats(doms: list[Domain], groups: int) -> list[list[Param]]:
    """The records of ``doms``, gathered side by side."""
    taps = tap_counters() if groups & INTERFACE else {}
    return list(await asyncio.gather(*(domain_stats(dom, groups, taps) for dom in doms)))


# -- the per-device calls --------------------------------------------------------------


async def memory_stats(dom: Domain) -> list[tuple[int, int]]:
    """virDomainMemoryStats: the balloon's size, what the guest reported, the RSS."""
    proc = running_process(dom)
    d = dom.definition
    out: list[tuple[int, int]] = []
    path = _balloon_path(d)
    if path is not None:
        balloon = await proc.monitor.execute("query-balloon")
        out.append((MEM_ACTUAL, int(balloon.get("actual", 0)) // 1024))
        try:
            answer = await proc.monitor.execute(
                "qom-get", {"path": path, "property": "guest-stats"}
            )
        except VirError:
            answer = None
        out += guest_memory_stats(answer)
    rss = rss_kib(proc.pid)
    if rss is not None:
        out.append((MEM_RSS, rss))
    return out


async def set_stats_period(proc: QemuProcess, d: DomainDef, period: int | None = None) -> None:
    """Tell the balloon driver how often (s) to report the guest's memory use."""
    path = _balloon_path(d)
    mb = d.devices.memballoon
    period = period if period is not None else (mb.stats_period if mb else None)
    if path is None or period is None:
        return
    await proc.monitor.execute(
        "qom-set", {"path": path, "property": "guest-stats-polling-interval", "value": period}
    )


def _disk_or_error(d: DomainDef, path: str) -> tuple[int, Disk]:
    found = find_disk(d, path)
    if found is None:
        raise _invalid_arg(f"invalid path: {path}")
    return found


# Field names and order of virDomainBlockStatsFlags, with query-blockstats' keys.
BLOCK_STATS_FIELDS = (
    ("wr_bytes", "wr_bytes"),
    ("wr_operations", "wr_operations"),
    ("rd_bytes", "rd_bytes"),
    ("rd_operations", "rd_operations"),
    ("flush_operations", "flush_operations"),
    ("wr_total_times", "wr_total_time_ns"),
    ("rd_total_times", "rd_total_time_ns"),
    ("flush_total_times", "flush_total_time_ns"),
)


async def block_stats(dom: Domain, path: str) -> dict[str, int]:
    """query-blockstats of one disk, or summed over all disks when ``path`` is ''."""
    proc = running_process(dom)
    d = dom.definition
    disks = d.devices.disks if path == "" else [_disk_or_error(d, path)[1]]
    by_alias = blockstats_by_alias(await proc.monitor.execute("query-blockstats"))
    totals = {name: 0 for name, _key in BLOCK_STATS_FIELDS}
    for disk in disks:
        entry = by_alias.get(disk.info.alias or "")
        if entry is None:
            if path:
                raise VirError(
                    ErrorCode.INTERNAL_ERROR,
                    f"internal error: cannot find statistics for device '{disk.info.alias}'",
                    ErrorDomain.QEMU,
                )
            continue
        for name, key in BLOCK_STATS_FIELDS:
            totals[name] += int(entry.get("stats", {}).get(key, 0))
    return totals


def interface_stats(dom: Domain, device: str) -> list[int]:
    """rx bytes, packets, errs, drop, tx bytes, packets, errs, drop of one NIC."""
    running_process(dom)
    net = find_interface(dom.definition, device)
    if not net.target_dev:
        raise VirError(
            ErrorCode.INTERNAL_ERROR,
            "internal error: Interface name not provided",
            ErrorDomain.QEMU,
        )
    counters = tap_counters().get(net.target_dev)
    if counters is None:
        raise VirError(
            ErrorCode.SYSTEM_ERROR,
            f"Interface {net.target_dev} not found",  # the words of libvirt's /proc reader
            ErrorDomain.NONE,
        )
    return counters


async def block_info(dom: Domain, path: str) -> tuple[int, int, int]:
    """(capacity, allocation, physical) of one disk, as virDomainGetBlockInfo gives them."""
    d = dom.definition
    found = find_disk(d, path)
    if found is None:
        raise _invalid_arg(f"invalid path {path} not assigned to domain")
    _n, disk = found
    if disk.type == "volume" and disk.source is None:  # not resolved: the guest is off
        raise VirError(
            ErrorCode.INTERNAL_ERROR,
            "internal error: missing storage backend for 'volume' storage",
            ErrorDomain.STORAGE,
        )
    if disk.source is None or disk.source_type not in ("file", "block"):
        raise _invalid_arg(f"disk '{disk.target}' does not currently have a source assigned")
    try:
        capacity, allocation, physical = await offload.run(
            os.path.dirname(disk.source), image_sizes, disk.source, disk.driver.get("type"),
            domain=ErrorDomain.QEMU,
        )
    except OSError as e:
        raise VirError(
            ErrorCode.SYSTEM_ERROR,
            f"cannot stat file '{disk.source}': {e.strerror}",
            ErrorDomain.NONE,
        ) from None
    if not dom.active or dom.process is None:
        return capacity, allocation, physical
    # Running: QEMU's actual-size (the blocks in use) stands for the
    # allocation of a qcow2 file or of anything not yet written to; the
    # highest offset written for the rest.
    in_use = allocation if disk.source_type == "file" else 0
    by_alias = blockstats_by_alias(await dom.process.monitor.execute("query-blockstats"))
    entry = by_alias.get(disk.info.alias or "")
    written = _wr_highest(entry) if entry is not None else 0
    if disk.source_type == "file" and disk.driver.get("type") == "qcow2" or not written:
        allocation = in_use
    else:
        allocation = written
    if in_use == 0 or allocation == 0 or allocation == in_use:
        if allocation == 0:
            allocation = in_use
        return capacity, allocation, physical
    return capacity, allocation, in_use


# virDomainDiskErrorCode by QEMU's io-status
_IO_STATUS = {"failed": 1, "nospace": 2}


async def disk_errors(dom: Domain) -> list[tuple[str, int]]:
    """(target, error code) of the disks QEMU stopped on an I/O error."""
    proc = running_process(dom)
    by_alias = {
        qdev_alias(e): str(e.get("io-status", "ok"))
        for e in await proc.monitor.execute("query-block")
    }
    errors = []
    for disk in dom.definition.devices.disks:
        code = _IO_STATUS.get(by_alias.get(disk.info.alias or "", "ok"))
        if code:
            errors.append((disk.target, code))
    return errors

