"""The storage driver: the pools, their configs on disk, and what clients ask of them.

Persistent definitions are ``etc/libvirt/storage/NAME.xml`` with autostart links
in ``autostart/``; a running pool leaves its live XML in ``run/libvirt/storage``
so that a restarted daemon knows it is still running. On the very first start
a ``default`` dir pool is made at ``var/lib/libvirt/images``, as virt-install
expects one to exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from daemon.paths import Paths
from drivers import offload
from drivers.events import EventBus
from drivers.files import write_atomic
from drivers.storage import transfer
from drivers.storage.pool import Pool, backend_class
from drivers.storage.pool_xml import (
    POOL_TYPES,
    PoolDef,
    clean_path,
    parse_pool,
    same_source,
)
from drivers.storage.schema import validate
from drivers.storage.vol_xml import Volume, parse_vol
from protocol.errors import ErrorCode, ErrorDomain, VirError, system_error

log = logging.getLogger(__name__)

# virStoragePoolEventLifecycleType
EVENT_DEFINED, EVENT_UNDEFINED, EVENT_STARTED, EVENT_STOPPED = 0, 1, 2, 3
EVENT_CREATED, EVENT_DELETED = 4, 5

# virConnectListAllStoragePoolsFlags
LIST_INACTIVE, LIST_ACTIVE = 1 << 0, 1 << 1
LIST_PERSISTENT, LIST_TRANSIENT = 1 << 2, 1 << 3
LIST_AUTOSTART, LIST_NO_AUTOSTART = 1 << 4, 1 << 5
LIST_TYPES_SHIFT = 6

# virStoragePoolCreateFlags and the build flags they stand for
CREATE_WITH_BUILD, CREATE_WITH_BUILD_OVERWRITE, CREATE_WITH_BUILD_NO_OVERWRITE = 1, 2, 4
BUILD_NO_OVERWRITE, BUILD_OVERWRITE = 1 << 2, 1 << 3

DEFINE_VALIDATE = 1 << 0  # virStoragePoolDefineFlags
VOL_CREATE_VALIDATE = 1 << 2  # virStorageVolCreateFlags

# virStorageVolResizeFlags, virStorageVolWipeAlgorithm
RESIZE_ALLOCATE, RESIZE_DELTA, RESIZE_SHRINK = 1, 2, 4
WIPE_TRIM, WIPE_LAST = 9, 10

DEFAULT_POOL = "default"


def _invalid(message: str) -> VirError:
    return VirError(ErrorCode.OPERATION_INVALID, f"Requested operation is not valid: {message}",
                    ErrorDomain.STORAGE)


def _no_pool(message: str) -> VirError:
    return VirError(ErrorCode.NO_STORAGE_POOL, f"Storage pool not found: {message}",
                    ErrorDomain.STORAGE)


def _no_vol(message: str) -> VirError:
    return VirError(ErrorCode.NO_STORAGE_VOL, f"Storage volume not found: {message}",
                    ErrorDomain.STORAGE)


def _failed(message: str) -> VirError:
    return VirError(ErrorCode.OPERATION_FAILED, f"operation failed: {message}",
                    ErrorDomain.STORAGE)


def _cleaned(path: str, clean: str) -> str:
    """libvirtd names the tidied path too in lookup errors when it differs."""
    return "" if path == clean else f" ({clean})"


class StorageDriver:
    def __init__(self, paths: Paths, bus: EventBus, peers: Mapping[str, Any] | None = None) -> None:
        self.paths = paths
        self.bus = bus
        # The other drivers by name: the QEMU driver knows which volumes guests hold.
        self.peers: Mapping[str, Any] = peers if peers is not None else {}
        dirs = paths.driver("storage")
        self.config_dir = dirs.config_dir
        self.autostart_dir = dirs.config_dir / "autostart"
        self.state_dir = dirs.state_dir
        self._pools: dict[str, Pool] = {}

    # -- start and stop ------------------------------------------------------------

    async def startup(self) -> None:
        first = not self.config_dir.exists()
        for d in (self.config_dir, self.autostart_dir, self.state_dir):
            d.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.config_dir.glob("*.xml")):
            self._load(path, persistent=True)
        # Pools are taken up side by side: a hung one costs one timeout in all.
        running = [(path, self._pools.get(path.stem) or self._load(path, persistent=False))
                   for path in sorted(self.state_dir.glob("*.xml"))]
        await asyncio.gather(*(self._reattach(pool, path) for path, pool in running if pool))
        if first:
            await self._make_default()
        for pool in list(self._pools.values()):  # in turn: one may be mounted in another
            if pool.autostart and not pool.active:
                await self._autostart(pool)

    async def _reattach(self, pool: Pool, path: Path) -> None:
        """A pool the last daemon left running: still running, or stopped. One
        that does not answer stays running, its volumes unknown until a refresh."""
        try:
            pool.use(parse_pool(path.read_text()))
            if not await pool.backend.is_active():
                log.info("storage pool %s is no longer active", pool.name)
                await self._deactivate(pool)
                return
            pool.active = True
            await self._refresh(pool)
        except VirError as e:
            if e.code == ErrorCode.OPERATION_TIMEOUT:
                pool.active = True
                log.warning("storage pool %s does not answer: %s", pool.name, e)
                return
            log.warning("storage pool %s is no longer usable: %s", pool.name, e)
            await self._deactivate(pool)
        except OSError as e:
            log.warning("storage pool %s is no longer usable: %s", pool.name, e)
            await self._deactivate(pool)

    async def _autostart(self, pool: Pool) -> None:
        try:
            await self.create(pool)
        except VirError as e:
            log.warning("cannot autostart storage pool %s: %s", pool.name, e)

    def _load(self, path: Path, persistent: bool) -> Pool | None:
        try:
            d = parse_pool(path.read_text())
        except (OSError, VirError) as e:
            log.warning("ignoring storage pool config %s: %s", path, e)
            return None
        pool = Pool(d, persistent)
        pool.autostart = persistent and (self.autostart_dir / path.name).exists()
        self._pools[d.name] = pool
        return pool

    async def _make_default(self) -> None:
        """The ``default`` pool virt-install looks for, built and set to autostart."""
        if DEFAULT_POOL in self._pools:
            return
        target = str(self.paths.lib_dir / "images")
        d = PoolDef("dir", DEFAULT_POOL, uuidlib.uuid4().bytes, target)
        pool = self._add(d, persistent=True)
        with contextlib.suppress(VirError):
            await pool.backend.build(0)
        self.set_autostart(pool, True)

    async def shutdown(self) -> None:
        """Pools keep running: their state files stay for the next start."""

    # -- lookups ------------------------------------------------------------------

    def lookup_by_name(self, name: str) -> Pool:
        pool = self._pools.get(name)
        if pool is None:
            raise _no_pool(f"no storage pool with matching name '{name}'")
        return pool

    def lookup_by_uuid(self, uuid: bytes, name: str | None = None) -> Pool:
        for pool in self._pools.values():
            if pool.uuid == uuid:
                return pool
        text = str(uuidlib.UUID(bytes=uuid))
        suffix = f" ({name})" if name is not None else ""
        raise _no_pool(f"no storage pool with matching uuid '{text}'{suffix}")

    def lookup_by_target_path(self, path: str) -> Pool:
        wanted = clean_path(path)
        for pool in self._pools.values():
            if pool.active and pool.live.target_path == wanted:
                return pool
        raise _no_pool(f"no storage pool with matching target path '{path}'"
                       + _cleaned(path, wanted))

    def list_pools(self, flags: int = 0) -> list[Pool]:
        pools = list(self._pools.values())
        if flags & (LIST_ACTIVE | LIST_INACTIVE) not in (0, LIST_ACTIVE | LIST_INACTIVE):
            pools = [p for p in pools if p.active == bool(flags & LIST_ACTIVE)]
        if flags & (LIST_PERSISTENT | LIST_TRANSIENT) not in (0, LIST_PERSISTENT | LIST_TRANSIENT):
            pools = [p for p in pools if p.persistent == bool(flags & LIST_PERSISTENT)]
        if flags & (LIST_AUTOSTART | LIST_NO_AUTOSTART) not in (
                0, LIST_AUTOSTART | LIST_NO_AUTOSTART):
            pools = [p for p in pools if p.autostart == bool(flags & LIST_AUTOSTART)]
        types = flags >> LIST_TYPES_SHIFT
        if types:
            wanted = {t for i, t in enumerate(POOL_TYPES) if types & (1 << i)}
            pools = [p for p in pools if p.live.type in wanted]
        return pools

    async def find_sources(self, kind: str, spec: str | None) -> str:
        if kind not in POOL_TYPES:
            raise VirError(ErrorCode.INTERNAL_ERROR,
                           f"internal error: unknown storage pool type {kind}",
                           ErrorDomain.STORAGE)
        return await backend_class(kind).find_sources(spec)

    # -- definitions ---------------------------------------------------------------

    def _check_duplicate(self, d: PoolDef, check_active: bool) -> Pool | None:
        """The pool ``d`` redefines, if any; libvirt's errors for clashes."""
        same = self._pools.get(d.name)
        if same is not None and same.uuid != d.uuid:
            raise _failed(f"pool '{same.name}' already exists with uuid "
                          f"{uuidlib.UUID(bytes=same.uuid)}")
        for pool in self._pools.values():
            if pool.uuid == d.uuid and pool.name != d.name:
                raise _failed(f"pool '{pool.name}' is already defined with uuid "
                              f"{uuidlib.UUID(bytes=pool.uuid)}")
        if same is not None and check_active and same.active:
            raise _failed(f"pool is already active as '{same.name}'")
        for pool in self._pools.values():
            if pool is not same and same_source(pool.live, d):
                raise _failed(f"Storage source conflict with pool: '{pool.name}'")
        return same

    def _add(self, d: PoolDef, persistent: bool) -> Pool:
        pool = Pool(d, persistent)
        self._pools[d.name] = pool
        if persistent:
            self._save(pool)
        return pool

    def _save(self, pool: Pool) -> None:
        assert pool.config is not None
        write_atomic(self.config_dir / f"{pool.name}.xml", pool.xml(inactive=True))

    def define_xml(self, xml: str, flags: int = 0) -> Pool:
        if flags & DEFINE_VALIDATE:
            validate(xml, "storagepool")
        d = parse_pool(xml)
        backend_class(d.type)
        same = self._check_duplicate(d, check_active=False)
        if same is None:
            pool = self._add(d, persistent=True)
        else:
            pool = same
            pool.config = d
            if not pool.active:
                pool.use(d)
            self._save(pool)
        self.bus.emit("storage-pool-lifecycle", pool, event=EVENT_DEFINED, detail=0)
        return pool

    async def create_xml(self, xml: str, flags: int = 0) -> Pool:
        d = parse_pool(xml)
        backend_class(d.type)
        if self._check_duplicate(d, check_active=True) is not None:
            raise _failed(f"pool '{d.name}' already exists")  # persistent and inactive
        pool = Pool(d, persistent=False)
        try:
            await self._build_for_create(pool, flags)
            await pool.backend.start()
            self._pools[d.name] = pool
            await self._activate(pool)
        except BaseException:
            self._pools.pop(d.name, None)
            raise
        self.bus.emit("storage-pool-lifecycle", pool, event=EVENT_STARTED, detail=0)
        return pool

    def undefine(self, pool: Pool) -> None:
        if pool.active:
            raise _invalid(f"storage pool '{pool.name}' is still active")
        self.set_autostart(pool, False)  # a transient pool is always active: persistent here
        with contextlib.suppress(FileNotFoundError):
            (self.config_dir / f"{pool.name}.xml").unlink()
        del self._pools[pool.name]
        self.bus.emit("storage-pool-lifecycle", pool, event=EVENT_UNDEFINED, detail=0)

    def set_autostart(self, pool: Pool, autostart: bool) -> None:
        if not pool.persistent:
            raise VirError(ErrorCode.INTERNAL_ERROR, "internal error: pool has no config file",
                           ErrorDomain.STORAGE)
        link = self.autostart_dir / f"{pool.name}.xml"
        if autostart:
            if not link.is_symlink():
                link.symlink_to(self.config_dir / f"{pool.name}.xml")
        else:
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
        pool.autostart = autostart

    # -- life cycle ------------------------------------------------------------------

    async def _build_for_create(self, pool: Pool, flags: int) -> None:
        if flags & CREATE_WITH_BUILD_OVERWRITE and flags & CREATE_WITH_BUILD_NO_OVERWRITE:
            raise VirError(ErrorCode.INVALID_ARG,
                           "Flags 'VIR_STORAGE_POOL_CREATE_WITH_BUILD_OVERWRITE' and "
                           "'VIR_STORAGE_POOL_CREATE_WITH_BUILD_NO_OVERWRITE' are mutually "
                           "exclusive", ErrorDomain.STORAGE)
        build = 0
        if flags & CREATE_WITH_BUILD_OVERWRITE:
            build = BUILD_OVERWRITE
        elif flags & CREATE_WITH_BUILD_NO_OVERWRITE:
            build = BUILD_NO_OVERWRITE
        if build or flags & CREATE_WITH_BUILD:
            await pool.backend.build(build)

    async def build(self, pool: Pool, flags: int = 0) -> None:
        if pool.active:
            raise _invalid(f"storage pool '{pool.name}' is already active")
        await pool.backend.build(flags)
        self.bus.emit("storage-pool-lifecycle", pool, event=EVENT_CREATED, detail=0)

    async def create(self, pool: Pool, flags: int = 0) -> None:
        if pool.active:
            raise _invalid(f"storage pool '{pool.name}' is already active")
        if pool.config is not None:
            pool.use(pool.config)
        await self._build_for_create(pool, flags)
        await pool.backend.start()
        await self._activate(pool)
        self.bus.emit("storage-pool-lifecycle", pool, event=EVENT_STARTED, detail=0)

    async def _activate(self, pool: Pool) -> None:
        pool.active = True
        try:
            await self._refresh(pool)
        except BaseException:
            pool.active = False
            with contextlib.suppress(VirError):
                await pool.backend.stop()
            raise
        write_atomic(self.state_dir / f"{pool.name}.xml", pool.xml())

    async def destroy(self, pool: Pool) -> None:
        if not pool.active:
            raise _invalid(f"storage pool '{pool.name}' is not active")
        self._no_jobs(pool)
        self._not_held(pool)
        await pool.backend.stop()
        await self._deactivate(pool)
        self.bus.emit("storage-pool-lifecycle", pool, event=EVENT_STOPPED, detail=0)

    async def _deactivate(self, pool: Pool) -> None:
        pool.active = False
        pool.scan.volumes.clear()
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / f"{pool.name}.xml").unlink()
        if not pool.persistent:
            self._pools.pop(pool.name, None)
        elif pool.config is not None:
            pool.use(pool.config)

    async def delete(self, pool: Pool, flags: int = 0) -> None:
        if pool.active:
            raise _invalid(f"storage pool '{pool.name}' is still active")
        await pool.backend.delete(flags)
        self.bus.emit("storage-pool-lifecycle", pool, event=EVENT_DELETED, detail=0)

    async def refresh(self, pool: Pool) -> None:
        self._need_active(pool)
        try:
            await self._refresh(pool)
        except VirError as e:
            if e.code == ErrorCode.OPERATION_TIMEOUT:
                raise  # a mount that hangs may answer again: the pool stays as it is
            await pool.backend.stop()
            await self._deactivate(pool)
            raise
        self.bus.emit("storage-pool-refresh", pool)

    async def _refresh(self, pool: Pool) -> None:
        pool.scan = await pool.backend.refresh()

    @staticmethod
    @contextlib.contextmanager
    def _job(pool: Pool, building: str | None = None,
             using: tuple[Pool, str] | None = None) -> Iterator[None]:
        """A long volume operation: the pool has a job, a new volume is being
        built, an existing one is in use, until it ends."""
        pool.jobs += 1
        if building is not None:
            pool.building.add(building)
        if using is not None:
            owner, name = using
            owner.in_use[name] = owner.in_use.get(name, 0) + 1
        try:
            yield
        finally:
            pool.jobs -= 1
            if building is not None:
                pool.building.discard(building)
            if using is not None:
                owner, name = using
                owner.in_use[name] -= 1
                if not owner.in_use[name]:
                    del owner.in_use[name]

    @staticmethod
    def _no_jobs(pool: Pool) -> None:
        if pool.jobs:
            raise VirError(ErrorCode.INTERNAL_ERROR,
                           f"internal error: pool '{pool.name}' has asynchronous jobs running.",
                           ErrorDomain.STORAGE)

    def _not_held(self, pool: Pool) -> None:
        """Refuse to stop a pool whose volumes running guests use.

        libvirtd has no such check (its storage driver does not know guests) and
        lets the pool go, leaving those guests on volumes nothing manages any
        more; here the destroy fails instead, in the words libvirt uses for a
        volume a job holds."""
        held = self._held(pool)
        if held:
            domain, names = next(iter(held.items()))
            raise _invalid(f"storage pool '{pool.name}' has volume '{names[0]}' in use by "
                           f"running domain '{domain}'")

    @staticmethod
    def _need_active(pool: Pool) -> None:
        if not pool.active:
            raise _invalid(f"storage pool '{pool.name}' is not active")

    # -- volumes -----------------------------------------------------------------------

    def volume(self, pool: Pool, name: str) -> Volume:
        self._need_active(pool)
        vol = pool.volumes.get(name)
        if vol is None:
            raise _no_vol(f"no storage vol with matching name '{name}'")
        return vol

    def lookup_vol_by_key(self, key: str) -> tuple[Pool, Volume]:
        for pool in self._pools.values():
            if pool.active:
                for vol in pool.volumes.values():
                    if vol.key == key:
                        return pool, vol
        raise _no_vol(f"no storage vol with matching key {key}")

    def lookup_vol_by_path(self, path: str) -> tuple[Pool, Volume]:
        wanted = clean_path(path)
        for pool in self._pools.values():
            if pool.active:
                for vol in pool.volumes.values():
                    if vol.path == wanted:
                        return pool, vol
        raise _no_vol(f"no storage vol with matching path '{path}'" + _cleaned(path, wanted))

    def _new_volume(self, pool: Pool, xml: str, flags: int,
                    need_capacity: bool = True) -> Volume:
        self._need_active(pool)
        if flags & VOL_CREATE_VALIDATE:
            validate(xml, "storagevol")
        vol = parse_vol(xml, need_capacity, pool.backend.vol_formats)
        if "/" in vol.name:
            raise _invalid(f"volume name '{vol.name}' cannot contain '/'")
        if vol.name in pool.volumes or vol.name in pool.building:
            if need_capacity:
                raise VirError(ErrorCode.STORAGE_VOL_EXIST,
                               f"storage volume '{vol.name}' exists already",
                               ErrorDomain.STORAGE)
            raise VirError(ErrorCode.INTERNAL_ERROR,  # libvirtd words it so for clones
                           f"internal error: storage volume name '{vol.name}' already in use.",
                           ErrorDomain.STORAGE)
        return vol

    async def create_vol(self, pool: Pool, xml: str, flags: int = 0) -> Volume:
        vol = self._new_volume(pool, xml, flags)
        if vol.allocation is None:
            vol.allocation = vol.capacity
        with self._job(pool, building=vol.name):
            await pool.backend.create_vol(vol, flags)
            return await self._record_new(pool, vol)

    async def create_vol_from(self, pool: Pool, xml: str, source_pool: Pool, source: Volume,
                              flags: int = 0) -> Volume:
        vol = self._new_volume(pool, xml, flags, need_capacity=False)
        vol.capacity = max(vol.capacity, source.capacity)
        if vol.allocation is None:
            vol.allocation = vol.capacity
        with self._job(pool, building=vol.name, using=(source_pool, source.name)):
            await pool.backend.create_vol_from(vol, source, flags)
            return await self._record_new(pool, vol)

    async def _record_new(self, pool: Pool, vol: Volume) -> Volume:
        """A new volume as the pool now holds it: the whole pool reread where
        volumes renumber, else the volume alone. Formats are what was asked
        until a pool refresh, as in libvirtd, whose other volumes stay as they were."""
        if not pool.backend.rescan_on_vol_change:
            return await self._settle_vol(pool, vol)
        formats = {name: v.format for name, v in pool.volumes.items()} | {vol.name: vol.format}
        await self._refresh(pool)
        for name, found in pool.volumes.items():
            found.format = formats.get(name, found.format)
        return pool.volumes[vol.name]

    async def _settle_vol(self, pool: Pool, vol: Volume) -> Volume:
        """Record a new volume as found on disk, and the pool's new free space.

        Like libvirtd, a volume shows the format, compat level, cluster size and
        features it was made with (or last probed) until a pool refresh probes it."""
        found = await pool.backend.refresh_vol(Volume(vol.name, path=pool.backend.vol_path(vol.name)))
        found.format, found.cluster_size = vol.format, vol.cluster_size
        found.compat, found.features = vol.compat, vol.features
        if vol.format == "dir":
            found.type = "dir"  # also a plain file cloned as dir (libvirt types it by format)
        pool.volumes[found.name] = found
        with contextlib.suppress(VirError):
            pool.scan.sizes = await pool.backend.sizes()
        return found

    async def delete_vol(self, pool: Pool, vol: Volume, flags: int = 0) -> None:
        if pool.in_use.get(vol.name):
            raise _invalid(f"volume '{vol.name}' is still in use.")
        await pool.backend.delete_vol(vol, flags)
        if pool.backend.rescan_on_vol_change:
            await self._refresh(pool)
            return
        pool.volumes.pop(vol.name, None)
        with contextlib.suppress(VirError):
            pool.scan.sizes = await pool.backend.sizes()

    async def resize_vol(self, pool: Pool, vol: Volume, capacity: int, flags: int = 0) -> None:
        """libvirt's checks and arithmetic around the backend's resize."""
        shrink = bool(flags & RESIZE_SHRINK)
        if flags & RESIZE_DELTA:
            capacity = (vol.capacity - min(capacity, vol.capacity) if shrink
                        else vol.capacity + capacity)
        if capacity < (vol.allocation or 0):
            raise VirError(ErrorCode.INVALID_ARG,
                           "invalid argument: can't shrink capacity below existing allocation",
                           ErrorDomain.STORAGE)
        if capacity < vol.capacity and not shrink:
            raise VirError(ErrorCode.INVALID_ARG,
                           "invalid argument: Can't shrink capacity below current capacity "
                           "unless shrink flag explicitly specified", ErrorDomain.STORAGE)
        allocate = bool(flags & RESIZE_ALLOCATE)
        if allocate and capacity - (vol.allocation or 0) > pool.scan.sizes.available:
            raise _failed("Not enough space left in storage pool")
        await pool.backend.resize_vol(vol, capacity, allocate, shrink)
        await self._settle_vol(pool, vol)

    async def wipe_vol(self, pool: Pool, vol: Volume, algorithm: int) -> None:
        if algorithm == WIPE_TRIM:
            raise VirError(ErrorCode.ARGUMENT_UNSUPPORTED,
                           "argument unsupported: 'trim' algorithm not supported",
                           ErrorDomain.STORAGE)
        if not 0 <= algorithm < WIPE_LAST:
            raise VirError(ErrorCode.INVALID_ARG,
                           f"invalid argument: wiping algorithm {algorithm} not supported",
                           ErrorDomain.STORAGE)
        with self._job(pool, using=(pool, vol.name)):
            await pool.backend.wipe_vol(vol, algorithm)
        await self._settle_vol(pool, vol)

    def _held(self, pool: Pool) -> dict[str, list[str]]:
        """Volumes of ``pool`` running guests use, by guest (the QEMU driver knows)."""
        qemu = self.peers.get("qemu")
        if qemu is None:
            return {}
        return qemu.volumes_in_use(pool.name, {v.path: v.name for v in pool.volumes.values()})

    @staticmethod
    async def check_stream(vol: Volume, upload: bool) -> None:
        """Fail an upload or download call itself when the volume cannot be
        opened, before its stream starts, as libvirtd does (off the loop: the
        volume may sit on a mount that hangs)."""
        await offload.run(os.path.dirname(vol.path), transfer.check_open, vol.path, upload)

    async def upload_vol(self, pool: Pool, vol: Volume, offset: int, length: int,
                         recv: Callable[[], Awaitable[Any]], sparse: bool = False) -> None:
        """The volume takes what the stream brings; it is in use (not deleted, its
        pool not destroyed) until the stream ends. A file no guest has open is
        replaced only by a complete upload (drivers/storage/transfer.py).

        However the stream ends, the whole pool is read again then, unless a
        volume is being built in it, as libvirtd does: the volume shows what
        its new contents are (an image's format and size), the others lose
        what only their creation had named."""
        replace = not any(vol.name in names for names in self._held(pool).values())
        try:
            with self._job(pool, using=(pool, vol.name)):
                await transfer.upload(vol.path, offset, length, recv, replace=replace,
                                      sparse=sparse)
        finally:
            if pool.active and not pool.building:
                with contextlib.suppress(VirError):
                    await self.refresh(pool)

    async def download_vol(self, pool: Pool, vol: Volume, offset: int, length: int,
                           sparse: bool, send: Callable[[bytes], Awaitable[None]],
                           send_hole: Callable[[int], Awaitable[Any]]) -> None:
        with self._job(pool, using=(pool, vol.name)):
            await transfer.download(vol.path, offset, length, sparse, send, send_hole)

    async def refresh_vol(self, pool: Pool, vol: Volume) -> Volume:
        """The volume re-read from disk (info and XML show real numbers)."""
        try:
            found = await pool.backend.refresh_vol(vol)
            # what only a pool refresh probes stays as it was
            found.cluster_size, found.compat = vol.cluster_size, vol.compat
            found.features = vol.features
        except FileNotFoundError:
            raise _no_vol(f"no storage vol with matching path '{vol.path}'") from None
        except OSError as e:
            raise system_error(f"cannot stat file '{vol.path}'", e, ErrorDomain.STORAGE) from None
        pool.volumes[vol.name] = found
        return found

