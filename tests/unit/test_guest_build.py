"""The pure parts of the test guest builder: cpio writer, module metadata, load order.

Downloading and booting are covered by tests/e2e/test_guest_boot.py.
"""

from __future__ import annotations

import stat
import struct
from pathlib import Path

import pytest

from guest import BANNER, PROMPT
from guest.cpio import Archive
from guest.image import Packages, _modname
from guest.modules import load_order, modinfo

INIT = Path(__file__).parents[1] / "guest" / "init.sh"


def read_newc(data: bytes) -> list[dict[str, object]]:
    """Entries of a newc archive, checking the 4-byte alignment the kernel insists on."""
    entries: list[dict[str, object]] = []
    pos = 0
    while True:
        assert pos % 4 == 0
        assert data[pos:pos + 6] == b"070701"
        f = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        ino, mode, _uid, _gid, nlink, _mtime, size, _, _, rmaj, rmin, namesize, _check = f
        start = pos + 110
        name = data[start:start + namesize - 1].decode()
        assert data[start + namesize - 1] == 0
        body = start + namesize + (-(110 + namesize) % 4)
        entries.append({"name": name, "ino": ino, "mode": mode, "nlink": nlink,
                        "rdev": (rmaj, rmin), "data": data[body:body + size]})
        pos = body + size + (-size % 4)
        if name == "TRAILER!!!":
            assert pos == len(data)
            return entries


def test_cpio_entries_round_trip() -> None:
    cpio = Archive()
    cpio.dir("/etc")
    cpio.file("etc/hello", b"hello", 0o600)
    cpio.symlink("sh", "/bin/busybox")
    cpio.chardev("console", 5, 1)
    entries = read_newc(cpio.getvalue())
    names = [e["name"] for e in entries]
    assert names == ["etc", "etc/hello", "sh", "console", "TRAILER!!!"]
    etc, hello, sh, console, _ = entries
    assert stat.S_ISDIR(etc["mode"]) and etc["nlink"] == 2  # type: ignore[arg-type]
    assert hello["mode"] == stat.S_IFREG | 0o600 and hello["data"] == b"hello"
    assert sh["mode"] == stat.S_IFLNK | 0o777 and sh["data"] == b"/bin/busybox"
    assert console["mode"] == stat.S_IFCHR | 0o600 and console["rdev"] == (5, 1)
    inos = [e["ino"] for e in entries[:-1]]
    assert len(set(inos)) == len(inos)


@pytest.mark.parametrize("size", range(9))
def test_cpio_pads_every_size(size: int) -> None:
    cpio = Archive()
    cpio.file("x" * size or "y", b"z" * size)
    assert read_newc(cpio.getvalue())[0]["data"] == b"z" * size


def test_cpio_is_closed_by_its_trailer() -> None:
    cpio = Archive()
    assert cpio.getvalue() == cpio.getvalue()
    with pytest.raises(ValueError):
        cpio.dir("late")


def elf_with_modinfo(info: bytes) -> bytes:
    """A minimal ELF64 file: just the section headers and the two sections modinfo reads."""
    shstrtab = b"\0.shstrtab\0.modinfo\0"
    body = shstrtab + info
    shoff = 64 + len(body)
    header = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack(
        "<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 1)

    def section(name: int, offset: int, size: int) -> bytes:
        kind = 3 if name == 1 else 1  # SHT_STRTAB for .shstrtab, else SHT_PROGBITS
        return struct.pack("<IIQQQQIIQQ", name, kind, 0, 0, offset, size, 0, 0, 1, 0)

    return header + body + section(0, 0, 0) + section(1, 64, len(shstrtab)) + \
        section(11, 64 + len(shstrtab), len(info))


def test_modinfo_reads_the_modinfo_section() -> None:
    ko = elf_with_modinfo(b"license=GPL\0depends=virtio_ring,virtio\0\0name=virtio_net\0")
    info = modinfo(ko)
    assert info == {"license": "GPL", "depends": "virtio_ring,virtio", "name": "virtio_net"}


def test_modinfo_rejects_what_is_not_a_module() -> None:
    with pytest.raises(ValueError):
        modinfo(b"#!/bin/sh\n" + bytes(64))
    no_modinfo = elf_with_modinfo(b"").replace(b".modinfo", b".notinfo")
    with pytest.raises(ValueError):
        modinfo(no_modinfo)


DEPS = {
    "virtio_net": ["virtio_ring", "virtio", "net_failover"],
    "net_failover": ["failover"],
    "virtio": ["virtio_ring"],
    "virtio_blk": ["virtio", "virtio_ring"],
    "button": [], "failover": [], "virtio_ring": [],
}


def test_load_order_puts_dependencies_first_once() -> None:
    order = load_order(["virtio_blk", "virtio_net", "button"], DEPS.__getitem__)
    assert order == ["virtio_ring", "virtio", "virtio_blk", "failover", "net_failover",
                     "virtio_net", "button"]


def test_load_order_refuses_cycles() -> None:
    with pytest.raises(ValueError, match="cycle"):
        load_order(["a"], {"a": ["b"], "b": ["a"]}.__getitem__)


def test_module_names_from_paths() -> None:
    assert _modname("kernel/arch/x86/events/intel/intel-uncore.ko\n") == "intel_uncore"
    assert _modname("kernel/drivers/acpi/button.ko") == "button"


def test_cache_key_names_the_versions() -> None:
    key = Packages("linux-image-6.1.0-56-cloud-amd64", "6.1.192-2", "1:1.35.0-4").key()
    assert key.startswith("6.1.0-56-cloud-amd64_6.1.192-2_busybox_1%3a1.35.0-4_")
    assert ":" not in key and "/" not in key


def test_init_prints_what_the_tests_wait_for() -> None:
    init = INIT.read_text()
    assert f'echo "{BANNER}"' in init
    assert f"PS1='{PROMPT}'" in init
