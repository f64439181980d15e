"""The CPU models libvirt knows per architecture (``virsh cpu-models``).

libvirt answers from its CPU map, the XML files under /usr/share/libvirt/cpu_map
that :mod:`drivers.host` reads for the host CPU too. Where that map is not
installed, the names QEMU itself offers stand in for it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from drivers import host
from protocol.errors import ErrorCode, ErrorDomain, VirError

# Every architecture name libvirt 9.0 accepts, in its own order.
ARCHES = (
    "alpha armv6l armv7l armv7b aarch64 cris i686 ia64 lm32 m68k microblaze "
    "microblazeel mips mipsel mips64 mips64el openrisc parisc parisc64 ppc ppcle "
    "ppc64 ppc64le ppcemb riscv32 riscv64 s390 s390x sh4 sh4eb sparc sparc64 "
    "unicore32 x86_64 xtensa xtensaeb"
).split()

# The CPU map section for each architecture with a CPU driver that lists models;
# ARM and s390 have a CPU driver that accepts any model name and lists none.
_MAP_ARCH = {"i686": "x86", "x86_64": "x86", "ppc64": "ppc64", "ppc64le": "ppc64"}
_ANY_MODEL = frozenset({"armv6l", "armv7l", "armv7b", "aarch64", "s390", "s390x"})
# QEMU's pseudo-models and versioned aliases, which libvirt's map never names.
_NOT_A_MODEL = re.compile(r"^(max|host|base)$|-v\d+$")


@functools.cache
def map_models(map_arch: str, directory: str = host.CPU_MAP_DIR) -> tuple[tuple[str, str], ...]:
    """(name, vendor) of every model of one CPU map section, in the map's order.

    The vendor is "unknown" for models that name none, as domcapabilities prints it.
    An empty tuple means the map (or that section) is not installed.
    """
    base = Path(directory)
    try:
        index = ElementTree.parse(base / "index.xml").getroot()
    except (OSError, ElementTree.ParseError):
        return ()
    section = index.find(f"arch[@name='{map_arch}']")
    if section is None:
        return ()
    found: list[tuple[str, str]] = []
    for include in section.findall("include"):
        try:
            doc = ElementTree.parse(base / include.get("filename", "")).getroot()
        except (OSError, ElementTree.ParseError):
            continue
        for model in doc.iter("model"):
            if model.get("name"):
                vendor = model.find("vendor")
                found.append((model.get("name", ""), vendor.get("name", "") if vendor is not None
                              else "unknown"))
    for model in section.findall("model"):  # older maps keep models in index.xml itself
        vendor = model.find("vendor")
        found.append((model.get("name", ""), vendor.get("name", "") if vendor is not None
                      else "unknown"))
    return tuple(found)


def qemu_names(qemu_models: list[str]) -> list[str]:
    """QEMU's own model names, without its pseudo-models and versioned aliases."""
    return [m for m in qemu_models if not _NOT_A_MODEL.search(m)]


def model_names(arch: str, qemu_models: list[str] | None = None,
                directory: str = host.CPU_MAP_DIR) -> list[str]:
    """Models for ``arch`` as virConnectGetCPUModelNames lists them, or libvirt's error.

    ``qemu_models`` (query-cpu-definitions names of the emulator for ``arch``) are
    the fallback when the CPU map is not installed.
    """
    if arch not in ARCHES:
        raise VirError(ErrorCode.INVALID_ARG,
                       f"invalid argument: cannot find architecture {arch}", ErrorDomain.QEMU)
    if arch in _ANY_MODEL:
        return []
    map_arch = _MAP_ARCH.get(arch)
    if map_arch is None:
        raise VirError(ErrorCode.NO_SUPPORT,
                       f"this function is not supported by the connection driver: "
                       f"'{arch}' architecture is not supported by CPU driver", ErrorDomain.CPU)
    names = [name for name, _ in map_models(map_arch, directory)]
    if not names and qemu_models is not None:
        return qemu_names(qemu_models)
    return names


# -- host-model: QEMU's view of the host CPU in libvirt's terms ----------------------


