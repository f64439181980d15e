"""Facts about what the hypervisor offers: domain capabilities, CPU model names,
and the QEMU command line a definition turns into.

CPUs are compared with and baselined against the host's CPU or what QEMU offers.
"""

from __future__ import annotations

from typing import Any

from daemon.dispatch import Call
from daemon.remote._common import check_flags
from drivers.qemu import cpubaseline, cpucompare, cpumodels, domcaps, native
from protocol.errors import ErrorCode, ErrorDomain, VirError
from protocol.programs import remote

R = remote().module


async def connect_get_domain_capabilities(call: Call, args: Any) -> Any:
    check_flags(args.flags, 0, "qemuConnectGetDomainCapabilities")
    driver = call.driver
    xml = await domcaps.domain_capabilities(
        driver.all_caps, args.emulatorbin, args.arch, args.machine, args.virttype,
        driver.dirs.cache_dir,
    )
    return R.remote_connect_get_domain_capabilities_ret(xml)


async def connect_get_cpu_model_names(call: Call, args: Any) -> Any:
    check_flags(args.flags, 0, "qemuConnectGetCPUModelNames")
    caps = call.driver.all_caps.get(args.arch)
    names = cpumodels.model_names(args.arch, caps.cpu_models if caps else None)
    if len(names) > R.REMOTE_CONNECT_CPU_MODELS_MAX:
        raise VirError(ErrorCode.INTERNAL_ERROR,
                       f"internal error: Too many model names '{len(names)}' for limit "
                       f"'{R.REMOTE_CONNECT_CPU_MODELS_MAX}'", ErrorDomain.RPC)
    return R.remote_connect_get_cpu_model_names_ret(names if args.need_results else [],
                                                    len(names))


async def connect_domain_xml_to_native(call: Call, args: Any) -> Any:
    check_flags(args.flags, 0, "qemuConnectDomainXMLToNative")
    if args.nativeFormat != native.FORMAT:
        raise VirError(ErrorCode.INVALID_ARG,
                       f"invalid argument: unsupported config type {args.nativeFormat}",
                       ErrorDomain.QEMU)
    return R.remote_connect_domain_xml_to_native_ret(native.to_native(call.driver,
                                                                      args.domainXml))


def _compare_flags(flags: int, api: str) -> bool:
    """Whether the caller wants an error for an incompatible CPU; XML validation
    against libvirt's schema is not offered."""
    check_flags(flags, cpucompare.FAIL_INCOMPATIBLE, api)
    return bool(flags & cpucompare.FAIL_INCOMPATIBLE)


async def connect_compare_cpu(call: Call, args: Any) -> Any:
    fail = _compare_flags(args.flags, "qemuConnectCompareCPU")
    cpu = cpucompare.parse_cpu(args.xml)
    result = cpucompare.compare(cpu, cpucompare.host_cpu(), fail)
    return R.remote_connect_compare_cpu_ret(result)


async def connect_compare_hypervisor_cpu(call: Call, args: Any) -> Any:
    fail = _compare_flags(args.flags, "qemuConnectCompareHypervisorCPU")
    driver = call.driver
    target = await domcaps.resolve(driver.all_caps, args.emulator, args.arch, args.machine,
                                   args.virttype, driver.dirs.cache_dir)
    cpu = cpucompare.parse_cpu(args.xmlCPU)
    hm = domcaps.host_model(target)
    if hm is None:
        raise VirError(ErrorCode.OPERATION_UNSUPPORTED,
                       f"Operation not supported: cannot get host CPU model for "
                       f"{target.arch}", ErrorDomain.QEMU)
    result = cpucompare.compare(cpu, cpucompare.hypervisor_cpu(target.arch, hm), fail)
    return R.remote_connect_compare_hypervisor_cpu_ret(result)


_BASELINE_FLAGS = cpubaseline.EXPAND_FEATURES | cpubaseline.MIGRATABLE


async def connect_baseline_cpu(call: Call, args: Any) -> Any:
    check_flags(args.flags, _BASELINE_FLAGS, "qemuConnectBaselineCPU")
    return R.remote_connect_baseline_cpu_ret(
        cpubaseline.baseline(args.xmlCPUs, args.flags, None))


async def connect_baseline_hypervisor_cpu(call: Call, args: Any) -> Any:
    check_flags(args.flags, _BASELINE_FLAGS, "qemuConnectBaselineHypervisorCPU")
    driver = call.driver
    target = await domcaps.resolve(driver.all_caps, args.emulator, args.arch, args.machine,
                                   args.virttype, driver.dirs.cache_dir)
    blockers = target.caps.cpu_blockers.get("kvm" if target.virttype == "kvm" else "tcg", {})
    return R.remote_connect_baseline_hypervisor_cpu_ret(
        cpubaseline.baseline(args.xmlCPUs, args.flags, blockers))
