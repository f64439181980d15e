"""``virsh cpu-compare`` and ``hypervisor-cpu-compare``: can this host run a guest CPU?

A guest ``<cpu>`` (a CPU map model plus feature policies) is set against a CPU
given as a set of libvirt feature names: the host CPU as /proc shows it, or the
CPU QEMU offers with ``-cpu host``/``max`` (domcapabilities' host-model). The
checks, their order, the results and the messages are libvirt 9.0's.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from drivers import host
from drivers.qemu import cpumodels
from drivers.qemu.domain_xml.errors import syntax_error
from protocol.errors import ErrorCode, ErrorDomain, VirError

# virCPUCompareResult
INCOMPATIBLE = 0
IDENTICAL = 1
SUPERSET = 2

FAIL_INCOMPATIBLE = 1 << 0  # VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE
VALIDATE_XML = 1 << 1  # VIR_CONNECT_COMPARE_CPU_VALIDATE_XML

_POLICIES = ("force", "require", "optional", "disable", "forbid")


@dataclass(frozen=True)
class HostCPU:
    """The CPU compared against: every feature it has, by libvirt's names."""

    arch: str
    vendor: str | None
    features: frozenset[str]


def _xml_error(message: str) -> VirError:
    return VirError(ErrorCode.XML_ERROR, f"XML error: {message}", ErrorDomain.CPU)


@dataclass(frozen=True)
class GuestCPU:
    arch: str | None
    model: str | None
    vendor: str | None
    match: str
    mode: str | None
    features: tuple[tuple[str, str], ...]  # (policy, name) in document order


def parse_cpu(xml: str, host_form: bool = False) -> GuestCPU:
    """A ``<cpu>`` document, checked as libvirt checks one before comparing it.

    ``host_form`` wants a CPU as the capabilities XML describes a host's: no mode,
    an arch (what cpu-baseline takes)."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    try:
        root = etree.fromstring(xml.encode(), parser)
    except etree.XMLSyntaxError as e:
        raise syntax_error(xml, e, "CPU_definition", ErrorDomain.CPU) from None
    if root.tag != "cpu":
        raise _xml_error("XML does not contain expected 'cpu' element")
    if host_form and root.get("mode") is not None:
        raise VirError(ErrorCode.CONFIG_UNSUPPORTED,
                       "unsupported configuration: Attribute mode is only allowed for guest CPU",
                       ErrorDomain.CPU)
    if host_form and root.find("arch") is None:
        raise _xml_error("Missing CPU architecture")
    model = root.findtext("model")
    features = []
    for f in root.findall("feature"):
        policy = f.get("policy", "require")  # a host CPU's features carry no policy
        if policy not in _POLICIES:
            raise _xml_error(f"Invalid CPU feature policy '{policy}'")
        features.append((policy, f.get("name", "")))
    if features and not model:
        raise _xml_error("Non-empty feature list specified without CPU model")
    return GuestCPU(root.findtext("arch"), model, root.findtext("vendor"),
                    root.get("match", "exact"), root.get("mode"), tuple(features))


def _incompatible(message: str, fail: bool) -> int:
    if fail:
        raise VirError(ErrorCode.CPU_INCOMPATIBLE,
                       f"the CPU is incompatible with host CPU: {message}", ErrorDomain.CPU)
    return INCOMPATIBLE


def _unknown(what: str, name: str) -> VirError:
    return VirError(ErrorCode.INTERNAL_ERROR, f"internal error: Unknown CPU {what} {name}",
                    ErrorDomain.CPU)


def compare(cpu: GuestCPU, against: HostCPU, fail: bool,
            directory: str = host.CPU_MAP_DIR) -> int:
    """virCPUCompareResult of ``cpu`` on ``against``; with ``fail``, an incompatible
    CPU raises VIR_ERR_CPU_INCOMPATIBLE naming the reason instead."""
    if cpu.model is None:
        return SUPERSET  # nothing asked for: any CPU will do
    if cpu.arch is not None and cpu.arch != against.arch:
        return _incompatible(f"CPU arch {cpu.arch} does not match host arch", fail)
    cpu_map = cpumodels.x86_map(directory)
    order = cpu_map.features if cpu_map else ()
    models = {m.name: m for m in cpu_map.models} if cpu_map else {}
    if cpu.model not in models:
        raise _unknown("model", cpu.model)
    for _, name in cpu.features:
        if name not in order:
            raise _unknown("feature", name)
    if cpu.vendor is not None and cpu.vendor != against.vendor:
        return _incompatible(
            f"host CPU vendor does not match required CPU vendor {cpu.vendor}", fail)
    wanted = set(models[cpu.model].features)
    for policy, name in cpu.features:
        if policy in ("force", "require"):
            wanted.add(name)
        elif policy in ("disable", "forbid"):
            wanted.discard(name)
    forbidden = [f for f in order if (("forbid", f) in cpu.features) and f in against.features]
    if forbidden:
        return _incompatible(f"Host CPU provides forbidden features: {', '.join(forbidden)}",
                             fail)
    forced = {name for policy, name in cpu.features if policy == "force"}
    missing = [f for f in order if f in wanted - forced and f not in against.features]
    if missing:
        return _incompatible(
            f"Host CPU does not provide required features: {', '.join(missing)}", fail)
    optional = {name for policy, name in cpu.features if policy == "optional"}
    extra = [f for f in order if f in against.features and f not in wanted | optional]
    if cpu.match == "strict" and extra:
        return _incompatible(
            f"Host CPU does not strictly match guest CPU: Extra features: {', '.join(extra)}",
            fail)
    return SUPERSET if extra else IDENTICAL


def host_cpu(directory: str = host.CPU_MAP_DIR) -> HostCPU:
    """The host CPU of the capabilities XML, with its model's features spelled out."""
    cpu = host.host_cpu(cpu_map_dir=directory)
    cpu_map = cpumodels.x86_map(directory)
    features = set(cpu.features)
    if cpu.model and cpu_map:
        features |= next((m.features for m in cpu_map.models if m.name == cpu.model), set())
    return HostCPU(cpu.arch, cpu.vendor, frozenset(features))


def hypervisor_cpu(arch: str, hm: cpumodels.HostModel,
                   directory: str = host.CPU_MAP_DIR) -> HostCPU:
    """The CPU QEMU offers (domcapabilities' host-model) as a feature set."""
    cpu_map = cpumodels.x86_map(directory)
    base = next((m.features for m in cpu_map.models if m.name == hm.model), frozenset()) \
        if cpu_map else frozenset()
    return HostCPU(arch, hm.vendor, frozenset((base | set(hm.require)) - set(hm.disable)))