@dataclass(frozen=True)
class _Model:
    name: str
    vendor: str | None
    signatures: frozenset[tuple[int, int]]
    decode_guest: bool
    features: frozenset[str]


@dataclass(frozen=True)
class _X86Map:
    features: tuple[str, ...]  # the map's order, which libvirt lists features in
    qemu_names: dict[str, str]  # QEMU's spelling -> libvirt's
    models: tuple[_Model, ...]


@functools.cache
def x86_map(directory: str) -> _X86Map | None:
    base = Path(directory)
    try:
        index = ElementTree.parse(base / "index.xml").getroot()
    except (OSError, ElementTree.ParseError):
        return None
    section = index.find("arch[@name='x86']")
    if section is None:
        return None
    features: list[str] = []
    qemu_names: dict[str, str] = {}
    models: list[_Model] = []
    for include in section.findall("include"):
        try:
            doc = ElementTree.parse(base / include.get("filename", "")).getroot()
        except (OSError, ElementTree.ParseError):
            continue
        for feat in doc.findall("feature"):
            name = feat.get("name", "")
            features.append(name)
            qemu_names[name] = name
            for alias in feat.findall("alias[@source='qemu']"):
                qemu_names[alias.get("name", "")] = name
        for model in doc.findall("model"):
            decode, vendor = model.find("decode"), model.find("vendor")
            models.append(_Model(
                name=model.get("name", ""),
                vendor=vendor.get("name") if vendor is not None else None,
                signatures=frozenset((int(s.get("family", -1)), int(s.get("model", -1)))
                                     for s in model.findall("signature")),
                decode_guest=decode is None or decode.get("guest") != "off",
                features=frozenset(f.get("name", "") for f in model.findall("feature")
                                   if f.get("removed") != "yes"),
            ))
    return _X86Map(tuple(features), qemu_names, tuple(models))


@dataclass(frozen=True)
class HostModel:
    """``<mode name='host-model'>`` of domcapabilities: a named model plus differences."""

    model: str
    vendor: str | None
    require: tuple[str, ...]
    disable: tuple[str, ...]


_VENDORS = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD", "HygonGenuine": "Hygon"}


def host_model(props: dict[str, object], blockers: dict[str, list[str]],
               directory: str = host.CPU_MAP_DIR) -> HostModel | None:
    """Name the CPU QEMU expands ``-cpu host`` (or ``max``) to, as libvirt 9.0 decodes it.

    ``props`` is a full query-cpu-model-expansion, ``blockers`` QEMU's models with
    the features each lacks under this accelerator (those count as part of the model,
    so they show up disabled). Among the CPU map's models QEMU knows, newest first, a
    model whose signature matches wins over one that does not; otherwise the fewest
    features to add and remove wins. None without a CPU map.
    """
    cpu_map = x86_map(directory)
    if cpu_map is None:
        return None
    have = {cpu_map.qemu_names[p] for p, on in props.items()
            if on is True and p in cpu_map.qemu_names}
    vendor = _VENDORS.get(str(props.get("vendor", "")))
    signature = (props.get("family", -1), props.get("model", -1))
    best: tuple[_Model, frozenset[str], int, bool] | None = None
    for model in reversed(cpu_map.models):
        if model.name not in blockers or not model.decode_guest:
            continue
        if vendor and model.vendor and model.vendor != vendor:
            continue
        lacking = {cpu_map.qemu_names[f] for f in blockers[model.name] if f in cpu_map.qemu_names}
        features = model.features | lacking
        changes = len(have - model.features) + len(features - have)
        matches = signature in model.signatures
        if best is not None:
            _, _, best_changes, best_matches = best
            if best_matches and not matches:
                continue
            if best_matches == matches and changes >= best_changes:
                continue
        best = (model, features, changes, matches)
    if best is None:
        return None
    model, features = best[0], best[1]
    return HostModel(
        model=model.name,
        vendor=vendor,
        require=tuple(f for f in cpu_map.features if f in have and f not in model.features),
        disable=tuple(f for f in cpu_map.features if f in features and f not in have),
    )
