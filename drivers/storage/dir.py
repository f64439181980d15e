"""``dir`` pools: a directory of image files, made with qemu-img or plain files."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import stat
from collections.abc import Callable
from typing import Any, TypeVar

from drivers import offload
from drivers.storage import transfer
from drivers.storage.backend import Backend, Scan, check_flags
from drivers.storage.perms import Perms
from drivers.storage.pool_xml import PoolSizes
from drivers.storage.vol_xml import Backing, Volume
from protocol.errors import ErrorCode, ErrorDomain, VirError, system_error

T = TypeVar("T")

BUILD_NO_OVERWRITE = 1 << 2
BUILD_OVERWRITE = 1 << 3
VOL_CREATE_PREALLOC_METADATA = 1 << 0

#: libvirt's modes for what it creates when the XML names none.
DEFAULT_POOL_MODE = 0o711
DEFAULT_VOL_MODE = 0o600

#: scrub(1) patterns for virStorageVolWipeAlgorithm 1..8.
_SCRUB_PATTERNS = {1: "nnsa", 2: "dod", 3: "bsi", 4: "gutmann", 5: "schneier",
                   6: "pfitzner7", 7: "pfitzner33", 8: "random"}

#: Image headers worth asking qemu-img about; anything else is raw.
_MAGICS = (b"QFI\xfb", b"QED\x00", b"KDMV", b"conectix", b"<<< ", b"OOOM", b"WithoutFreeSpace",
           b"LUKS\xba\xbe")

#: Where an ISO 9660 volume descriptor says so.
_ISO_MAGIC, _ISO_MAGIC_AT = b"CD001", 32769

#: qcow2 features libvirt names, in its order, with qemu-img's key for each.
_QCOW2_FEATURES = (("lazy_refcounts", "lazy-refcounts"), ("extended_l2", "extended-l2"))


def _system_error(message: str, err: OSError) -> VirError:
    return system_error(message, err, ErrorDomain.STORAGE)


def _stamp(ns: int) -> str:
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


async def qemu_img(*args: str, timeout: float | None = None) -> str:
    """Run qemu-img; its own message becomes the error, as libvirt reports it.
    ``timeout``: offload.TIMEOUT unless it copies data."""
    binary = shutil.which("qemu-img") or "qemu-img"
    proc = await asyncio.create_subprocess_exec(
        binary, *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await offload.communicate(proc, (binary, *args), timeout=timeout)
    if proc.returncode != 0:
        text = err.decode(errors="replace")
        raise VirError(ErrorCode.INTERNAL_ERROR,
                       f"internal error: Child process ({binary} {' '.join(args)}) "
                       f"unexpected exit status {proc.returncode}" + (f": {text}" if text else ""),
                       ErrorDomain.NONE)
    return out.decode()


def _target_exists(path: str) -> VirError:
    return VirError(ErrorCode.OPERATION_INVALID,
                    f"Requested operation is not valid: volume target path '{path}' "
                    "already exists", ErrorDomain.STORAGE)


def _sniff(path: str) -> str:
    """"image" when the file starts like a format qemu-img should read, "iso"
    for an ISO 9660 image (which libvirt's probe names and qemu-img calls raw),
    else "raw"."""
    with open(path, "rb") as f:
        if f.read(32).startswith(_MAGICS):
            return "image"
        f.seek(_ISO_MAGIC_AT)
        return "iso" if f.read(len(_ISO_MAGIC)) == _ISO_MAGIC else "raw"


def _stat_backing(back: Backing) -> None:
    """A backing file's own stat in the volume XML, when reachable (blocking)."""
    with contextlib.suppress(OSError):
        st = os.stat(back.path)
        back.perms = Perms(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
        back.timestamps = (_stamp(st.st_atime_ns), _stamp(st.st_mtime_ns),
                           _stamp(st.st_ctime_ns))


def _check_backing(vol: Volume, target: str, flags: int) -> None:
    """libvirt's refusals of a backing store, per the way the volume gets made."""
    assert vol.backing is not None
    if vol.format in ("dir", "raw"):
        kind = "directories" if vol.format == "dir" else "raw"
        raise VirError(ErrorCode.NO_SUPPORT,
                       "this function is not supported by the connection driver: backing "
                       f"storage not supported for {kind} volumes", ErrorDomain.STORAGE)
    if vol.format == "iso":  # made by qemu-img as raw
        raise VirError(ErrorCode.CONFIG_UNSUPPORTED, "unsupported configuration: cannot set "
                       "backing store for raw volume", ErrorDomain.STORAGE)
    if flags & VOL_CREATE_PREALLOC_METADATA:
        raise VirError(ErrorCode.CONFIG_UNSUPPORTED, "unsupported configuration: metadata "
                       "preallocation conflicts with backing store", ErrorDomain.STORAGE)
    try:
        os.stat(os.path.join(target, vol.backing.path))  # a relative path is the pool's
    except OSError as e:
        raise _system_error(f"inaccessible backing store volume {vol.backing.path}", e) from None


def _check_prealloc(vol: Volume, flags: int) -> None:
    if flags & VOL_CREATE_PREALLOC_METADATA and vol.format == "raw":
        raise VirError(ErrorCode.CONFIG_UNSUPPORTED,
                       "unsupported configuration: metadata preallocation is not supported "
                       "for raw volumes", ErrorDomain.STORAGE)


def _check_image(vol: Volume, flags: int) -> None:
    """What libvirt refuses before handing a volume to qemu-img: the options only
    qcow2 has."""
    for given, what in ((flags & VOL_CREATE_PREALLOC_METADATA, "metadata preallocation"),
                        (vol.compat is not None, "compatibility option"),
                        (vol.features is not None, "format features")):
        if given and vol.format != "qcow2":
            raise VirError(ErrorCode.CONFIG_UNSUPPORTED,
                           f"unsupported configuration: {what} only available with qcow2",
                           ErrorDomain.STORAGE)


def _apply_image_info(vol: Volume, info: dict[str, Any]) -> None:
    """What libvirt's own header probe learns, from qemu-img's answer: a
    cluster size and features for qcow2 alone, the newer qcow2 level named, a
    LUKS container shown as raw data behind encryption."""
    fmt = info.get("format", "raw")
    specific = info.get("format-specific", {}).get("data", {})
    if fmt == "luks" or specific.get("encrypt", {}).get("format") == "luks":
        vol.encryption = "luks"
    if fmt == "raw":
        return  # a file qemu-img calls raw keeps its byte size (qemu counts whole sectors)
    vol.format = "raw" if fmt == "luks" else fmt
    vol.capacity = int(info.get("virtual-size", vol.capacity))
    if fmt == "qcow2":
        vol.cluster_size = int(info["cluster-size"]) if "cluster-size" in info else None
        if specific.get("compat") == "1.1":
            vol.compat = "1.1"
            vol.features = tuple(name for name, key in _QCOW2_FEATURES if specific.get(key))
    backing = info.get("full-backing-filename") or info.get("backing-filename")
    if backing:
        vol.backing = Backing(backing, info.get("backing-filename-format", "raw"))


class DirBackend(Backend):
    type = "dir"

    @property
    def target(self) -> str:
        return self.d.target_path

    async def _fs(self, func: Callable[..., T], *args: Any) -> T:
        """Blocking file system work on the pool, off the loop and bounded in time."""
        return await offload.run(self.target, func, *args)

    async def _discard(self, path: str) -> None:
        """Remove what a failed creation left, if it can be."""
        with contextlib.suppress(OSError, VirError):
            await self._fs(os.unlink, path)

    async def build(self, flags: int) -> None:
        """mkdir with the configured mode and owner. The overwrite flags ask for a
        file system, which a directory has no device for: libvirtd's error, after
        the directory is made, as there."""
        check_flags(flags, BUILD_OVERWRITE | BUILD_NO_OVERWRITE,
                    "virStorageBackendFileSystemBuild")
        if flags & BUILD_OVERWRITE and flags & BUILD_NO_OVERWRITE:
            raise VirError(ErrorCode.INVALID_ARG,
                           "Flags 'VIR_STORAGE_POOL_BUILD_OVERWRITE' and "
                           "'VIR_STORAGE_POOL_BUILD_NO_OVERWRITE' are mutually exclusive",
                           ErrorDomain.STORAGE)
        await self._fs(self._mkdir)
        if flags:
            raise VirError(ErrorCode.OPERATION_INVALID,
                           "Requested operation is not valid: No source device specified "
                           f"when formatting pool '{self.d.name}'", ErrorDomain.STORAGE)

    def _mkdir(self) -> None:
        perms = self.d.target_perms
        mode = perms.mode if perms.mode is not None else DEFAULT_POOL_MODE
        try:
            os.makedirs(os.path.dirname(self.target) or "/", exist_ok=True)
            try:
                os.mkdir(self.target, mode)
            except FileExistsError:
                if not os.path.isdir(self.target):
                    raise
                if perms.mode is None:
                    mode = stat.S_IMODE(os.stat(self.target).st_mode)
            os.chmod(self.target, mode)
            if perms.owner is not None or perms.group is not None:
                os.chown(self.target, perms.owner if perms.owner is not None else -1,
                         perms.group if perms.group is not None else -1)
        except OSError as e:
            raise _system_error(f"cannot create path '{self.target}'", e) from None

    async def start(self) -> None:
        await self._fs(self._check_dir)

    def _check_dir(self) -> None:
        if not os.path.isdir(self.target):
            code = errno.ENOENT if not os.path.exists(self.target) else errno.ENOTDIR
            raise system_error(f"cannot open directory '{self.target}'", OSError(code, ""))

    async def delete(self, flags: int) -> None:
        check_flags(flags, 0, "virStorageBackendDeleteLocal")
        try:
            await self._fs(os.rmdir, self.target)
        except OSError as e:
            raise _system_error(f"failed to remove pool '{self.target}'", e) from None

    async def sizes(self) -> PoolSizes:
        try:
            fs = await self._fs(os.statvfs, self.target)
        except OSError as e:
            raise _system_error(f"cannot statvfs path '{self.target}'", e) from None
        capacity = fs.f_frsize * fs.f_blocks
        available = fs.f_frsize * fs.f_bfree
        return PoolSizes(capacity, capacity - available, available)

    async def refresh(self) -> Scan:
        perms, entries = await self._fs(self._entries)
        scan = Scan(await self.sizes(), perms)
        for name, path in entries:
            try:
                vol = await self.refresh_vol(Volume(name, path=path))
            except OSError:
                continue
            except VirError as e:
                if e.code == ErrorCode.OPERATION_TIMEOUT:
                    raise  # the pool hangs: the other entries would too
                continue
            scan.volumes[vol.name] = vol
        return scan

    def _entries(self) -> tuple[Perms, list[tuple[str, str]]]:
        """The target's permissions and the names and paths of its files and
        directories (blocking). An upload's new file is no volume; one no
        upload writes any more is removed."""
        try:
            st = os.stat(self.target)
            entries = sorted(os.scandir(self.target), key=lambda e: e.name)
        except OSError as e:
            raise _system_error(f"cannot open directory '{self.target}'", e) from None
        found = []
        for entry in entries:
            if transfer.is_upload_file(entry.name):
                if transfer.is_stale_upload(entry.path):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                continue
            with contextlib.suppress(OSError):
                if entry.is_file() or entry.is_dir():
                    found.append((entry.name, entry.path))
        return Perms(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid), found

    def vol_path(self, name: str) -> str:
        return os.path.join(self.target, name)

    async def refresh_vol(self, vol: Volume) -> Volume:
        found, kind = await self._fs(self._stat_vol, vol)
        if kind == "image":
            info = json.loads(await qemu_img("info", "--output=json", "-U", found.path))
            _apply_image_info(found, info)
            if found.backing is not None:
                await self._fs(_stat_backing, found.backing)
        elif kind == "iso" or kind == "raw" and vol.format == "iso":
            # libvirt names what it made as iso so until a pool refresh probes it
            found.format = "iso"
        return found

    def _stat_vol(self, vol: Volume) -> tuple[Volume, str]:
        """The volume as its stat shows it, and what its first bytes say:
        "image", "iso", "raw", or "dir" when no header is read (blocking)."""
        path = vol.path or self.vol_path(vol.name)
        st = os.stat(path)
        found = Volume(vol.name, path=path)
        found.perms = Perms(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
        found.timestamps = (_stamp(st.st_atime_ns), _stamp(st.st_mtime_ns), _stamp(st.st_ctime_ns))
        if stat.S_ISDIR(st.st_mode):
            # libvirt gives a directory no size at all, whatever its blocks
            found.type = found.format = "dir"
            found.allocation = 0
            return found, "dir"
        found.allocation = st.st_blocks * 512
        found.physical = found.capacity = st.st_size
        if vol.format == "dir":
            # a file cloned from a directory volume: libvirt keeps it a directory
            # volume, which it reads no header of, until a pool refresh
            found.type = found.format = "dir"
            return found, "dir"
        return found, _sniff(path)

    async def create_vol(self, vol: Volume, flags: int) -> None:
        path = self.vol_path(vol.name)
        if await self._fs(os.path.lexists, path):
            raise _target_exists(path)
        if vol.format == "dir":
            check_flags(flags, 0, "createFileDir")
            if vol.backing is not None:
                await self._fs(_check_backing, vol, self.target, flags)
            await self._fs(self._create_dir, vol, path)
            return
        if vol.format == "ploop":
            check_flags(flags, 0, "storageBackendCreatePloop")
            raise VirError(ErrorCode.INTERNAL_ERROR, "internal error: unable to find ploop, "
                           "please install ploop tools", ErrorDomain.STORAGE)
        if vol.format == "raw":
            _check_prealloc(vol, flags)
        else:
            _check_image(vol, flags)
        if vol.backing is not None:
            await self._fs(_check_backing, vol, self.target, flags)
        if vol.format == "raw":
            await offload.run_long(self.target, self._create_raw, vol, path)
        else:
            # qemu-img makes or refuses every other format, as with libvirt
            await self._create_image(vol, path, flags)
        try:
            await self._fs(self._apply_perms, vol, path)
        except OSError as e:
            await self._discard(path)
            raise _system_error(f"cannot set permissions of '{path}'", e) from None

    async def create_vol_from(self, vol: Volume, source: Volume, flags: int) -> None:
        """A copy of ``source`` in ``vol``'s format, grown to its capacity; sparse.

        Raw data is copied into a plain file, also for a clone in format dir; a
        directory holds no data (libvirt copies its size, 0), so its raw clone
        is an empty file of the clone's capacity."""
        plain = vol.format in ("raw", "dir") and (source.type != "file" or source.format == "raw")
        if plain:
            _check_prealloc(vol, flags)
        else:
            _check_image(vol, flags)  # libvirt converts with qemu-img
        path = self.vol_path(vol.name)
        if await self._fs(os.path.lexists, path):
            raise _target_exists(path)
        args: list[str] = []  # the qemu-img command that fills the new volume, if any
        if plain and source.type == "dir":
            await offload.run_long(self.target, self._create_raw, vol, path)
        elif plain:
            # Into a file allocated as asked; zeros are written (-S 0) unless the
            # volume is to be sparse, as libvirt copies.
            await offload.run_long(self.target, self._create_raw, vol, path)
            sparse = [] if (vol.allocation or 0) >= vol.capacity else ["-S", "4k"]
            args = ["convert", "-n", *(sparse or ["-S", "0"]), "-f", source.format,
                    "-O", "raw"]
        else:
            args = ["convert", "-f", source.format, "-O", vol.format]
            options = self._image_options(vol, flags)
            if options:
                args += ["-o", ",".join(options)]
        try:
            if args:
                await qemu_img(*args, source.path, path, timeout=offload.LONG_TIMEOUT)
            if not plain and vol.capacity > source.capacity:
                await qemu_img("resize", "-f", vol.format, path, str(vol.capacity))
            await self._fs(self._apply_perms, vol, path)
        except BaseException:
            await self._discard(path)
            raise

    @staticmethod
    def _image_options(vol: Volume, flags: int) -> list[str]:
        """qemu-img's -o list, in libvirt's order and words."""
        options = []
        if flags & VOL_CREATE_PREALLOC_METADATA:
            # data too when the whole capacity is to be allocated (whole KiB, as libvirt)
            full = ((vol.allocation or 0) + 1023) // 1024 >= (vol.capacity + 1023) // 1024
            options.append("preallocation=falloc" if full else "preallocation=metadata")
        if vol.compat is not None:
            options.append(f"compat={vol.compat}")
        elif vol.format == "qcow2":
            options.append("compat=0.10")
        if vol.cluster_size:
            options.append(f"cluster_size={vol.cluster_size}")
        for name in vol.features or ():
            if vol.compat == "0.10":
                quoted = name if name == "lazy_refcounts" else f"'{name}'"  # libvirt's words
                raise VirError(ErrorCode.CONFIG_UNSUPPORTED,
                               f"unsupported configuration: {quoted} not supported with "
                               f"compat level {vol.compat}", ErrorDomain.STORAGE)
            options.append(name if name == "lazy_refcounts" else f"{name}=on")
        return options

    @staticmethod
    def _create_dir(vol: Volume, path: str) -> None:
        """A directory volume, with the volume's mode (as libvirt's, 0600 by default)."""
        perms = vol.perms
        mode = perms.mode if perms.mode is not None else DEFAULT_VOL_MODE
        try:
            os.mkdir(path)
            os.chmod(path, mode)
            if perms.owner is not None or perms.group is not None:
                os.chown(path, perms.owner if perms.owner is not None else -1,
                         perms.group if perms.group is not None else -1)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.rmdir(path)
            raise _system_error(f"cannot create path '{path}'", e) from None

    def _create_raw(self, vol: Volume, path: str) -> None:
        """ftruncate to the capacity, then allocate; each step fails with
        libvirt's own words for it."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, DEFAULT_VOL_MODE)
        except FileExistsError:
            raise _target_exists(path) from None
        except OSError as e:
            raise _system_error(f"Failed to create file '{path}'", e) from None
        step = "extend file"
        try:
            try:
                os.ftruncate(fd, vol.capacity)
                alloc = vol.allocation or 0  # beyond the capacity, the file grows (libvirt)
                if alloc:
                    step = f"allocate {alloc} bytes in file"
                    os.posix_fallocate(fd, 0, alloc)
            finally:
                os.close(fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise _system_error(f"cannot {step} '{path}'", e) from None

    async def _create_image(self, vol: Volume, path: str, flags: int) -> None:
        options = self._image_options(vol, flags)
        args = ["create", "-f", "raw" if vol.format == "iso" else vol.format]
        if vol.backing is not None:
            args += ["-b", vol.backing.path]
            options.insert(0, f"backing_fmt={vol.backing.format}")
        if options:
            args += ["-o", ",".join(options)]
        size_kib = (vol.capacity + 1023) // 1024
        # preallocation writes the data, which takes its time
        timeout = offload.LONG_TIMEOUT if flags & VOL_CREATE_PREALLOC_METADATA else None
        try:
            await qemu_img(*args, path, f"{size_kib}K", timeout=timeout)
        except BaseException:
            await self._discard(path)
            raise

    def _apply_perms(self, vol: Volume, path: str) -> None:
        perms = vol.perms
        os.chmod(path, perms.mode if perms.mode is not None else DEFAULT_VOL_MODE)
        if perms.owner is not None or perms.group is not None:
            os.chown(path, perms.owner if perms.owner is not None else -1,
                     perms.group if perms.group is not None else -1)

    async def resize_vol(self, vol: Volume, capacity: int, allocate: bool, shrink: bool) -> None:
        if vol.format != "raw":
            if allocate:
                raise VirError(ErrorCode.OPERATION_UNSUPPORTED,
                               "Operation not supported: preallocate is only supported for "
                               "raw type volume", ErrorDomain.STORAGE)
            # no -f: libvirt lets qemu-img probe, and its errors show that command
            extra = ["--shrink"] if shrink else []
            await qemu_img("resize", *extra, vol.path, str(capacity))
            return
        await offload.run_long(self.target, self._resize_raw, vol.path, capacity, allocate)

    @staticmethod
    def _resize_raw(path: str, capacity: int, allocate: bool) -> None:
        try:
            with open(path, "r+b") as f:
                if allocate:
                    os.posix_fallocate(f.fileno(), 0, capacity)
                os.ftruncate(f.fileno(), capacity)
        except OSError as e:
            raise system_error(f"Failed to truncate file '{path}'", e) from None

    async def wipe_vol(self, vol: Volume, algorithm: int) -> None:
        # The volume is opened first whatever the algorithm, so what cannot be
        # written (a directory) fails alike, as in libvirt.
        await offload.run_long(self.target, self._wipe, vol.path, algorithm == 0,
                               vol.allocation or 0)
        if algorithm == 0:
            self._wiped(vol)
            return
        # The other patterns are scrub(1)'s, as in libvirt.
        scrub = shutil.which("scrub")
        if scrub is None:
            raise system_error("Cannot find 'scrub' in path", FileNotFoundError(errno.ENOENT, ""))
        argv = (scrub, "-f", "-p", _SCRUB_PATTERNS[algorithm], vol.path)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        _, err = await offload.communicate(proc, argv, timeout=offload.LONG_TIMEOUT)
        if proc.returncode != 0:
            raise VirError(ErrorCode.INTERNAL_ERROR,
                           f"internal error: Child process ({scrub} -f -p "
                           f"{_SCRUB_PATTERNS[algorithm]} {vol.path}) unexpected exit status "
                           f"{proc.returncode}: {err.decode().strip()}")
        self._wiped(vol)

    @staticmethod
    def _wiped(vol: Volume) -> None:
        """libvirtd records what it wiped as plain data: raw, its image features
        gone (its compat level and cluster size stay until a pool refresh)."""
        if vol.type == "file":
            vol.format, vol.features = "raw", None

    @staticmethod
    def _wipe(path: str, zero: bool, allocation: int) -> None:
        """A sparse file becomes all holes; a dense one gets zeros over as many
        bytes as it had allocated (as libvirt's zero algorithm writes, which can
        round the file up to whole blocks). Without ``zero`` the volume is only
        opened, to fail where libvirt does."""
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as e:
            raise _system_error(f"Failed to open storage volume with path '{path}'", e) from None
        try:
            st = os.fstat(fd)
            if not zero:
                return
            if stat.S_ISREG(st.st_mode) and st.st_blocks < st.st_size // 512:
                for size in (0, st.st_size):
                    try:
                        os.ftruncate(fd, size)
                    except OSError as e:
                        raise _system_error(f"Failed to truncate volume with path '{path}' "
                                            f"to {size} bytes", e) from None
                return
            chunk = bytes(1 << 20)
            left = allocation
            while left > 0:
                size = min(left, len(chunk))
                try:
                    left -= os.write(fd, chunk[:size])
                except OSError as e:
                    raise _system_error(f"Failed to write {size} bytes to storage volume "
                                        f"with path '{path}'", e) from None
            try:
                os.fdatasync(fd)
            except OSError as e:
                raise _system_error(f"cannot sync data to volume with path '{path}'", e) from None
        finally:
            os.close(fd)

    async def delete_vol(self, vol: Volume, flags: int) -> None:
        await self._fs(self._remove, vol)

    @staticmethod
    def _remove(vol: Volume) -> None:
        # what the path is now decides, as in libvirt (a clone of a directory
        # volume is a file, its volume type dir until a pool refresh)
        is_dir = os.path.isdir(vol.path)
        try:
            if is_dir:
                os.rmdir(vol.path)
            else:
                os.unlink(vol.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            what = "remove directory" if is_dir else "unlink file"
            raise _system_error(f"cannot {what} '{vol.path}'", e) from None

