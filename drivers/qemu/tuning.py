"""Resource tuning of QEMU guests: memory, vCPUs, pinning, scheduler and cgroup limits.

Each setter changes the definitions libvirt's AFFECT flags name, through
``affect.modify``. A live change goes to QEMU or the kernel first and is then
written into the live definition, so the live XML and the status file say what
is in force; a config change edits a copy that replaces the persistent
definition.

The ``<cputune>``, ``<memtune>`` and ``<blkiotune>`` sections are kept by the
XML model as elements; the helpers here read and rebuild them in libvirt's
order of children.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lxml import etree

from drivers.host import format_cpu_list, parse_cpu_list
from drivers.qemu import cgroup, stats
from drivers.qemu.affect import (
    AFFECT_CONFIG,
    AFFECT_LIVE,
    Edit,
    live_changed,
    modify,
    one_def,
)
from drivers.qemu.domain import Domain, proc_stat, running_process, stat_cpu_time
from protocol.errors import ErrorCode, ErrorDomain, VirError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from drivers.qemu.domain_xml import DomainDef
    from drivers.qemu.driver import QemuDriver

MEM_MAXIMUM = 1 << 2
VCPU_MAXIMUM = 1 << 2
VCPU_GUEST = 1 << 3
VCPU_HOTPLUGGABLE = 1 << 4

# VIR_DOMAIN_MEMORY_PARAM_UNLIMITED: the largest KiB value a double holds exactly.
UNLIMITED = 9007199254740991
PERIOD_RANGE = (1000, 1000000)
QUOTA_RANGE = (1000, 17592186044415)
UNPLUG_TIMEOUT = 5.0


def _error(code: ErrorCode, text: str, domain: ErrorDomain = ErrorDomain.QEMU) -> VirError:
    return VirError(code, text, domain)


def _invalid(text: str, domain: ErrorDomain = ErrorDomain.QEMU) -> VirError:
    return _error(ErrorCode.OPERATION_INVALID, f"Requested operation is not valid: {text}", domain)


def _bad_arg(text: str, domain: ErrorDomain = ErrorDomain.QEMU) -> VirError:
    return _error(ErrorCode.INVALID_ARG, f"invalid argument: {text}", domain)


def _config_only(edit: Edit, text: str) -> DomainDef:
    """The config copy for a change libvirt makes to the persistent definition only."""
    if edit.live is not None:
        raise _invalid(text)
    assert edit.config is not None
    return edit.config


# -- CPU sets --------------------------------------------------------------------


def host_cpus() -> set[int]:
    """The host's online CPUs: what an unpinned thread may run on."""
    try:
        with open("/sys/devices/system/cpu/online") as f:
            return parse_cpu_list(f.read())
    except OSError:
        return set(range(os.cpu_count() or 1))


def host_cpu_count() -> int:
    """The size of a host CPU map: the highest present CPU plus one."""
    try:
        with open("/sys/devices/system/cpu/present") as f:
            return max(parse_cpu_list(f.read())) + 1
    except (OSError, ValueError):
        return os.cpu_count() or 1


def cpumap_to_set(cpumap: bytes) -> set[int]:
    return {i * 8 + b for i, byte in enumerate(cpumap) for b in range(8) if byte >> b & 1}


