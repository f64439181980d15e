"""``virsh cpu-baseline`` and ``hypervisor-cpu-baseline``: the best CPU several hosts share.

The features every given CPU has are named after the CPU map model that fits
them best (libvirt's decoding, see :func:`cpumodels.decode`). The hypervisor
variant only picks models QEMU offers and disables what QEMU cannot give.
"""

from __future__ import annotations

from drivers import host
from drivers.qemu import cpumodels
from drivers.qemu.cpucompare import GuestCPU, parse_cpu
from protocol.errors import ErrorCode, ErrorDomain, VirError

EXPAND_FEATURES = 1 << 0  # VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES
MIGRATABLE = 1 << 1  # VIR_CONNECT_BASELINE_CPU_MIGRATABLE


def _cpu_error(code: int, message: str) -> VirError:
    return VirError(code, message, ErrorDomain.CPU)


def _features(cpu: GuestCPU, cpu_map: cpumodels.X86Map) -> set[str]:
    models = {m.name: m for m in cpu_map.models}
    if cpu.model not in models:
        raise _cpu_error(ErrorCode.INTERNAL_ERROR, f"internal error: Unknown CPU model {cpu.model}")
    have = set(models[cpu.model].features)
    for policy, name in cpu.features:
        if name not in cpu_map.features:
            raise _cpu_error(ErrorCode.INTERNAL_ERROR,
                             f"internal error: Unknown CPU feature {name}")
        if policy in ("force", "require"):
            have.add(name)
        elif policy in ("disable", "forbid"):
            have.discard(name)
    return have


def baseline(xmls: list[str], flags: int, blockers: dict[str, list[str]] | None,
             directory: str = host.CPU_MAP_DIR) -> str:
    """The ``<cpu>`` of the baseline; ``blockers`` (QEMU's models under the chosen
    accelerator with what each lacks) makes it the hypervisor variant."""
    hypervisor = blockers is not None
    cpus = [parse_cpu(x, host_form=not hypervisor) for x in xmls]
    for i, cpu in enumerate(cpus):
        if hypervisor and cpu.model is None:
            raise _cpu_error(ErrorCode.INVALID_ARG,
                             f"invalid argument: no CPU model specified at index {i}")
    cpu_map = cpumodels.x86_map(directory)
    # The hypervisor variant reads every CPU as one for the emulator's (x86) arch.
    other = None if hypervisor else next(
        (c.arch for c in cpus if c.arch not in ("x86_64", "i686")), None)
    if cpu_map is None or other is not None:
        raise _cpu_error(ErrorCode.NO_SUPPORT,
                         f"this function is not supported by the connection driver: "
                         f"'{other or 'x86_64'}' architecture is not supported by CPU driver")
    common: set[str] | None = None
    vendor = None
    for cpu in cpus:
        have = _features(cpu, cpu_map)
        common = have if common is None else common & have
        model_vendor = next(m.vendor for m in cpu_map.models if m.name == cpu.model)
        this_vendor = cpu.vendor or model_vendor
        if this_vendor and vendor and this_vendor != vendor:
            raise _cpu_error(ErrorCode.OPERATION_FAILED,
                             "operation failed: CPU vendors do not match")
        vendor = vendor or this_vendor
    if not common:
        raise _cpu_error(ErrorCode.OPERATION_FAILED, "operation failed: CPUs are incompatible")
    names = tuple(dict.fromkeys(c.model for c in cpus if c.model))
    found = cpumodels.decode(cpu_map, frozenset(common), vendor, None, blockers, names)
    if found is None:
        raise _cpu_error(ErrorCode.INTERNAL_ERROR,
                         "internal error: Cannot find suitable CPU model for given data")
    require, disable = list(found.require), list(found.disable)
    if flags & MIGRATABLE:
        require = [f for f in require if f not in cpu_map.non_migratable]
        disable = [f for f in disable if f not in cpu_map.non_migratable]
    fallback = "forbid" if hypervisor or names == (found.model,) else "allow"
    out = ["<cpu mode='custom' match='exact'>",
           f"  <model fallback='{fallback}'>{found.model}</model>"]
    if all(c.vendor for c in cpus) and found.vendor:
        out.append(f"  <vendor>{found.vendor}</vendor>")
    if flags & EXPAND_FEATURES:
        base = next(m.features for m in cpu_map.models if m.name == found.model)
        policies = {f: "require" for f in base | set(require)}
        policies.update((f, "disable") for f in disable)
        out += [f"  <feature policy='{policies[f]}' name='{f}'/>" for f in sorted(policies)]
    else:
        out += [f"  <feature policy='require' name='{f}'/>" for f in require]
        out += [f"  <feature policy='disable' name='{f}'/>" for f in disable]
    out.append("</cpu>")
    return "\n".join(out) + "\n"
