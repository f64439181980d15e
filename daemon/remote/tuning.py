"""Resource calls of the REMOTE program: memory, vCPUs, pinning, scheduler, cgroup limits.

Wire arguments in, ``drivers.qemu.tuning`` does the work, typed parameters
out. Flag masks and function names in errors are those of libvirt's QEMU
driver.
"""

from __future__ import annotations

from typing import Any

from daemon.dispatch import Call
from daemon.remote._common import check_flags, dom_of, rpc_limit
from drivers.qemu import tuning
from protocol import typed
from protocol.errors import ErrorCode, ErrorDomain, VirError
from protocol.programs import remote

R = remote().module

_AFFECT = tuning.AFFECT_LIVE | tuning.AFFECT_CONFIG
_TYPED_STRING_OKAY = 1 << 2  # VIR_TYPED_PARAM_STRING_OKAY: the client takes string values


# -- memory -------------------------------------------------------------------------


async def domain_set_memory(call: Call, args: Any) -> None:
    dom = dom_of(call, args.dom)
    await tuning.set_memory(call.driver, dom, args.memory, tuning.AFFECT_LIVE)


async def domain_set_memory_flags(call: Call, args: Any) -> None:
    check_flags(args.flags, _AFFECT | tuning.MEM_MAXIMUM, "qemuDomainSetMemoryFlags")
    await tuning.set_memory(call.driver, dom_of(call, args.dom), args.memory, args.flags)


async def domain_set_max_memory(call: Call, args: Any) -> None:
    dom = dom_of(call, args.dom)
    await tuning.set_memory(call.driver, dom, args.memory, tuning.MEM_MAXIMUM)


async def domain_set_memory_stats_period(call: Call, args: Any) -> None:
    check_flags(args.flags, _AFFECT, "qemuDomainSetMemoryStatsPeriod")
    await tuning.set_memory_stats_period(call.driver, dom_of(call, args.dom), args.period, args.flags)


# -- vCPU counts ----------------------------------------------------------------------

_VCPU_FLAGS = _AFFECT | tuning.VCPU_MAXIMUM | tuning.VCPU_GUEST


async def domain_set_vcpus(call: Call, args: Any) -> None:
    dom = dom_of(call, args.dom)
    await tuning.set_vcpus(call.driver, dom, args.nvcpus, tuning.AFFECT_LIVE)


async def domain_set_vcpus_flags(call: Call, args: Any) -> None:
    check_flags(args.flags, _VCPU_FLAGS | tuning.VCPU_HOTPLUGGABLE, "qemuDomainSetVcpusFlags")
    await tuning.set_vcpus(call.driver, dom_of(call, args.dom), args.nvcpus, args.flags)


async def domain_get_vcpus_flags(call: Call, args: Any) -> Any:
    check_flags(args.flags, _VCPU_FLAGS, "qemuDomainGetVcpusFlags")
    return R.remote_domain_get_vcpus_flags_ret(
        tuning.get_vcpus_flags(dom_of(call, args.dom), args.flags)
    )


async def domain_get_max_vcpus(call: Call, args: Any) -> Any:
    flags = tuning.AFFECT_LIVE | tuning.VCPU_MAXIMUM
    return R.remote_domain_get_max_vcpus_ret(tuning.get_vcpus_flags(dom_of(call, args.dom), flags))


# -- vCPU threads and pinning ------------------------------------------------------------


def _check_maps(count: int, maplen: int, what: str) -> None:
    rpc_limit(count, R.REMOTE_VCPUINFO_MAX, f"{what} > REMOTE_VCPUINFO_MAX")
    rpc_limit(count * maplen, R.REMOTE_CPUMAPS_MAX, f"{what} * maplen > REMOTE_CPUMAPS_MAX")


async def domain_get_vcpus(call: Call, args: Any) -> Any:
    _check_maps(args.maxinfo, args.maplen, "maxinfo")
    info, maps = await tuning.get_vcpus(dom_of(call, args.dom), args.maxinfo, args.maplen)
    return R.remote_domain_get_vcpus_ret([R.remote_vcpu_info(*i) for i in info], maps)


async def domain_pin_vcpu(call: Call, args: Any) -> None:
    dom = dom_of(call, args.dom)
    await tuning.pin_vcpu(call.driver, dom, args.vcpu, args.cpumap, tuning.AFFECT_LIVE)


