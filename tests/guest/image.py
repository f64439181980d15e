"""The tiny Linux guest that the QEMU end-to-end tests boot, built once and cached.

The guest is Debian's cloud kernel plus an initramfs of busybox-static, the
few modules it needs and an init script (init.sh). Only Debian packages are
fetched (``apt-get download``, unpacked with ``dpkg-deb -x``); the initramfs
is written in Python. The result lives under a directory named after the
package versions and a hash of this recipe, so a second call only checks
that the files are there.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from .cpio import Archive
from .modules import load_order, modinfo

KERNEL_META = "linux-image-cloud-amd64"
BUSYBOX = "busybox-static"
CMDLINE = "console=ttyS0 quiet panic=-1"
BANNER = "aiovirtd-test-guest ready"
PROMPT = "guest# "
# What the guest loads: virtio disks, network, balloon and serial ports (the
# agent's channel), the ACPI power button as an input device for acpid, and
# pvpanic (ISA, found through ACPI) to tell QEMU of a kernel panic. Their
# dependencies are added at build.
MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "virtio_balloon", "virtio_console",
           "button", "evdev", "pvpanic_mmio")
POWER_BUTTON = b"#!/bin/sh\npoweroff -f\n"

HERE = Path(__file__).resolve().parent
RECIPE = ("init.sh", "agent.sh", "udhcpc.sh", "image.py", "cpio.py", "modules.py")
APT_LISTS = Path("/var/lib/apt/lists")
DIRS = ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "run", "var",
        "var/log", "root", "etc", "etc/acpi", "etc/acpi/PWRF", "lib", "lib/modules", "usr/share",
        "usr/share/udhcpc")


@dataclass(frozen=True)
class Guest:
    """What QEMU needs to boot the guest: ``-kernel``, ``-initrd``, ``-append``."""

    kernel: Path
    initrd: Path
    cmdline: str = CMDLINE


@dataclass(frozen=True)
class Packages:
    """The exact Debian packages a build uses; their versions name the cache entry."""

    kernel: str
    kernel_version: str
    busybox_version: str

    def key(self) -> str:
        recipe = hashlib.sha256()
        for name in RECIPE:
            recipe.update((HERE / name).read_bytes())
        abi = self.kernel.removeprefix("linux-image-")
        key = f"{abi}_{self.kernel_version}_busybox_{self.busybox_version}_{recipe.hexdigest()[:8]}"
        return key.replace(":", "%3a")


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "aiovirtd" / "guest"


def ensure_guest(cache_dir: Path | str | None = None) -> Guest:
    """The cached guest, built first if this package set has not been built yet."""
    root = Path(cache_dir) if cache_dir is not None else default_cache()
    root.mkdir(parents=True, exist_ok=True)
    packages = resolve(root)
    dest = root / packages.key()
    guest = Guest(dest / "vmlinuz", dest / "initrd.img")
    if guest.kernel.is_file() and guest.initrd.is_file():
        return guest
    with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as tmp:
        out = Path(tmp) / "out"
        build(packages, Path(tmp), out)
        try:
            out.rename(dest)
        except OSError:
            # Another process finished the same build first; theirs is as good.
            if not guest.initrd.is_file():
                raise
    return guest


def resolve(root: Path) -> Packages:
    """Which package versions apt offers now; apt is asked only when its lists changed."""
    memo = root / "packages.json"
    stamp = _lists_stamp()
    try:
        saved = json.loads(memo.read_text())
        if saved.pop("lists") == stamp:
            return Packages(**saved)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        packages = _ask_apt()
    except LookupError:
        _run("apt-get", "update", "-q")
        stamp = _lists_stamp()
        packages = _ask_apt()
    tmp = memo.with_suffix(f".{os.getpid()}")
    tmp.write_text(json.dumps({"lists": stamp, **asdict(packages)}))
    tmp.replace(memo)
    return packages


def build(packages: Packages, work: Path, out: Path) -> None:
    """Download and unpack the packages in ``work``; write vmlinuz and initrd.img in ``out``."""
    _run("apt-get", "download", "-q",
         f"{packages.kernel}={packages.kernel_version}",
         f"{BUSYBOX}={packages.busybox_version}", cwd=work)
    kernel_root, busybox_root = work / "kernel", work / "busybox"
    _run("dpkg-deb", "-x", str(_one(work.glob(f"{packages.kernel}_*.deb"))), str(kernel_root))
    _run("dpkg-deb", "-x", str(_one(work.glob(f"{BUSYBOX}_*.deb"))), str(busybox_root))
    out.mkdir()
    shutil.copyfile(_one(kernel_root.glob("boot/vmlinuz-*")), out / "vmlinuz")
    (out / "initrd.img").write_bytes(initramfs(kernel_root, busybox_root))


def initramfs(kernel_root: Path, busybox_root: Path) -> bytes:
    """The gzipped cpio: busybox and its applet links, init, modules, acpid's action."""
    moddir = _one(kernel_root.glob("lib/modules/*"))
    paths = {_modname(line): moddir / line.strip()
             for line in (moddir / "modules.order").read_text().splitlines() if line.strip()}
    builtin = {_modname(line) for line in (moddir / "modules.builtin").read_text().splitlines()}

    def depends(name: str) -> list[str]:
        if name not in paths:
            raise LookupError(f"module {name} is not in {moddir.name}")
        deps = modinfo(paths[name].read_bytes()).get("depends", "")
        return [d for d in deps.split(",") if d]

    order = load_order((m for m in MODULES if m not in builtin), depends)
    busybox = busybox_root / "bin/busybox"
    applets = _run(str(busybox), "--list-full").split()

    cpio = Archive()
    for d in DIRS:
        cpio.dir(d)
    cpio.dir("tmp", 0o1777)
    cpio.symlink("var/run", "../run")
    # The kernel opens /dev/console for init before anything is mounted.
    cpio.chardev("dev/console", 5, 1)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in applets:
        if applet != "bin/busybox":
            cpio.symlink(applet, "/bin/busybox")
    cpio.file("init", (HERE / "init.sh").read_bytes(), 0o755)
    cpio.file("sbin/aiovirtd-agent", (HERE / "agent.sh").read_bytes(), 0o755)
    cpio.file("usr/share/udhcpc/default.script", (HERE / "udhcpc.sh").read_bytes(), 0o755)
    cpio.file("etc/modules", "".join(f"{m}\n" for m in order).encode())
    cpio.file("etc/acpi/PWRF/00000080", POWER_BUTTON, 0o755)
    for m in order:
        cpio.file(f"lib/modules/{m}.ko", paths[m].read_bytes())
    return gzip.compress(cpio.getvalue(), compresslevel=6, mtime=0)


