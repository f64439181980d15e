"""Kernel module dependencies read from the .ko files themselves.

Debian's kernel package ships no modules.dep (depmod runs at install time)
and the host may have no kmod, so the ``depends=`` entry of each module's
``.modinfo`` ELF section is the source of truth for what to load first.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable


def modinfo(ko: bytes) -> dict[str, str]:
    """The key=value strings of a 64-bit little-endian module's .modinfo section."""
    if ko[:4] != b"\x7fELF" or ko[4] != 2 or ko[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", ko, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ko, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        name, = struct.unpack_from("<I", ko, base)
        offset, size = struct.unpack_from("<QQ", ko, base + 0x18)
        return name, offset, size

    _, strtab, _ = section(shstrndx)
    for i in range(shnum):
        name, offset, size = section(i)
        end = ko.index(b"\0", strtab + name)
        if ko[strtab + name:end] == b".modinfo":
            info: dict[str, str] = {}
            for item in ko[offset:offset + size].split(b"\0"):
                key, sep, value = item.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(key, value)
            return info
    raise ValueError("no .modinfo section")


def load_order(wanted: Iterable[str], depends: Callable[[str], list[str]]) -> list[str]:
    """``wanted`` and everything they need, each after its dependencies.

    Among modules free to go in any order, ``wanted``'s own order is kept.
    """
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise ValueError(f"module dependency cycle through {name}")
        visiting.add(name)
        for dep in depends(name):
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in wanted:
        visit(name)
    return order