def set_to_cpumap(cpus: set[int], maplen: int) -> bytes:
    out = bytearray(maplen)
    for cpu in cpus:
        if cpu // 8 < maplen:
            out[cpu // 8] |= 1 << (cpu % 8)
    return bytes(out)


def _pin_set(cpumap: bytes) -> set[int]:
    cpus = cpumap_to_set(cpumap)
    if not cpus:
        raise _bad_arg("Empty cpu list for pinning")
    return cpus


def _set_affinity(tid: int, cpus: set[int]) -> None:
    try:
        os.sched_setaffinity(tid, cpus)
    except ProcessLookupError:
        pass  # a thread that ended meanwhile needs no pinning
    except OSError as e:
        raise _error(
            ErrorCode.SYSTEM_ERROR,
            f"cannot set CPU affinity on process {tid}: {e.strerror}",
            ErrorDomain.NONE,
        ) from None


# -- kept sections ----------------------------------------------------------------

# <cputune> children in the order libvirt prints them; the scalars first.
CPUTUNE_SCALARS = (
    "shares period quota global_period global_quota emulator_period emulator_quota"
    " iothread_period iothread_quota".split()
)
_CPUTUNE_ORDER = (*CPUTUNE_SCALARS, "vcpupin", "emulatorpin", "iothreadpin", "vcpusched",
                  "emulatorsched", "iothreadsched", "cachetune", "memorytune")


def _section(d: DomainDef, tag: str) -> etree._Element:
    el = d.kept.get(tag)
    if el is None:
        el = etree.Element(tag)
        d.kept[tag] = el
    return el


def _drop_if_empty(d: DomainDef, tag: str) -> None:
    el = d.kept.get(tag)
    if el is not None and len(el) == 0:
        del d.kept[tag]


def _sort_children(el: etree._Element, order: tuple[str, ...]) -> None:
    def key(child: etree._Element) -> tuple[int, int]:
        tag = child.tag if isinstance(child.tag, str) else ""
        rank = order.index(tag) if tag in order else len(order)
        vcpu = int(child.get("vcpu", "0")) if tag == "vcpupin" else 0
        return rank, vcpu

    children = sorted((c for c in el if isinstance(c.tag, str)), key=key)
    for c in list(el):
        el.remove(c)
    el.extend(children)
    el.text = None


def cputune_value(d: DomainDef, tag: str) -> int | None:
    el = d.kept.get("cputune")
    child = el.find(tag) if el is not None else None
    if child is None or not (child.text or "").strip():
        return None
    return int(child.text.strip())


def _set_cputune(d: DomainDef, tag: str, value: int | None) -> None:
    el = _section(d, "cputune")
    old = el.find(tag)
    if old is not None:
        el.remove(old)
    if value is not None:
        etree.SubElement(el, tag).text = str(value)
    _sort_children(el, _CPUTUNE_ORDER)
    _drop_if_empty(d, "cputune")


def vcpu_pin(d: DomainDef, vcpu: int) -> set[int]:
    """Where ``vcpu`` may run by the definition: its pin, ``<vcpu cpuset>``, or anywhere."""
    el = d.kept.get("cputune")
    if el is not None:
        for pin in el.findall("vcpupin"):
            if pin.get("vcpu") == str(vcpu) and pin.get("cpuset"):
                return parse_cpu_list(pin.get("cpuset", ""))
    if d.vcpu_cpuset:
        return parse_cpu_list(d.vcpu_cpuset)
    return host_cpus()


def emulator_pin(d: DomainDef) -> set[int]:
    el = d.kept.get("cputune")
    pin = el.find("emulatorpin") if el is not None else None
    if pin is not None and pin.get("cpuset"):
        return parse_cpu_list(pin.get("cpuset", ""))
    if d.vcpu_cpuset:
        return parse_cpu_list(d.vcpu_cpuset)
    return host_cpus()


def _set_vcpu_pin(d: DomainDef, vcpu: int, cpus: set[int]) -> None:
    el = _section(d, "cputune")
    for pin in el.findall("vcpupin"):
        if pin.get("vcpu") == str(vcpu):
            el.remove(pin)
    etree.SubElement(el, "vcpupin", vcpu=str(vcpu), cpuset=format_cpu_list(cpus))
    _sort_children(el, _CPUTUNE_ORDER)


def _set_emulator_pin(d: DomainDef, cpus: set[int]) -> None:
    el = _section(d, "cputune")
    for pin in el.findall("emulatorpin"):
        el.remove(pin)
    etree.SubElement(el, "emulatorpin", cpuset=format_cpu_list(cpus))
    _sort_children(el, _CPUTUNE_ORDER)


def _drop_pins_from(d: DomainDef, first: int) -> None:
    """Pins of vCPUs a smaller maximum no longer has go with them."""
    el = d.kept.get("cputune")
    if el is None:
        return
    for pin in el.findall("vcpupin"):
        if int(pin.get("vcpu", "0")) >= first:
            el.remove(pin)
    _drop_if_empty(d, "cputune")


# -- memory --------------------------------------------------------------------------


async def set_memory(driver: QemuDriver, dom: Domain, kib: int, flags: int) -> None:
    """virDomainSetMemoryFlags: the balloon target, or with MEM_MAXIMUM the maximum."""
    async with modify(driver, dom, flags) as edit:
        if flags & MEM_MAXIMUM:
            new = _config_only(edit, "cannot resize the maximum memory on an active domain")
            new.memory = kib
            new.current_memory = min(new.current_memory, kib)
            return
        if any(kib > d.memory for d in edit.defs()):
            raise _bad_arg("cannot set memory higher than max memory")
        if edit.live is not None:
            mb = edit.live.devices.memballoon
            if mb is None or mb.model == "none":
                raise _invalid(
                    "Unable to change memory of active domain without the balloon"
                    " device and guest OS balloon driver"
                )
            # The live size follows the guest: BALLOON_CHANGE events report it.
            await running_process(dom).monitor.execute("balloon", {"value": kib * 1024})
        if edit.config is not None:
            edit.config.current_memory = kib


async def set_memory_stats_period(driver: QemuDriver, dom: Domain, period: int, flags: int) -> None:
    """How often the balloon driver refreshes the guest's memory statistics."""
    async with modify(driver, dom, flags) as edit:
        if period < 0:
            raise _bad_arg("stats period must be >= 0")
        balloons = [d.devices.memballoon for d in edit.defs()]
        if any(mb is None or mb.model == "none" for mb in balloons):
            raise _invalid(
                "No memory balloon device configured, can not set the collection period"
            )
        if edit.live is not None:
            mb = edit.live.devices.memballoon
            assert mb is not None
            path = f"/machine/peripheral/{mb.info.alias or 'balloon0'}"
            await running_process(dom).monitor.execute(
                "qom-set",
                {"path": path, "property": "guest-stats-polling-interval", "value": period},
            )
        for mb in balloons:
            assert mb is not None
            mb.stats_period = period or None


# -- vCPU counts ---------------------------------------------------------------------


def _no_agent() -> VirError:
    return _error(
        ErrorCode.ARGUMENT_UNSUPPORTED, "argument unsupported: QEMU guest agent is not configured"
    )


def get_vcpus_flags(dom: Domain, flags: int) -> int:
    if flags & VCPU_GUEST:
        raise _no_agent()
    d = one_def(dom, flags & (AFFECT_LIVE | AFFECT_CONFIG))
    return d.vcpus if flags & VCPU_MAXIMUM else d.vcpu_current or d.vcpus


async def set_vcpus(driver: QemuDriver, dom: Domain, n: int, flags: int) -> None:
    """virDomainSetVcpusFlags: the current count (hotplug when live) or the maximum."""
    if n == 0:
        raise _error(
            ErrorCode.INVALID_ARG,
            "nvcpus in virDomainSetVcpusFlags must not be zero",
            ErrorDomain.DOMAIN,
        )
    if flags & VCPU_MAXIMUM and flags & AFFECT_LIVE:
        raise _error(
            ErrorCode.INVALID_ARG,
            "Flag 'VIR_DOMAIN_AFFECT_CONFIG' is required by flag 'VIR_DOMAIN_VCPU_MAXIMUM'",
            ErrorDomain.DOMAIN,
        )
    if flags & VCPU_GUEST:
        raise _no_agent()
    async with modify(driver, dom, flags) as edit:
        if flags & VCPU_MAXIMUM:
            new = _config_only(edit, "maximum vcpu count of a live domain can't be modified")
            new.vcpus = n
            current = min(new.vcpu_current or n, n)
            new.vcpu_current = current if current != n else None
            _drop_pins_from(new, n)
            return
        if edit.live is not None and n > edit.live.vcpus:
            raise _bad_arg(
                "requested vcpus is greater than max allowable vcpus for the live"
                f" domain: {n} > {edit.live.vcpus}"
            )
        if edit.config is not None and n > edit.config.vcpus:
            raise _bad_arg(
                "requested vcpus is greater than max allowable vcpus for the persistent"
                f" domain: {n} > {edit.config.vcpus}"
            )
        if edit.live is not None:
            try:
                await _hotplug(dom, n)
                await _apply_pins(dom, edit.live)
                if cgroup.path("cpuacct", dom.uuid_str).exists():
                    _join_cpuacct(dom, await vcpu_threads(dom))
                group = driver._cgroup(dom)
                if group is not None and (group / "emulator").is_dir():
                    # New vCPU threads start in the emulator group: to their own.
                    await _apply_thread_bandwidth(driver, dom, _live_sched_values(edit.live))
            except BaseException:
                live_changed(driver, dom)  # what did get plugged is in the live definition
                raise
        if edit.config is not None:
            edit.config.vcpu_current = n if n != edit.config.vcpus else None


def _slot_key(cpu: dict[str, Any]) -> tuple[int, ...]:
    props = cpu.get("props", {})
    return tuple(int(props.get(k, 0)) for k in ("node-id", "socket-id", "die-id", "core-id",
                                                 "thread-id"))


async def _hotplug(dom: Domain, n: int) -> None:
    """Plug or unplug vCPUs until ``n`` are present, one at a time, in slot order.

    CPUs the guest booted with stay; only those plugged later (with our
    ``vcpuN`` ids) can go, and only when the guest lets them: QEMU says so
    by dropping them from ``query-hotpluggable-cpus``.
    """
    monitor = running_process(dom).monitor
    slots = sorted(await monitor.execute("query-hotpluggable-cpus"), key=_slot_key)
    present = [i for i, c in enumerate(slots) if "qom-path" in c]
    try:
        free = [i for i, c in enumerate(slots) if "qom-path" not in c]
        for i in free[: max(n - len(present), 0)]:
            props = slots[i].get("props", {})
            await monitor.execute("device_add", {"driver": slots[i]["type"], "id": f"vcpu{i}",
                                                 **props})
        removable = [i for i in present if slots[i]["qom-path"].startswith("/machine/peripheral/")]
        if len(present) - len(removable) > n:
            raise _error(
                ErrorCode.CONFIG_UNSUPPORTED,
                "unsupported configuration: failed to find appropriate hotpluggable vcpus to"
                " reach the desired target vcpu count",
            )
        for i in sorted(removable, reverse=True)[: max(len(present) - n, 0)]:
            path = slots[i]["qom-path"]
            await monitor.execute("device_del", {"id": path})
            await _wait_unplugged(monitor, path)
    finally:
        try:
            _record_vcpus(dom, await monitor.execute("query-hotpluggable-cpus"))
        except VirError:
            pass  # QEMU went away: the guest is being stopped anyway


async def _wait_unplugged(monitor: Any, path: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + UNPLUG_TIMEOUT
    while loop.time() < deadline:
        slots = await monitor.execute("query-hotpluggable-cpus")
        if all(c.get("qom-path") != path for c in slots):
            return
        await asyncio.sleep(0.1)
    raise _error(
        ErrorCode.OPERATION_TIMEOUT,
        "Timed out during operation: vcpu unplug request timed out. Unplug result must be"
        " manually inspected in the domain",
    )


def _record_vcpus(dom: Domain, slots: list[dict[str, Any]]) -> None:
    """The live definition's vCPU count and its ``<vcpus>`` list, as QEMU has them."""
    d = dom.live
    if d is None:
        return
    slots = sorted(slots, key=_slot_key)
    count = sum(1 for c in slots if "qom-path" in c)
    d.vcpu_current = count if count != d.vcpus else None
    el = etree.Element("vcpus")
    order = 0
    for i, slot in enumerate(slots):
        path = slot.get("qom-path")
        attrs = {"id": str(i), "enabled": "yes" if path else "no"}
        plugged_later = not path or path.startswith("/machine/peripheral/")
        attrs["hotpluggable"] = "yes" if plugged_later else "no"
        if path:
            order += 1
            attrs["order"] = str(order)
        etree.SubElement(el, "vcpu", attrs)
    d.kept["vcpus"] = el


# -- vCPU threads and pinning -----------------------------------------------------------


async def vcpu_threads(dom: Domain) -> dict[int, int]:
    """vCPU index -> host thread id, from QEMU."""
    cpus = await running_process(dom).monitor.execute("query-cpus-fast")
    return {int(c["cpu-index"]): int(c["thread-id"]) for c in cpus}


def thread_stat(pid: int, tid: int) -> tuple[int, int]:
    """(CPU time in ns, the CPU it last ran on) of one thread."""
    fields = proc_stat(f"/proc/{pid}/task/{tid}/stat")
    if fields is None:
        return 0, 0
    # After the name, the processor is field 39 (1-based).
    return stat_cpu_time(fields), int(fields[36])


VcpuInfo = tuple[int, int, int, int]  # number, state, cpu_time, cpu


async def get_vcpus(dom: Domain, maxinfo: int, maplen: int) -> tuple[list[VcpuInfo], bytes]:
    """virDomainGetVcpus: (number, state, cpu_time, cpu) per online vCPU, and their maps."""
    if not dom.active:
        raise _invalid("cannot retrieve vcpu information for inactive domain")
    proc = running_process(dom)
    threads = await vcpu_threads(dom)
    info = []
    maps = bytearray()
    for index in sorted(threads)[: max(maxinfo, 0)]:
        tid = threads[index]
        cpu_time, cpu = thread_stat(proc.pid, tid)
        info.append((index, 1, cpu_time, cpu))  # VIR_VCPU_RUNNING
        try:
            affinity = os.sched_getaffinity(tid)
        except OSError:
            affinity = set()
        maps += set_to_cpumap(affinity, maplen)
    maps += bytes(max(maxinfo, 0) * maplen - len(maps))
    return info, bytes(maps)


def _vcpu_range(d: DomainDef, vcpu: int, which: str) -> None:
    if vcpu >= d.vcpus:
        # libvirt names the maximum for the live guest, the current count for the config.
        count = d.vcpus if which == "live" else d.vcpu_current or d.vcpus
        raise _bad_arg(f"vcpu {vcpu} is out of range of {which} cpu count {count}")


async def pin_vcpu(driver: QemuDriver, dom: Domain, vcpu: int, cpumap: bytes, flags: int) -> None:
    async with modify(driver, dom, flags) as edit:
        cpus = _pin_set(cpumap)
        if edit.live is not None:
            _vcpu_range(edit.live, vcpu, "live")
        if edit.config is not None:
            _vcpu_range(edit.config, vcpu, "persistent")
        if edit.live is not None:
            threads = await vcpu_threads(dom)
            if vcpu in threads:  # an offline vCPU takes its pin when plugged
                _set_affinity(threads[vcpu], cpus)
        for d in edit.defs():
            _set_vcpu_pin(d, vcpu, cpus)


def get_vcpu_pin_info(dom: Domain, ncpumaps: int, maplen: int, flags: int) -> tuple[bytes, int]:
    d = one_def(dom, flags)
    count = min(max(ncpumaps, 0), d.vcpus)
    maps = b"".join(set_to_cpumap(vcpu_pin(d, i), maplen) for i in range(count))
    return maps, count


async def pin_emulator(driver: QemuDriver, dom: Domain, cpumap: bytes, flags: int) -> None:
    async with modify(driver, dom, flags) as edit:
        cpus = _pin_set(cpumap)
        if edit.live is not None:
            proc = running_process(dom)
            vcpus = set((await vcpu_threads(dom)).values())
            for tid in _threads(proc.pid):
                if tid not in vcpus:
                    _set_affinity(tid, cpus)
        for d in edit.defs():
            _set_emulator_pin(d, cpus)


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def get_emulator_pin_info(dom: Domain, maplen: int, flags: int) -> bytes:
    return set_to_cpumap(emulator_pin(one_def(dom, flags)), maplen)


# -- CPU statistics ---------------------------------------------------------------------


def cpu_stats_total(driver: QemuDriver, dom: Domain) -> list[tuple[str, int]]:
    """cpu_time, user_time and system_time of the whole guest, in nanoseconds,
    from the same counters as the domain stats (its cgroup, else its process)."""
    if not dom.active:
        raise _invalid("domain is not running", ErrorDomain.DOMAIN)
    times = stats.cgroup_times(dom.uuid_str) or stats.process_times(running_process(dom).pid)
    total, user, system = times or (0, 0, 0)
    return [("cpu_time", total), ("user_time", user), ("system_time", system)]


def _percpu_unsupported() -> VirError:
    """Per-host-CPU usage needs cgroup v1's cpuacct; libvirtd on a v2 host says this."""
    return _error(
        ErrorCode.OPERATION_UNSUPPORTED,
        "Operation not supported: operation 'getCpuacctPercpuUsage' not supported for backend"
        " 'cgroup V2'",
        ErrorDomain.CGROUP,
    )


def _percpu(group: Path) -> list[int]:
    return [int(v) for v in (cgroup.read(group, "cpuacct.usage_percpu") or "").split()]


def cpu_stats_percpu(dom: Domain, start: int, ncpus: int) -> list[list[tuple[str, int]]]:
    """cpu_time and vcpu_time (ns) of the guest on each host CPU from ``start``.

    Only cgroup v1's cpuacct counts per host CPU; elsewhere the answer is
    libvirtd's on a cgroup v2 host.
    """
    group = cgroup.path("cpuacct", dom.uuid_str)
    usage = _percpu(group) if not cgroup.is_v2() else []
    if not usage:
        raise _percpu_unsupported()
    if start >= len(usage):
        raise _bad_arg(f"start_cpu {start} larger than maximum of {len(usage) - 1}")
    vcpu = [0] * len(usage)
    for sub in group.glob("vcpu*"):
        for cpu, value in enumerate(_percpu(sub)[: len(usage)]):
            vcpu[cpu] += value
    last = min(start + ncpus, len(usage))
    return [[("cpu_time", usage[cpu]), ("vcpu_time", vcpu[cpu])] for cpu in range(start, last)]


def _join_cpuacct(dom: Domain, threads: dict[int, int]) -> None:
    """On cgroup v1, the guest in a cpuacct group of its own and each vCPU
    thread in a vcpuN child, so that its CPU time is counted per host CPU and
    per kind. Only statistics depend on it: a failure is logged, not raised."""
    if cgroup.is_v2() or not cgroup.available("cpuacct"):
        return
    try:
        group = cgroup.join("cpuacct", dom.uuid_str, running_process(dom).pid)
        for index, tid in threads.items():
            sub = group / f"vcpu{index}"
            sub.mkdir(exist_ok=True)
            cgroup.write(sub, "tasks", str(tid))
    except OSError as e:
        log.warning("cannot account the CPU time of %s per CPU: %s", dom.name, e)


# -- scheduler parameters ----------------------------------------------------------------

# (parameter, <cputune> child, is a period)
SCHED_PARAMS = (
    ("cpu_shares", "shares", False),
    ("vcpu_period", "period", True),
    ("vcpu_quota", "quota", False),
    ("emulator_period", "emulator_period", True),
    ("emulator_quota", "emulator_quota", False),
    ("global_period", "global_period", True),
    ("global_quota", "global_quota", False),
    ("iothread_period", "iothread_period", True),
    ("iothread_quota", "iothread_quota", False),
)
DEFAULT_PERIOD = 100000


def scheduler_type(driver: QemuDriver, dom: Domain) -> tuple[str, int]:
    driver._check_present(dom)
    if driver._cgroup_root is None:
        raise _invalid("cgroup CPU controller is not mounted")
    return "posix", len(SCHED_PARAMS)


def _cpu_group(driver: QemuDriver, dom: Domain) -> Any:
    group = driver._cgroup(dom)
    if group is None:
        raise _invalid("cgroup CPU controller is not mounted")
    return group


def _read_bandwidth(group: Any) -> tuple[int, int]:
    """(period, quota) of a cpu cgroup, quota -1 for none."""
    both = cgroup.read(group, "cpu.max")
    if both is not None:  # v2: "QUOTA PERIOD"
        quota, period = both.split()
        return int(period), -1 if quota == "max" else int(quota)
    period = cgroup.read(group, "cpu.cfs_period_us") or str(DEFAULT_PERIOD)
    quota = cgroup.read(group, "cpu.cfs_quota_us") or "-1"
    return int(period), int(quota)


def _write_bandwidth(group: Any, period: int | None, quota: int | None) -> None:
    if (group / "cpu.max").exists():
        old_period, old_quota = _read_bandwidth(group)
        p = period if period is not None else old_period
        q = quota if quota is not None else old_quota
        cgroup.write(group, "cpu.max", f"{'max' if q < 0 else q} {p}")
        return
    if period is not None:
        cgroup.write(group, "cpu.cfs_period_us", str(period))
    if quota is not None:
        cgroup.write(group, "cpu.cfs_quota_us", str(quota))


def get_scheduler_params(driver: QemuDriver, dom: Domain, flags: int) -> list[tuple[str, int]]:
    d = one_def(dom, flags)
    if d is not dom.live:
        return [(name, cputune_value(d, tag) or 0) for name, tag, _ in SCHED_PARAMS]
    group = _cpu_group(driver, dom)
    shares_file = "cpu.weight" if cgroup.read(group, "cpu.weight") is not None else "cpu.shares"
    shares = int(cgroup.read(group, shares_file) or 0)
    global_period, global_quota = _read_bandwidth(group)
    values = {"cpu_shares": shares, "global_period": global_period, "global_quota": global_quota}
    for name, tag, is_period in SCHED_PARAMS:
        if name not in values:
            value = cputune_value(d, tag)
            values[name] = value if value is not None else (DEFAULT_PERIOD if is_period else -1)
    return [(name, values[name]) for name, _tag, _ in SCHED_PARAMS]


# Shares and the global bandwidth belong to the guest's cgroup; the per-kind
# bandwidths need its threads split into vcpuN and emulator groups, which only
# cgroup v1 allows for a process's threads. Iothread values are recorded as
# libvirt records them: these guests have no iothreads to limit.
THREAD_SCHED = ("vcpu_period", "vcpu_quota", "emulator_period", "emulator_quota")


def _split_possible(group: Path) -> bool:
    return not (group / "cpu.max").exists() and (group / "tasks").exists()


async def _apply_thread_bandwidth(driver: QemuDriver, dom: Domain,
                                  values: dict[str, int | None]) -> None:
    """Each vCPU thread in its vcpuN group, the others in emulator, with the bandwidths."""
    group = _cpu_group(driver, dom)
    if not _split_possible(group):
        raise _error(
            ErrorCode.OPERATION_UNSUPPORTED,
            "Operation not supported: per-thread CPU bandwidth needs the cgroup v1 cpu controller",
        )
    threads = await vcpu_threads(dom)
    kinds = [(f"vcpu{i}", [tid], "vcpu") for i, tid in sorted(threads.items())]
    others = [t for t in _threads(running_process(dom).pid) if t not in threads.values()]
    kinds.append(("emulator", others, "emulator"))
    for name, tids, kind in kinds:
        sub = group / name
        sub.mkdir(exist_ok=True)
        for tid in tids:
            try:
                cgroup.write(sub, "tasks", str(tid))
            except ProcessLookupError:
                pass  # a worker thread that just ended
        _write_bandwidth(sub, values.get(f"{kind}_period"), values.get(f"{kind}_quota"))


def _live_sched_values(d: DomainDef) -> dict[str, int | None]:
    return {name: cputune_value(d, tag) for name, tag, _ in SCHED_PARAMS}


async def set_scheduler_params(driver: QemuDriver, dom: Domain, values: dict[str, int],
                               flags: int) -> None:
    async with modify(driver, dom, flags) as edit:
        for name, _tag, is_period in SCHED_PARAMS:
            value = values.get(name)
            if value is None or name == "cpu_shares":
                continue
            lo, hi = PERIOD_RANGE if is_period else QUOTA_RANGE
            if not (lo <= value <= hi) and (is_period or value not in (-1, 0)):
                raise _bad_arg(f"value of '{name}' is out of range [{lo}, {hi}]")
        if edit.live is not None:
            group = _cpu_group(driver, dom)
            try:
                _apply_guest_sched(group, values)
                if set(values) & set(THREAD_SCHED):
                    merged = {**_live_sched_values(edit.live), **values}
                    await _apply_thread_bandwidth(driver, dom, merged)
            except OSError as e:
                raise _cgroup_error(group, e) from None
            # What the kernel made of the guest-wide values (it may round them).
            actual = dict(get_scheduler_params(driver, dom, AFFECT_LIVE))
            for name, tag, _ in SCHED_PARAMS:
                if name in values:
                    guest_wide = name in ("cpu_shares", "global_period", "global_quota")
                    _set_cputune(edit.live, tag, actual[name] if guest_wide else values[name])
        if edit.config is not None:
            for name, tag, _ in SCHED_PARAMS:
                if name in values:
                    _set_cputune(edit.config, tag, values[name])


# cpu_shares is written as it is: cpu.shares on v1, cpu.weight on v2, each with its range.
SHARES_RANGE = {"cpu.shares": (2, 262144), "cpu.weight": (1, 10000)}


def _apply_guest_sched(group: Path, values: dict[str, int | None]) -> None:
    shares = values.get("cpu_shares")
    if shares is not None:
        name = "cpu.weight" if (group / "cpu.weight").exists() else "cpu.shares"
        lo, hi = SHARES_RANGE[name]
        if not lo <= shares <= hi:
            raise _bad_arg(f"shares '{shares}' must be in range [{lo}, {hi}]", ErrorDomain.CGROUP)
        cgroup.write(group, name, str(shares))
    if values.get("global_period") is not None or values.get("global_quota") is not None:
        _write_bandwidth(group, values.get("global_period"), values.get("global_quota"))


def _cgroup_error(group: Any, e: OSError) -> VirError:
    return _error(
        ErrorCode.SYSTEM_ERROR,
        f"Unable to write to '{getattr(e, 'filename', None) or group}': {e.strerror}",
        ErrorDomain.CGROUP,
    )


# -- memory tuning ------------------------------------------------------------------------

MEMTUNE = ("hard_limit", "soft_limit", "swap_hard_limit")
_MEMTUNE_ORDER = (*MEMTUNE, "min_guarantee")
_UNITS = {"b": 1, "bytes": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1 << 20, "mib": 1 << 20,
          "mb": 10**6, "g": 1 << 30, "gib": 1 << 30, "gb": 10**9, "t": 1 << 40, "tib": 1 << 40,
          "tb": 10**12}


def memtune_values(d: DomainDef) -> dict[str, int]:
    """hard, soft and swap limits in KiB (UNLIMITED when not set)."""
    el = d.kept.get("memtune")
    out = {}
    for name in MEMTUNE:
        child = el.find(name) if el is not None else None
        if child is None or not (child.text or "").strip():
            out[name] = UNLIMITED
            continue
        scale = _UNITS.get((child.get("unit") or "KiB").lower(), 1024)
        out[name] = min(int(child.text.strip()) * scale // 1024, UNLIMITED)
    return out


def _set_memtune(d: DomainDef, values: dict[str, int]) -> None:
    el = _section(d, "memtune")
    for name, value in values.items():
        for old in el.findall(name):
            el.remove(old)
        if value < UNLIMITED:
            etree.SubElement(el, name, unit="KiB").text = str(value)
    _sort_children(el, _MEMTUNE_ORDER)
    _drop_if_empty(d, "memtune")


def _memory_files(v2: bool) -> dict[str, str]:
    if v2:
        return {"hard_limit": "memory.max", "soft_limit": "memory.high",
                "swap_hard_limit": "memory.swap.max"}
    return {"hard_limit": "memory.limit_in_bytes", "soft_limit": "memory.soft_limit_in_bytes",
            "swap_hard_limit": "memory.memsw.limit_in_bytes"}


@contextmanager
def _joined(dom: Domain, controller: str, unmounted: str) -> Iterator[Path]:
    """The guest's group of ``controller``, the guest moved into it first; a
    write there that fails is libvirt's cgroup error."""
    if not cgroup.available(controller):
        raise _invalid(unmounted)
    try:
        yield cgroup.join(controller, dom.uuid_str, running_process(dom).pid)
    except OSError as e:
        raise _cgroup_error(cgroup.path(controller, dom.uuid_str), e) from None


def _apply_memtune(dom: Domain, values: dict[str, int], old: dict[str, int]) -> None:
    """Write memory limits (KiB) into the guest's memory cgroup."""
    v2 = cgroup.is_v2()
    files = _memory_files(v2)
    # v1 wants the swap limit never below the hard limit: a raised one goes
    # first, a lowered one last.
    order = ["hard_limit", "soft_limit", "swap_hard_limit"]
    if values.get("swap_hard_limit", 0) > old["swap_hard_limit"]:
        order = order[2:] + order[:2]
    with _joined(dom, "memory", "cgroup memory controller is not mounted") as group:
        for name in (n for n in order if n in values):
            value = values[name]
            if value >= UNLIMITED:
                text = "max" if v2 else "-1"
            else:
                text = str(value * 1024)
            cgroup.write(group, files[name], text)


async def set_memory_params(driver: QemuDriver, dom: Domain, values: dict[str, int],
                            flags: int) -> None:
    async with modify(driver, dom, flags) as edit:
        for d in edit.defs():
            merged = {**memtune_values(d), **values}
            if merged["hard_limit"] > merged["swap_hard_limit"]:
                raise _bad_arg(
                    "memory hard_limit tunable value must be lower than or equal to"
                    " swap_hard_limit",
                    ErrorDomain.DOMAIN,
                )
        if edit.live is not None:
            _apply_memtune(dom, values, memtune_values(edit.live))
        for d in edit.defs():
            _set_memtune(d, values)


# -- block I/O tuning -------------------------------------------------------------------------

BLKIO_DEVICE = ("device_weight", "device_read_iops_sec", "device_write_iops_sec",
                "device_read_bytes_sec", "device_write_bytes_sec")
_DEVICE_TAGS = {"device_weight": "weight", "device_read_iops_sec": "read_iops_sec",
                "device_write_iops_sec": "write_iops_sec",
                "device_read_bytes_sec": "read_bytes_sec",
                "device_write_bytes_sec": "write_bytes_sec"}
_DEVICE_ORDER = ("path", "weight", "read_iops_sec", "write_iops_sec", "read_bytes_sec",
                 "write_bytes_sec")


def _blkio_devices(d: DomainDef) -> dict[str, dict[str, int]]:
    el = d.kept.get("blkiotune")
    out: dict[str, dict[str, int]] = {}
    for dev in el.findall("device") if el is not None else []:
        path = (dev.findtext("path") or "").strip()
        out[path] = {c.tag: int(c.text or 0) for c in dev
                     if isinstance(c.tag, str) and c.tag != "path"}
    return out


def blkio_values(driver: QemuDriver, dom: Domain, flags: int) -> list[tuple[str, Any]]:
    d = one_def(dom, flags)
    el = d.kept.get("blkiotune")
    text = (el.findtext("weight") or "").strip() if el is not None else ""
    weight = int(text) if text else 0
    if d is dom.live:
        group = cgroup.path("blkio", dom.uuid_str)
        read = _read_weight(group) if group.exists() else None
        weight = read if read is not None else (weight or 100)
    devices = _blkio_devices(d)
    out: list[tuple[str, Any]] = [("weight", weight)]
    for name in BLKIO_DEVICE:
        tag = _DEVICE_TAGS[name]
        out.append((name, ",".join(f"{p},{v[tag]}" for p, v in devices.items() if v.get(tag))))
    return out


def _weight_file(group: Any) -> str:
    for name in ("blkio.weight", "blkio.bfq.weight", "io.weight", "io.bfq.weight"):
        if (group / name).exists():
            return name
    raise _error(ErrorCode.OPERATION_INVALID,
                 "Requested operation is not valid: blkio device weight is not supported"
                 " by the host's I/O scheduler")


def _read_weight(group: Any) -> int | None:
    try:
        text = cgroup.read(group, _weight_file(group)) or ""
    except VirError:
        return None
    for line in text.splitlines():  # v2: "default 100" then per-device lines
        parts = line.split()
        if len(parts) == 1 and parts[0].isdigit():
            return int(parts[0])
        if len(parts) == 2 and parts[0] == "default":
            return int(parts[1])
    return None


def parse_device_list(name: str, text: str) -> dict[str, int]:
    """``/dev/sda,100,/dev/sdb,200`` into {path: value}, with libvirt's complaint."""
    parts = text.split(",") if text else []
    if len(parts) % 2:
        raise _bad_arg(f"unable to parse blkio device '{text}' '{name}'", ErrorDomain.QEMU)
    out = {}
    for path, value in zip(parts[::2], parts[1::2]):
        try:
            out[path] = int(value)
        except ValueError:
            raise _bad_arg(f"unable to parse blkio device '{text}' '{name}'") from None
    return out


def _set_blkiotune(d: DomainDef, values: dict[str, Any]) -> None:
    el = _section(d, "blkiotune")
    if "weight" in values:
        for old in el.findall("weight"):
            el.remove(old)
        etree.SubElement(el, "weight").text = str(values["weight"])
    devices = _blkio_devices(d)
    for name in BLKIO_DEVICE:
        for path, value in parse_device_list(name, values.get(name, "")).items():
            devices.setdefault(path, {})[_DEVICE_TAGS[name]] = value
    for old in el.findall("device"):
        el.remove(old)
    for path, tunes in devices.items():
        kept = {k: v for k, v in tunes.items() if v}
        if not kept:
            continue
        dev = etree.SubElement(el, "device")
        etree.SubElement(dev, "path").text = path
        for tag in _DEVICE_ORDER[1:]:
            if tag in kept:
                etree.SubElement(dev, tag).text = str(kept[tag])
    _sort_children(el, ("weight", "device"))
    _drop_if_empty(d, "blkiotune")


def _write_device_limits(group: Any, name: str, devices: dict[str, int]) -> None:
    v2 = (group / "io.max").exists() or (group / "cgroup.controllers").exists()
    for path, value in devices.items():
        try:
            rdev = os.stat(path).st_rdev
        except OSError as e:
            raise _error(ErrorCode.SYSTEM_ERROR, f"Unable to stat {path}: {e.strerror}",
                         ErrorDomain.NONE) from None
        dev = f"{os.major(rdev)}:{os.minor(rdev)}"
        if name == "device_weight":
            cgroup.write(group, _weight_file(group), f"{dev} {value}")
        elif v2:
            key = {"device_read_iops_sec": "riops", "device_write_iops_sec": "wiops",
                   "device_read_bytes_sec": "rbps", "device_write_bytes_sec": "wbps"}[name]
            cgroup.write(group, "io.max", f"{dev} {key}={value or 'max'}")
        else:
            kind = name.removeprefix("device_").removesuffix("_sec").replace("bytes", "bps")
            cgroup.write(group, f"blkio.throttle.{kind}_device", f"{dev} {value}")


def _apply_blkio(dom: Domain, values: dict[str, Any]) -> None:
    """Write the weight and device limits into the guest's blkio/io cgroup."""
    with _joined(dom, "blkio", "blkio cgroup isn't mounted") as group:
        if "weight" in values:
            cgroup.write(group, _weight_file(group), str(values["weight"]))
        for name in BLKIO_DEVICE:
            if name in values:
                _write_device_limits(group, name, parse_device_list(name, values[name]))


async def set_blkio_params(driver: QemuDriver, dom: Domain, values: dict[str, Any],
                           flags: int) -> None:
    async with modify(driver, dom, flags) as edit:
        for name in BLKIO_DEVICE:
            if name in values:
                parse_device_list(name, values[name])
        if edit.live is not None:
            _apply_blkio(dom, values)
        for d in edit.defs():
            _set_blkiotune(d, values)


# -- at start ------------------------------------------------------------------------------------


def _blkio_config(d: DomainDef) -> dict[str, Any]:
    """The <blkiotune> of ``d`` as blkio parameters."""
    el = d.kept.get("blkiotune")
    if el is None:
        return {}
    values: dict[str, Any] = {}
    weight = (el.findtext("weight") or "").strip()
    if weight:
        values["weight"] = int(weight)
    devices = _blkio_devices(d)
    for name in BLKIO_DEVICE:
        tag = _DEVICE_TAGS[name]
        listed = ",".join(f"{p},{v[tag]}" for p, v in devices.items() if v.get(tag))
        if listed:
            values[name] = listed
    return values


async def _apply_pins(dom: Domain, d: DomainDef) -> None:
    """Pin the vCPU and emulator threads as ``d`` says, if it says anything."""
    if d.kept.get("cputune") is None and not d.vcpu_cpuset:
        return
    threads = await vcpu_threads(dom)
    for index, tid in threads.items():
        _set_affinity(tid, vcpu_pin(d, index))
    for tid in _threads(running_process(dom).pid):
        if tid not in threads.values():
            _set_affinity(tid, emulator_pin(d))


async def apply_at_start(driver: QemuDriver, dom: Domain) -> None:
    """Put the tuning of the definition a guest starts from into force, before
    its CPUs first run: pinning, scheduler values, memory and block I/O limits."""
    d = dom.live
    if d is None:
        return
    _join_cpuacct(dom, await vcpu_threads(dom))
    await _apply_pins(dom, d)
    sched = _live_sched_values(d)
    if any(v is not None for v in sched.values()):
        group = _cpu_group(driver, dom)
        try:
            if any(sched[name] is not None for name in THREAD_SCHED):
                await _apply_thread_bandwidth(driver, dom, sched)
            _apply_guest_sched(group, sched)
        except OSError as e:
            raise _cgroup_error(group, e) from None
    limits = {k: v for k, v in memtune_values(d).items() if v < UNLIMITED}
    if limits:
        _apply_memtune(dom, limits, dict.fromkeys(MEMTUNE, UNLIMITED))
    blkio = _blkio_config(d)
    if blkio:
        _apply_blkio(dom, blkio)
