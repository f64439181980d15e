"""``disk`` pools: a partition table on a block device; its partitions are the volumes.

libvirt lists partitions with a helper linked to libparted; we read the same
facts from ``parted``'s own printout (one run, in bytes, with the free space
and the geometry) and lay them out as that helper does: data partitions named
after their device node, the extended partition as "metadata", free areas,
and on dos labels the last partial cylinder kept out of the free space.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass

from drivers import offload
from drivers.storage import blockdev
from drivers.storage.backend import Backend, Scan, check_flags
from drivers.storage.pool_xml import PoolDef, PoolSizes
from drivers.storage.vol_xml import Volume
from protocol.errors import ErrorCode, ErrorDomain, VirError

BUILD_NO_OVERWRITE = 1 << 2
BUILD_OVERWRITE = 1 << 3
SECTOR = 512
PARTED = "parted"

#: Volume formats of disk pools and the parted file system type each is made with.
PARTED_FS = {"none": "ext2", "linux": "ext2", "fat16": "fat16", "fat32": "fat32",
             "linux-swap": "linux-swap", "linux-lvm": "ext2", "linux-raid": "ext2",
             "extended": "extended"}

_ROW = re.compile(r"^\s*(\d+)?\s+(\d+)B\s+(\d+)B\s+(\d+)B\s*(.*)$")
_GEOMETRY = re.compile(r"geometry:\s*(\d+),(\d+),(\d+)\.")
_LABEL = re.compile(r"^Partition Table:\s*(\S+)", re.MULTILINE)


def _internal(message: str) -> VirError:
    return VirError(ErrorCode.INTERNAL_ERROR, f"internal error: {message}", ErrorDomain.STORAGE)


@dataclass
class Part:
    """One entry of the layout: a partition (num > 0) or a free area (num 0).

    ``kind`` is normal, logical or extended; ``content`` data, metadata or free;
    ``end`` is the first byte past it."""

    num: int
    kind: str
    content: str
    start: int
    end: int


@dataclass
class Layout:
    label: str  # as parted names it: msdos, gpt, ...
    geometry: tuple[int, int, int]  # cylinders, heads, sectors
    parts: list[Part]


def parse_parted(output: str) -> Layout:
    """``parted -s DEV unit B print free unit chs print``, as libparted lists it."""
    label = _LABEL.search(output)
    geometry = _GEOMETRY.search(output)
    if label is None or geometry is None:
        raise _internal("Failed to create disk pool geometry")
    cyl, heads, sectors = (int(g) for g in geometry.groups())
    parts: list[Part] = []
    extended: Part | None = None
    table = output.split("\nNumber", 1)[-1].split("\n\n", 1)[0]  # the first print's rows
    for line in table.splitlines():
        m = _ROW.match(line)
        if m is None:
            continue
        num, start, end, rest = m.group(1), int(m.group(2)), int(m.group(3)) + 1, m.group(5)
        if num is None:
            inside = extended is not None and extended.start <= start < extended.end
            parts.append(Part(0, "logical" if inside else "normal", "free", start, end))
            continue
        kind = rest.split()[0] if label.group(1) == "msdos" and rest else "primary"
        part = Part(int(num), {"primary": "normal"}.get(kind, kind),
                    "metadata" if kind == "extended" else "data", start, end)
        if kind == "extended":
            extended = part
        parts.append(part)
    if label.group(1) == "msdos":
        # parted prints with cylinder alignment off; libparted's own listing keeps
        # the last partial cylinder as metadata, so free space stops before it.
        boundary = cyl * heads * sectors * SECTOR
        for part in parts:
            if part.content == "free" and part.kind == "normal" and part.end > boundary:
                part.end = boundary
        parts = [p for p in parts if p.end > p.start]
    return Layout(label.group(1), (cyl, heads, sectors), parts)


def part_path(device: str, num: int) -> str:
    """The partition's node: a "p" between device and number when the device
    name ends in a digit (loop0p1, nvme0n1p1, sda1)."""
    real = os.path.realpath(device)
    return f"{real}{'p' if real[-1:].isdigit() else ''}{num}"


@dataclass
class Found:
    """What a read of the partition table gives: volumes, sizes, free extents."""

    volumes: dict[str, Volume]
    kinds: dict[str, str]  # volume name -> normal, logical or extended
    sizes: PoolSizes
    free: list[tuple[int, int, str]]  # start, end, normal or logical


def lay_out(layout: Layout, device: str, stat_vol: bool = True) -> Found:
    """Volumes and pool sizes from a layout, with libvirt's arithmetic: the
    extended partition counts nothing itself but carries its logical ones'
    allocation; the first free byte is never sector 0."""
    found = Found({}, {}, PoolSizes(), [])
    extended: Volume | None = None
    for part in layout.parts:
        if part.content == "free":
            start = part.start or SECTOR
            found.free.append((start, part.end, part.kind))
            found.sizes.available += part.end - start
            found.sizes.capacity = max(found.sizes.capacity, part.end)
            continue
        path = part_path(device, part.num)
        vol = Volume(os.path.basename(path), type="block", path=path, format="none",
                     extents=[(device, part.start, part.end)])
        if part.kind == "extended":
            if stat_vol:  # its node may be gone once logical partitions exist
                with contextlib.suppress(VirError):
                    blockdev.stat_block(vol)
            vol.capacity, vol.allocation = part.end - part.start, 0
            extended = vol
        elif stat_vol:
            blockdev.stat_block(vol)
        if part.kind == "logical" and extended is not None:
            extended.allocation = (extended.allocation or 0) + (vol.allocation or 0)
        if part.content != "metadata":
            found.sizes.allocation += vol.allocation or 0
        found.sizes.capacity = max(found.sizes.capacity, part.end)
        found.volumes[vol.name] = vol
        found.kinds[vol.name] = part.kind
    return found


def part_spec(label: str, fmt: str, kinds: dict[str, str]) -> str:
    """parted's words for the partition to make: on dos, primary while fewer than
    four primary and extended exist, then logical inside the extended one."""
    if label != "dos":
        return "primary"
    fs = PARTED_FS[fmt]
    has_extended = "extended" in kinds.values()
    if fmt == "extended":
        if has_extended:
            raise _internal("extended partition already exists")
        return fs
    if _new_kind(label, kinds) == "normal":
        return f"primary {fs}"
    if not has_extended:
        raise _internal("no extended partition found and no primary partition available")
    return f"logical {fs}"


def _new_kind(label: str, kinds: dict[str, str]) -> str:
    if label == "dos" and sum(k in ("normal", "extended") for k in kinds.values()) >= 4:
        return "logical"
    return "normal"


def boundaries(label: str, geometry: tuple[int, int, int], free: list[tuple[int, int, str]],
               kinds: dict[str, str], size: int) -> tuple[int, int]:
    """First and last byte of a new partition of ``size``: the smallest free area
    it fits in, on dos rounded to whole cylinders, a sector kept before a
    logical partition (libvirt's virStorageBackendDiskPartBoundaries)."""
    cylinder = geometry[1] * geometry[2] * SECTOR
    kind = _new_kind(label, kinds)
    extra = cylinder - size % cylinder
    best: tuple[int, int, int] | None = None  # area size, start, bytes needed
    for start, end, area in free:
        room = end - start
        needed = size
        if label == "dos":
            needed += extra
            if start % cylinder > extra:
                needed += cylinder
            if kind == "logical":
                room -= SECTOR
        if room > needed and (best is None or room < best[0]) and area == kind:
            best = (room, start, needed)
    if best is None:
        raise _internal("no large enough free extent")
    _, start, needed = best
    if kind == "logical":
        start += SECTOR
    end = start + needed
    if label == "dos":
        end -= start % cylinder
    return start, end - 1


class DiskBackend(Backend):
    type = "disk"
    rescan_on_vol_change = True
    vol_formats = ("none", frozenset(PARTED_FS))

    def __init__(self, d: PoolDef) -> None:
        super().__init__(d)
        self.last: Found | None = None
        self.layout: Layout | None = None

    @property
    def device(self) -> str:
        return self.d.source.devices[0].path

    def _label(self) -> str:
        return self.d.source.format or "unknown"

    async def build(self, flags: int) -> None:
        check_flags(flags, BUILD_OVERWRITE | BUILD_NO_OVERWRITE, "virStorageBackendDiskBuildPool")
        if flags & BUILD_OVERWRITE and flags & BUILD_NO_OVERWRITE:
            raise VirError(ErrorCode.INVALID_ARG,
                           "Flags 'VIR_STORAGE_POOL_BUILD_OVERWRITE' and "
                           "'VIR_STORAGE_POOL_BUILD_NO_OVERWRITE' are mutually exclusive",
                           ErrorDomain.STORAGE)
        if not flags & BUILD_OVERWRITE:
            await blockdev.check_empty(self.device, self._label(), writelabel=True)
        await offload.run_long(self.device, blockdev.zero_ends, self.device)
        if self._label() == "unknown":
            self.d.source.format = "dos"
        label = "msdos" if self._label() == "dos" else self._label()
        await blockdev.run(PARTED, self.device, "mklabel", "--script", label)

    def _check_device(self) -> None:
        if not os.path.exists(self.device):
            raise VirError(ErrorCode.INVALID_ARG,
                           f"invalid argument: device path '{self.device}' doesn't exist",
                           ErrorDomain.STORAGE)

    async def start(self) -> None:
        await offload.run(self.device, self._check_device)
        if self._label() == "unknown":
            self.d.source.format = "dos"
        await blockdev.check_empty(self.device, self._label(), writelabel=False)

    async def delete(self, flags: int) -> None:
        check_flags(flags, 0, "virStorageBackendDiskDeletePool")
        await offload.run_long(self.device, blockdev.zero_ends, self.device)

    async def _read(self) -> Found:
        await offload.run(self.device, self._check_device)
        out = await blockdev.run(PARTED, "-s", self.device, "unit", "B", "print", "free",
                                 "unit", "chs", "print")
        self.layout = parse_parted(out)
        found = await offload.run(self.device, self._lay_out, self.layout)
        self.d.source.devices[0].free_extents = [(s, e) for s, e, _ in found.free]
        self.last = found
        return found

    def _lay_out(self, layout: Layout) -> Found:
        """The volumes of a layout with their nodes' stat and stable names (blocking)."""
        found = lay_out(layout, self.device)
        for vol in found.volumes.values():
            vol.path = self._stable(vol.path)
        return found

    def _stable(self, path: str) -> str:
        """The pool's name for a node: a link to it in the target directory when
        that is one of /dev's stable-name directories, else the node itself."""
        target = self.d.target_path
        if target in ("/dev", "/dev/") or not target.startswith("/dev/"):
            return path
        try:
            for entry in sorted(os.scandir(target), key=lambda e: e.name):
                if os.path.realpath(entry.path) == path:
                    return entry.path
        except OSError:
            pass
        return path

    async def refresh(self) -> Scan:
        found = await self._read()
        return Scan(found.sizes, self.d.target_perms, found.volumes)

    def vol_path(self, name: str) -> str:
        return f"{self.d.target_path}/{name}"

    async def refresh_vol(self, vol: Volume) -> Volume:
        """libvirt rereads a partition only with the whole pool: as last read."""
        known = self.last.volumes.get(vol.name) if self.last is not None else None
        return known or vol

    async def create_vol_from(self, vol: Volume, source: Volume, flags: int) -> None:
        await blockdev.create_from(self, vol, source, flags)

    async def create_vol(self, vol: Volume, flags: int) -> None:
        if self.last is None or self.layout is None:
            await self._read()
        assert self.last is not None and self.layout is not None
        known = {v.path for v in self.last.volumes.values()}
        spec = part_spec(self._label(), vol.format, self.last.kinds)
        start, end = boundaries(self._label(), self.layout.geometry, self.last.free,
                                self.last.kinds, vol.capacity)
        await blockdev.run(PARTED, self.device, "mkpart", "--script", spec, f"{start}B",
                           f"{end}B")
        found = await self._read()
        new = next((v for v in found.volumes.values() if v.path not in known), None)
        if new is not None and new.name != vol.name:
            error = VirError(ErrorCode.INVALID_ARG, f"invalid argument: invalid partition "
                             f"name '{vol.name}', expected '{new.name}'", ErrorDomain.STORAGE)
            try:
                await self.delete_vol(new, 0)
            except VirError:
                pass  # libvirt's best effort
            raise error

    async def delete_vol(self, vol: Volume, flags: int) -> None:
        """parted rm with the number after the device's own name in the node's
        name, taken as libvirt takes it (for loop0p1 that is "p1")."""
        check_flags(flags, 0, "virStorageBackendDiskDeleteVol")
        node = os.path.basename(os.path.realpath(vol.path))
        source = os.path.basename(self.device)
        if not node.startswith(source):
            raise _internal(f"Volume path '{node}' did not start with parent pool source "
                            "device name.")
        number = node[len(source):]
        if not number:
            raise _internal(f"cannot parse partition number from target '{node}'")
        await blockdev.run(PARTED, self.device, "rm", "--script", number)

    async def wipe_vol(self, vol: Volume, algorithm: int) -> None:
        if self.last is not None and self.last.kinds.get(vol.name) == "extended":
            raise VirError(ErrorCode.NO_SUPPORT, "this function is not supported by the "
                           f"connection driver: cannot wipe extended partition '{vol.path}'",
                           ErrorDomain.STORAGE)
        await blockdev.wipe(vol, algorithm)
