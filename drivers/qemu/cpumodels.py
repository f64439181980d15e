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

from lxml import etree

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


def _map_documents(directory: str, map_arch: str) -> list[etree._Element] | None:
    """The files the CPU map's index includes for one section, in its order; None
    when the map or the section is not installed (an unreadable file is left out)."""
    base = Path(directory)
    try:
        index = etree.parse(base / "index.xml").getroot()
    except (OSError, etree.ParseError):
        return None
    section = index.find(f"arch[@name='{map_arch}']")
    if section is None:
        return None
    docs = []
    for include in section.findall("include"):
        try:
            docs.append(etree.parse(base / include.get("filename", "")).getroot())
        except (OSError, etree.ParseError):
            continue
    return docs


@functools.cache
def map_models(map_arch: str, directory: str = host.CPU_MAP_DIR) -> tuple[tuple[str, str], ...]:
    """(name, vendor) of every model of one CPU map section, in the map's order.

    The vendor is "unknown" for models that name none, as domcapabilities prints it.
    An empty tuple means the map (or that section) is not installed.
    """
    docs = _map_documents(directory, map_arch)
    if docs is None:
        return ()
    found: list[tuple[str, str]] = []
    for doc in docs:
        for model in doc.findall("model"):
            vendor = model.find("vendor")
            name = vendor.get("name", "") if vendor is not None else "unknown"
            found.append((model.get("name", ""), name))
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


# -- naming a CPU after the map: domcapabilities' host-model, baselines ------------


@dataclass(frozen=True)
class _Model:
    name: str
    vendor: str | None
    signatures: frozenset[tuple[int, int]]
    decode_guest: bool
    features: frozenset[str]


@dataclass(frozen=True)
class X86Map:
    """The x86 half of the CPU map, as decoding a CPU needs it."""

    features: tuple[str, ...]  # the map's order, which libvirt lists features in
    from_qemu: dict[str, str]  # QEMU's spelling -> libvirt's
    models: tuple[_Model, ...]
    non_migratable: frozenset[str]


@functools.cache
def x86_map(directory: str) -> X86Map | None:
    """The x86 section of the CPU map in ``directory``, read once; None if absent."""
    docs = _map_documents(directory, "x86")
    if docs is None:
        return None
    features: list[str] = []
    from_qemu: dict[str, str] = {}
    models: list[_Model] = []
    non_migratable: set[str] = set()
    for doc in docs:
        for feat in doc.findall("feature"):
            name = feat.get("name", "")
            features.append(name)
            if feat.get("migratable") == "no":
                non_migratable.add(name)
            from_qemu[name] = name
            for alias in feat.findall("alias[@source='qemu']"):
                from_qemu[alias.get("name", "")] = name
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
    return X86Map(tuple(features), from_qemu, tuple(models), frozenset(non_migratable))


@dataclass(frozen=True)
class HostModel:
    """A CPU as libvirt names one: a CPU map model plus the features to add and remove
    (domcapabilities' host-model, a baseline)."""

    model: str
    vendor: str | None
    require: tuple[str, ...]
    disable: tuple[str, ...]


_VENDORS = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD", "HygonGenuine": "Hygon"}


def host_model(props: dict[str, object], blockers: dict[str, list[str]],
               directory: str = host.CPU_MAP_DIR) -> HostModel | None:
    """Name the CPU QEMU expands ``-cpu host`` (or ``max``) to, as libvirt 9.0 decodes it.

    ``props`` is a full query-cpu-model-expansion, ``blockers`` QEMU's models with
    the features each lacks under this accelerator. None without a CPU map.
    """
    cpu_map = x86_map(directory)
    if cpu_map is None:
        return None
    have = {cpu_map.from_qemu[p] for p, on in props.items()
            if on is True and p in cpu_map.from_qemu}
    vendor = _VENDORS.get(str(props.get("vendor", "")))
    signature = (int(props.get("family", -1)), int(props.get("model", -1)))  # type: ignore
    return decode(cpu_map, frozenset(have), vendor, signature, blockers)


def decode(cpu_map: X86Map, have: frozenset[str], vendor: str | None,
           signature: tuple[int, int] | None, blockers: dict[str, list[str]] | None,
           preferred: tuple[str, ...] = ()) -> HostModel | None:
    """The CPU map model that describes ``have`` best, with what to add and remove.

    Newest models first; with ``blockers`` (QEMU's models and the features each lacks),
    only those models, and a lacking feature is never required but always disabled.
    A single ``preferred`` model wins outright where allowed; otherwise a model whose
    signature matches beats one that does not, then the fewest changes win (the newer
    model on a tie).
    """
    best: tuple[_Model, frozenset[str], frozenset[str], bool] | None = None
    for model in reversed(cpu_map.models):
        if blockers is not None and model.name not in blockers:
            continue
        if not model.decode_guest or (vendor and model.vendor and model.vendor != vendor):
            continue
        lacking = frozenset(cpu_map.from_qemu[f] for f in (blockers or {}).get(model.name, ())
                            if f in cpu_map.from_qemu)
        usable = have - lacking
        require, disable = usable - model.features, (model.features | lacking) - usable
        matches = signature is not None and signature in model.signatures
        if preferred == (model.name,):
            best = (model, require, disable, matches)
            break
        if best is not None:
            _, best_require, best_disable, best_matches = best
            if best_matches and not matches:
                continue
            changes = len(require) + len(disable)
            if best_matches == matches and changes >= len(best_require) + len(best_disable):
                continue
        best = (model, require, disable, matches)
    if best is None:
        return None
    model, require, disable, _ = best
    return HostModel(
        model=model.name,
        vendor=vendor,
        require=tuple(f for f in cpu_map.features if f in require),
        disable=tuple(f for f in cpu_map.features if f in disable),
    )
