"""``logical`` pools: an LVM2 volume group whose logical volumes are the volumes.

The pool is driven through the lvm2 commands as libvirt runs them (pvcreate,
vgcreate, vgchange, lvcreate, lvremove, and lvs/vgs/pvs parsed with libvirt's
patterns). Only active LVs are volumes: an LV without a device node is skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from drivers import offload
from drivers.storage import blockdev
from drivers.storage.backend import Backend, Scan, check_flags
from drivers.storage.pool_xml import (
    Device,
    PoolDef,
    PoolSizes,
    PoolSource,
    format_sources,
)
from drivers.storage.vol_xml import Backing, Volume
from protocol.errors import ErrorCode, ErrorDomain, VirError

BUILD_NO_OVERWRITE = 1 << 2
BUILD_OVERWRITE = 1 << 3

PVCREATE, PVREMOVE, PVS = "/sbin/pvcreate", "/sbin/pvremove", "/sbin/pvs"
VGCREATE, VGREMOVE, VGCHANGE, VGS, VGSCAN = (
    "/sbin/vgcreate", "/sbin/vgremove", "/sbin/vgchange", "/sbin/vgs", "/sbin/vgscan")
LVCREATE, LVREMOVE, LVCHANGE, LVS = "/sbin/lvcreate", "/sbin/lvremove", "/sbin/lvchange", "/sbin/lvs"

LVS_FIELDS = "lv_name,origin,uuid,devices,segtype,stripes,seg_size,vg_extent_size,size,lv_attr"

#: One lvs row (fields joined by '#'; some lvs versions end rows with a '#').
_LV_ROW = re.compile(r"^\s*(\S+)#(\S*)#(\S+)#(\S+)#(\S+)#([0-9]+)#(\S+)#([0-9]+)#([0-9]+)#(\S+?)#?\s*$")
_VG_ROW = re.compile(r"^\s*(\S+):([0-9]+):?\s*$")
_PV_ROW = re.compile(r"^\s*(\S+)\s+(\S+)\s*$")
_EXTENT = r"(\S+)\((\S+)\)"


def _internal(message: str) -> VirError:
    return VirError(ErrorCode.INTERNAL_ERROR, f"internal error: {message}", ErrorDomain.STORAGE)


@dataclass
class LvRow:
    """One segment of a logical volume, as lvs prints it."""

    name: str
    origin: str
    uuid: str
    devices: str
    segtype: str
    stripes: str
    seg_size: str
    extent_size: str
    size: str
    attr: str


def parse_lvs(output: str) -> list[LvRow]:
    return [LvRow(*m.groups()) for line in output.splitlines()
            if (m := _LV_ROW.match(line))]


def parse_extents(row: LvRow) -> list[tuple[str, int, int]]:
    """Where a segment lies: (device, start, end) in bytes per stripe."""
    count = 1
    if row.segtype in ("striped", "mirror") or row.segtype.startswith("raid"):
        if not row.stripes.isdigit():
            raise _internal("malformed volume extent stripes value")
        count = int(row.stripes)
    if not row.seg_size.isdigit():
        raise _internal("malformed volume extent length value")
    length, size = int(row.seg_size), int(row.extent_size)
    m = re.match(",".join([_EXTENT] * count), row.devices)
    if m is None:
        raise _internal("malformed volume extent devices value")
    extents = []
    for i in range(count):
        path, offset = m.group(2 * i + 1), m.group(2 * i + 2)
        if not offset.isdigit():
            raise _internal("malformed volume extent offset value")
        extents.append((path, int(offset) * size, int(offset) * size + length))
    return extents


def parse_vgs(output: str) -> PoolSizes | None:
    """Capacity and free space of the group (``vgs ... -o vg_size,vg_free``)."""
    for line in output.splitlines():
        if m := _VG_ROW.match(line):
            capacity, free = int(m.group(1)), int(m.group(2))
            return PoolSizes(capacity, capacity - free, free)
    return None


def parse_pvs(output: str) -> list[PoolSource]:
    """The groups pvs knows, each with its devices in pvs order (PVs in no group skipped)."""
    sources: dict[str, PoolSource] = {}
    for line in output.splitlines():
        if m := _PV_ROW.match(line):
            pv, vg = m.groups()
            src = sources.setdefault(vg, PoolSource(name=vg, format="lvm2"))
            src.devices.append(Device(pv))
    return list(sources.values())


def lvcreate_args(vol: Volume, vg: str) -> list[str]:
    """lvcreate's command line: a thin (snapshot-backed, sparse) volume when the
    allocation is less than the capacity, sizes in KiB rounded up, as libvirt."""
    args = [LVCREATE, "--name", vol.name, "-L"]
    alloc = vol.allocation if vol.allocation is not None else vol.capacity
    if alloc != vol.capacity:
        args += [f"{(max(alloc, 1) + 1023) // 1024}K", "--type", "snapshot", "--virtualsize"]
    args.append(f"{(vol.capacity + 1023) // 1024}K")
    if vol.backing is not None:
        args += ["-s", vol.backing.path]
    else:
        args.append(vg)
    return args


async def group_sources() -> list[PoolSource]:
    """vgscan (its failure only means a less complete answer), then pvs."""
    try:
        await blockdev.run(VGSCAN)
    except VirError:
        pass
    return parse_pvs(await blockdev.run(PVS, "--noheadings", "-o", "pv_name,vg_name"))


class LogicalBackend(Backend):
    type = "logical"
    vol_formats = None

    def __init__(self, d: PoolDef) -> None:
        super().__init__(d)
        self.sparse: set[str] = set()  # thin volumes, which libvirt will not wipe

    @property
    def vg(self) -> str:
        return self.d.source.name or self.d.name

    @property
    def devices(self) -> list[str]:
        return [dev.path for dev in self.d.source.devices]

    @classmethod
    async def find_sources(cls, spec: str | None) -> str:
        return format_sources(await group_sources(), "logical")

    async def _match_source(self) -> None:
        """The group must exist, and hold one of the pool's devices if it names any."""
        found = next((s for s in await group_sources() if s.name == self.vg), None)
        if found is None:
            raise VirError(ErrorCode.CONFIG_UNSUPPORTED, "unsupported configuration: cannot "
                           f"find logical volume group name '{self.vg}'", ErrorDomain.STORAGE)
        pvs = {dev.path for dev in found.devices}
        if self.devices and not any(path in pvs for path in self.devices):
            raise VirError(ErrorCode.CONFIG_UNSUPPORTED, "unsupported configuration: cannot "
                           "find any matching source devices for logical volume group "
                           f"'{self.vg}'", ErrorDomain.STORAGE)

    async def build(self, flags: int) -> None:
        check_flags(flags, BUILD_OVERWRITE | BUILD_NO_OVERWRITE,
                    "virStorageBackendLogicalBuildPool")
        if flags & BUILD_OVERWRITE and flags & BUILD_NO_OVERWRITE:
            raise VirError(ErrorCode.INVALID_ARG,
                           "Flags 'VIR_STORAGE_POOL_BUILD_OVERWRITE' and "
                           "'VIR_STORAGE_POOL_BUILD_NO_OVERWRITE' are mutually exclusive",
                           ErrorDomain.STORAGE)
        done: list[str] = []
        try:
            for path in self.devices:
                if not flags & BUILD_OVERWRITE:
                    await blockdev.check_empty(path, "LVM2_member", writelabel=True)
                await offload.run_long(path, blockdev.zero_ends, path)
                done.append(path)  # libvirt undoes the devices it got to, failed pvcreate too
                await blockdev.run(PVCREATE, path)
            await blockdev.run(VGCREATE, self.vg, *self.devices)
        except BaseException:
            for path in done:
                await self._pvremove(path)
            raise

    @staticmethod
    async def _pvremove(path: str) -> None:
        try:
            await blockdev.run(PVREMOVE, path)
        except VirError:
            pass  # libvirt only logs it

    async def start(self) -> None:
        await self._match_source()
        await blockdev.run(VGCHANGE, "-aly", self.vg)

    async def stop(self) -> None:
        await blockdev.run(VGCHANGE, "-aln", self.vg)

    async def delete(self, flags: int) -> None:
        check_flags(flags, 0, "virStorageBackendLogicalDeletePool")
        await blockdev.run(VGREMOVE, "-f", self.vg)
        for path in self.devices:
            await self._pvremove(path)

    async def _lvs(self) -> list[LvRow]:
        return parse_lvs(await blockdev.run(
            LVS, "--separator", "#", "--noheadings", "--units", "b", "--unbuffered",
            "--nosuffix", "--options", LVS_FIELDS, self.vg))

    async def _stat(self, rows: list[LvRow], only: str | None = None) -> dict[str, Volume]:
        """``_volumes`` off the loop: it stats and opens the LVs' device nodes."""
        return await offload.run(self.d.target_path, self._volumes, rows, only)

    def _volumes(self, rows: list[LvRow], only: str | None = None) -> dict[str, Volume]:
        """Volumes from lvs rows: active LVs, thin pools left out, one volume per
        LV with an extent per segment (and stripe)."""
        vols: dict[str, Volume] = {}
        for row in rows:
            if len(row.attr) < 5 or row.attr[4] != "a" or row.attr[0] == "t":
                continue
            if only is not None and row.name != only:
                continue
            vol = vols.get(row.name)
            if vol is None:
                vol = Volume(row.name, type="block", path=f"{self.d.target_path}/{row.name}",
                             format="", uuid=row.uuid)
                if row.attr[0] == "s":
                    self.sparse.add(row.name)
                if row.origin and not row.origin.startswith("["):
                    vol.backing = Backing(f"{self.d.target_path}/{row.origin}", "")
                    blockdev.stat_backing(vol.backing)
                blockdev.stat_block(vol)
                vols[row.name] = vol
            vol.allocation = int(row.size)
            vol.extents += parse_extents(row)
        return vols

    async def refresh(self) -> Scan:
        volumes = await self._stat(await self._lvs())
        sizes = parse_vgs(await blockdev.run(
            VGS, "--separator", ":", "--noheadings", "--units", "b", "--unbuffered",
            "--nosuffix", "--options", "vg_size,vg_free", self.vg))
        return Scan(sizes or PoolSizes(), self.d.target_perms, volumes)

    def vol_path(self, name: str) -> str:
        return f"{self.d.target_path}/{name}"

    async def refresh_vol(self, vol: Volume) -> Volume:
        """libvirt never rereads a logical volume once known; a new one comes from lvs."""
        if vol.uuid is not None:
            return vol
        found = (await self._stat(await self._lvs(), only=vol.name)).get(vol.name)
        if found is None:
            raise VirError(ErrorCode.NO_STORAGE_VOL, "Storage volume not found: no storage "
                           f"vol with matching path '{vol.path}'", ErrorDomain.STORAGE)
        return found

    async def create_vol(self, vol: Volume, flags: int) -> None:
        """lvcreate (libvirt hands no flags to it), then the owner and mode asked."""
        await blockdev.run(*lvcreate_args(vol, self.vg))
        if vol.allocation is not None and vol.allocation != vol.capacity:
            self.sparse.add(vol.name)
        path = self.vol_path(vol.name)
        try:
            await offload.run(self.d.target_path, blockdev.apply_perms, path, vol.perms)
        except VirError:
            await self.delete_vol(Volume(vol.name, path=path), 0)
            raise

    async def create_vol_from(self, vol: Volume, source: Volume, flags: int) -> None:
        await blockdev.create_from(self, vol, source, flags)

    async def delete_vol(self, vol: Volume, flags: int) -> None:
        """lvremove; when that fails, deactivate the LV and try once more."""
        check_flags(flags, 0, "virStorageBackendLogicalDeleteVol")
        try:
            await blockdev.run(LVREMOVE, "-f", vol.path)
        except VirError:
            await blockdev.run(LVCHANGE, "-aln", vol.path)
            await blockdev.run(LVREMOVE, "-f", vol.path)
        self.sparse.discard(vol.name)

    async def wipe_vol(self, vol: Volume, algorithm: int) -> None:
        if vol.name in self.sparse:
            raise VirError(ErrorCode.NO_SUPPORT, "this function is not supported by the "
                           f"connection driver: logical volume '{vol.path}' is sparse, "
                           "volume wipe not supported", ErrorDomain.STORAGE)
        await blockdev.wipe(vol, algorithm)
