"""Monitoring calls of the REMOTE program: domstats and the per-device statistics.

CONNECT_GET_ALL_DOMAIN_STATS serves both virConnectGetAllDomainStats (no
domains given: the list flags pick them) and virDomainListGetStats.
"""

from __future__ import annotations

from typing import Any

from daemon.dispatch import Call
from daemon.remote._common import check_flags, dom_of, handle_of, rpc_limit
from drivers.qemu import stats
from drivers.qemu.domain import running_process
from protocol import typed
from protocol.errors import ErrorCode, ErrorDomain, VirError
from protocol.programs import remote

R = remote().module

# virConnectGetAllDomainStatsFlags: the list filters, then the three of its own.
_LIST_FILTERS = 0xFF
_STATS_NOWAIT = 1 << 29
_STATS_BACKING = 1 << 30
_STATS_ENFORCE = 1 << 31
_TYPED_STRING_OKAY = 1 << 2
_JOB_STATS_COMPLETED = 1 << 0
_JOB_STATS_KEEP_COMPLETED = 1 << 1


async def connect_get_all_domain_stats(call: Call, args: Any) -> Any:
    flags = args.flags
    check_flags(
        flags,
        _LIST_FILTERS | _STATS_NOWAIT | _STATS_BACKING | _STATS_ENFORCE,
        "qemuConnectGetAllDomainStats",
    )
    listed = call.driver.list_domains(flags & _LIST_FILTERS)
    if args.doms:
        # virDomainListGetStats: the given ones that still exist and pass the filters.
        wanted = {d.uuid: d for d in listed}
        doms = [wanted[h.uuid] for h in args.doms if h.uuid in wanted]
    else:
        doms = listed
    groups = args.stats
    # libvirtd checks the groups guest by guest: with no guest, no complaint.
    if groups & ~stats.SUPPORTED and flags & _STATS_ENFORCE and doms:
        raise VirError(
            ErrorCode.ARGUMENT_UNSUPPORTED,
            f"argument unsupported: Stats types bits 0x{groups & ~stats.SUPPORTED:x}"
            " are not supported by this daemon or QEMU",
            ErrorDomain.QEMU,
        )
    groups = groups & stats.SUPPORTED if groups else stats.SUPPORTED
    records = await stats.all_stats(doms, groups)
    return R.remote_connect_get_all_domain_stats_ret(
        [
            R.remote_domain_stats_record(handle_of(dom), typed.encode(params))
            for dom, params in zip(doms, records)
        ]
    )


async def domain_memory_stats(call: Call, args: Any) -> Any:
    rpc_limit(
        args.maxStats, R.REMOTE_DOMAIN_MEMORY_STATS_MAX, "maxStats > REMOTE_DOMAIN_MEMORY_STATS_MAX"
    )
    dom = dom_of(call, args.dom)
    check_flags(args.flags, 0, "qemuDomainMemoryStats")
    found = await stats.memory_stats(dom)
    return R.remote_domain_memory_stats_ret(
        [R.remote_domain_memory_stat(tag, value) for tag, value in found[: args.maxStats]]
    )


async def domain_block_stats(call: Call, args: Any) -> Any:
    s = await stats.block_stats(dom_of(call, args.dom), args.path)
    return R.remote_domain_block_stats_ret(
        s["rd_operations"], s["rd_bytes"], s["wr_operations"], s["wr_bytes"], -1
    )


async def domain_block_stats_flags(call: Call, args: Any) -> Any:
    rpc_limit(
        args.nparams, R.REMOTE_DOMAIN_BLOCK_STATS_PARAMETERS_MAX, "nparams too large"
    )
    dom = dom_of(call, args.dom)
    check_flags(args.flags, _TYPED_STRING_OKAY, "qemuDomainBlockStatsFlags")
    s = await stats.block_stats(dom, args.path)
    params = typed.encode((name, typed.LLONG, s[name]) for name, _key in stats.BLOCK_STATS_FIELDS)
    kept, count = typed.truncate(params, args.nparams)
    return R.remote_domain_block_stats_flags_ret(kept, count)


async def domain_interface_stats(call: Call, args: Any) -> Any:
    return R.remote_domain_interface_stats_ret(
        *stats.interface_stats(dom_of(call, args.dom), args.device)
    )


async def domain_get_block_info(call: Call, args: Any) -> Any:
    dom = dom_of(call, args.dom)
    check_flags(args.flags, 0, "qemuDomainGetBlockInfo")
    capacity, allocation, physical = await stats.block_info(dom, args.path)
    return R.remote_domain_get_block_info_ret(allocation, capacity, physical)


async def domain_get_disk_errors(call: Call, args: Any) -> Any:
    rpc_limit(
        args.maxerrors,
        R.REMOTE_DOMAIN_DISK_ERRORS_MAX,
        "maxerrors > REMOTE_DOMAIN_DISK_ERRORS_MAX",
    )
    dom = dom_of(call, args.dom)
    check_flags(args.flags, 0, "qemuDomainGetDiskErrors")
    running_process(dom)
    if args.maxerrors == 0:  # the caller asks how many there could be
        return R.remote_domain_get_disk_errors_ret([], len(dom.definition.devices.disks))
    errors = (await stats.disk_errors(dom))[: args.maxerrors]
    return R.remote_domain_get_disk_errors_ret(
        [R.remote_domain_disk_error(target, code) for target, code in errors], len(errors)
    )


# No job (migration, save, dump, backup) ever runs in the background here, so
# the answer is always VIR_DOMAIN_JOB_NONE.


async def domain_get_job_info(call: Call, args: Any) -> Any:
    running_process(dom_of(call, args.dom))
    return R.remote_domain_get_job_info_ret(0, *([0] * 11))


async def domain_get_job_stats(call: Call, args: Any) -> Any:
    dom = dom_of(call, args.dom)
    check_flags(
        args.flags,
        _JOB_STATS_COMPLETED | _JOB_STATS_KEEP_COMPLETED,
        "qemuDomainGetJobStats",
    )
    if not args.flags & _JOB_STATS_COMPLETED:
        running_process(dom)
    return R.remote_domain_get_job_stats_ret(0, [])