async def domain_pin_vcpu_flags(call: Call, args: Any) -> None:
    check_flags(args.flags, _AFFECT, "qemuDomainPinVcpuFlags")
    await tuning.pin_vcpu(call.driver, dom_of(call, args.dom), args.vcpu, args.cpumap, args.flags)


async def domain_get_vcpu_pin_info(call: Call, args: Any) -> Any:
    _check_maps(args.ncpumaps, args.maplen, "ncpumaps")
    check_flags(args.flags, _AFFECT, "qemuDomainGetVcpuPinInfo")
    maps, num = tuning.get_vcpu_pin_info(
        dom_of(call, args.dom), args.ncpumaps, args.maplen, args.flags
    )
    return R.remote_domain_get_vcpu_pin_info_ret(maps, num)


async def domain_pin_emulator(call: Call, args: Any) -> None:
    check_flags(args.flags, _AFFECT, "qemuDomainPinEmulator")
    await tuning.pin_emulator(call.driver, dom_of(call, args.dom), args.cpumap, args.flags)


async def domain_get_emulator_pin_info(call: Call, args: Any) -> Any:
    check_flags(args.flags, _AFFECT, "qemuDomainGetEmulatorPinInfo")
    maps = tuning.get_emulator_pin_info(dom_of(call, args.dom), args.maplen, args.flags)
    return R.remote_domain_get_emulator_pin_info_ret(maps, 1)