def _ask_apt() -> Packages:
    """The kernel the cloud metapackage points at and busybox-static, as apt would pick them."""
    proc = subprocess.run(["apt-cache", "show", "--no-all-versions", KERNEL_META, BUSYBOX],
                          capture_output=True, text=True)
    fields = {}
    for stanza in proc.stdout.split("\n\n"):
        info = dict(line.split(": ", 1) for line in stanza.splitlines()
                    if ": " in line and not line[0].isspace())
        if "Package" in info:
            fields[info["Package"]] = info
    if KERNEL_META not in fields or BUSYBOX not in fields:
        raise LookupError(f"apt knows no {KERNEL_META} or {BUSYBOX}: {proc.stderr.strip()}")
    dep = re.match(r"\s*(linux-image-\S+)\s*\(=\s*([^)\s]+)\)", fields[KERNEL_META]["Depends"])
    if dep is None:
        raise LookupError(f"{KERNEL_META} names no exact kernel: {fields[KERNEL_META]['Depends']}")
    return Packages(dep[1], dep[2], fields[BUSYBOX]["Version"])


def _lists_stamp() -> str:
    """Changes whenever ``apt-get update`` brings new package lists."""
    seen = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                  for p in APT_LISTS.glob("*_Packages*"))
    return hashlib.sha256(repr(seen).encode()).hexdigest()[:16]


def _modname(path: str) -> str:
    """The kernel's name for a module file: basename, no suffix, ``-`` read as ``_``."""
    return path.strip().rsplit("/", 1)[-1].removesuffix(".ko").replace("-", "_")


def _one(paths: Iterable[Path]) -> Path:
    found = list(paths)
    if len(found) != 1:
        raise RuntimeError(f"expected one match, found {[str(p) for p in found]}")
    return found[0]


def _run(*cmd: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout
