"""The CPU models libvirt knows per architecture (``virsh cpu-models``).

libvirt answers from its CPU map, the XML files under /usr/share/libvirt/cpu_map
that :mod:`drivers.host` reads for the host CPU too. Where that map is not
installed, the names QEMU itself offers stand in for it.
"""

from __future__ import annotations

import functools
import re
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