async def node_get_cpu_map(call: Call, args: Any) -> Any:
    """The host's CPU map, which clients need to size vCPU maps (virDomain.vcpus())."""
    check_flags(args.flags, 0, "virHostCPUGetMap")
    count = tuning.host_cpu_count()
    online = tuning.host_cpus()
    cpumap = tuning.set_to_cpumap(online, (count + 7) // 8) if args.need_map else b""
    return R.remote_node_get_cpu_map_ret(cpumap, len(online) if args.need_online else 0, count)


# -- CPU statistics -------------------------------------------------------------------------

_PERCPU_PARAMS = 2  # cpu_time, vcpu_time


async def domain_get_cpu_stats(call: Call, args: Any) -> Any:
    """Totals (start_cpu -1) or per host CPU; ``nparams`` 0 asks for counts only."""
    rpc_limit(args.nparams, R.REMOTE_NODE_CPU_STATS_MAX, "nparams too large")
    rpc_limit(args.ncpus, R.REMOTE_DOMAIN_GET_CPU_STATS_NCPUS_MAX, "ncpus too large")
    check_flags(args.flags, _TYPED_STRING_OKAY, "qemuDomainGetCPUStats")
    dom = dom_of(call, args.dom)
    if args.start_cpu == -1:
        totals = tuning.cpu_stats_total(call.driver, dom)
        if args.nparams == 0:
            return R.remote_domain_get_cpu_stats_ret([], len(totals))
        kept = totals[: args.nparams]
        return R.remote_domain_get_cpu_stats_ret(
            typed.encode((name, typed.ULLONG, value) for name, value in kept), len(kept)
        )
    if not dom.active:
        raise VirError(
            ErrorCode.OPERATION_INVALID,
            "Requested operation is not valid: domain is not running",
            ErrorDomain.DOMAIN,
        )
    if args.nparams == 0 and args.ncpus != 0:
        return R.remote_domain_get_cpu_stats_ret([], _PERCPU_PARAMS)
    if args.ncpus == 0:
        return R.remote_domain_get_cpu_stats_ret([], tuning.host_cpu_count())
    n = min(args.nparams, _PERCPU_PARAMS)
    per_cpu = tuning.cpu_stats_percpu(dom, args.start_cpu, args.ncpus)
    params = typed.encode((name, typed.ULLONG, v) for cpu in per_cpu for name, v in cpu[:n])
    return R.remote_domain_get_cpu_stats_ret(params, n)


# -- scheduler ----------------------------------------------------------------------------------

_SCHED_TYPES = {
    name: (typed.ULLONG if is_period or name == "cpu_shares" else typed.LLONG)
    for name, _tag, is_period in tuning.SCHED_PARAMS
}


async def domain_get_scheduler_type(call: Call, args: Any) -> Any:
    kind, nparams = tuning.scheduler_type(call.driver, dom_of(call, args.dom))
    return R.remote_domain_get_scheduler_type_ret(kind, nparams)


def _sched_params(call: Call, dom: Any, nparams: int, flags: int) -> list[Any]:
    rpc_limit(nparams, R.REMOTE_DOMAIN_SCHEDULER_PARAMETERS_MAX, "nparams too large")
    tuning.scheduler_type(call.driver, dom)
    values = tuning.get_scheduler_params(call.driver, dom, flags)
    return typed.encode((n, _SCHED_TYPES[n], v) for n, v in values[: max(nparams, 0)])


async def domain_get_scheduler_parameters(call: Call, args: Any) -> Any:
    params = _sched_params(call, dom_of(call, args.dom), args.nparams, 0)
    return R.remote_domain_get_scheduler_parameters_ret(params)


async def domain_get_scheduler_parameters_flags(call: Call, args: Any) -> Any:
    check_flags(args.flags, _AFFECT | _TYPED_STRING_OKAY, "qemuDomainGetSchedulerParametersFlags")
    flags = args.flags & _AFFECT
    params = _sched_params(call, dom_of(call, args.dom), args.nparams, flags)
    return R.remote_domain_get_scheduler_parameters_flags_ret(params)


async def _set_sched(call: Call, handle: Any, params: list[Any], flags: int) -> None:
    dom = dom_of(call, handle)
    values = typed.validate(params, _SCHED_TYPES)
    tuning.scheduler_type(call.driver, dom)
    await tuning.set_scheduler_params(call.driver, dom, values, flags)


async def domain_set_scheduler_parameters(call: Call, args: Any) -> None:
    await _set_sched(call, args.dom, args.params, 0)


async def domain_set_scheduler_parameters_flags(call: Call, args: Any) -> None:
    check_flags(args.flags, _AFFECT, "qemuDomainSetSchedulerParametersFlags")
    await _set_sched(call, args.dom, args.params, args.flags)


# -- memory and block I/O limits -------------------------------------------------------------


async def domain_get_memory_parameters(call: Call, args: Any) -> Any:
    check_flags(args.flags, _AFFECT | _TYPED_STRING_OKAY, "qemuDomainGetMemoryParameters")
    d = tuning.one_def(dom_of(call, args.dom), args.flags & _AFFECT)
    values = tuning.memtune_values(d)
    params = typed.encode((n, typed.ULLONG, values[n]) for n in tuning.MEMTUNE)
    kept, n = typed.truncate(params, args.nparams)
    return R.remote_domain_get_memory_parameters_ret(kept, n)


async def domain_set_memory_parameters(call: Call, args: Any) -> None:
    check_flags(args.flags, _AFFECT, "qemuDomainSetMemoryParameters")
    values = typed.validate(args.params, {n: typed.ULLONG for n in tuning.MEMTUNE})
    await tuning.set_memory_params(call.driver, dom_of(call, args.dom), values, args.flags)


_BLKIO_TYPES = {"weight": typed.UINT, **{n: typed.STRING for n in tuning.BLKIO_DEVICE}}


async def domain_get_blkio_parameters(call: Call, args: Any) -> Any:
    check_flags(args.flags, _AFFECT | _TYPED_STRING_OKAY, "qemuDomainGetBlkioParameters")
    values = tuning.blkio_values(call.driver, dom_of(call, args.dom), args.flags & _AFFECT)
    if not args.flags & _TYPED_STRING_OKAY:  # an old client: no string values for it
        values = [(n, v) for n, v in values if _BLKIO_TYPES[n] != typed.STRING]
    params = typed.encode((n, _BLKIO_TYPES[n], v) for n, v in values)
    kept, n = typed.truncate(params, args.nparams)
    return R.remote_domain_get_blkio_parameters_ret(kept, n)


async def domain_set_blkio_parameters(call: Call, args: Any) -> None:
    check_flags(args.flags, _AFFECT, "qemuDomainSetBlkioParameters")
    values = typed.validate(args.params, _BLKIO_TYPES)
    await tuning.set_blkio_params(call.driver, dom_of(call, args.dom), values, args.flags)
