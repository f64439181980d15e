"""``dir`` pools: a directory of image files, made with qemu-img or plain files."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import stat

from drivers.storage.backend import Backend, Scan, check_flags
from drivers.storage.perms import Perms
from drivers.storage.pool_xml import PoolSizes
from drivers.storage.vol_xml import Backing, Volume
from protocol.errors import ErrorCode, ErrorDomain, VirError

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
_MAGICS = (b"QFI\xfb", b"QED\x00", b"KDMV", b"conectix", b"<<< ", b"OOOM", b"WithoutFreeSpace")

#: Formats qemu-img makes for us (libvirt hands these to it too).
_QEMU_IMG_FORMATS = frozenset({"qcow2", "qed", "vmdk", "vpc", "vdi", "qcow", "cow", "vhd"})


def _system_error(message: str, err: OSError) -> VirError:
    return VirError(ErrorCode.SYSTEM_ERROR, f"{message}: {os.strerror(err.errno or 0)}",
                    ErrorDomain.STORAGE)


def _stamp(ns: int) -> str:
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


async def qemu_img(*args: str) -> str:
    """Run qemu-img; its own message becomes the error, as libvirt reports it."""
    binary = shutil.which("qemu-img") or "qemu-img"
    proc = await asyncio.create_subprocess_exec(
        binary, *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise VirError(ErrorCode.INTERNAL_ERROR,
                       f"internal error: Child process ({binary} {' '.join(args)}) "
                       f"unexpected exit status {proc.returncode}: {err.decode().strip()}",
                       ErrorDomain.NONE)
    return out.decode()


def _target_exists(path: str) -> VirError:
    return VirError(ErrorCode.OPERATION_INVALID,
                    f"Requested operation is not valid: volume target path '{path}' "
                    "already exists", ErrorDomain.STORAGE)


def _has_image_header(path: str) -> bool:
    """Whether the file starts like an image format qemu-img should read (else raw)."""
    with open(path, "rb") as f:
        return f.read(32).startswith(_MAGICS)


def _backing(path: str, fmt: str) -> Backing:
    """A backing file as the volume XML shows it, with its own stat when reachable."""
    back = Backing(path, fmt)
    with contextlib.suppress(OSError):
        st = os.stat(path)
        back.perms = Perms(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
        back.timestamps = (_stamp(st.st_atime_ns), _stamp(st.st_mtime_ns),
                           _stamp(st.st_ctime_ns))
    return back


def _check_backing(vol: Volume) -> None:
    assert vol.backing is not None
    if vol.format == "raw":
        raise VirError(ErrorCode.NO_SUPPORT,
                       "this function is not supported by the connection driver: backing "
                       "storage not supported for raw volumes", ErrorDomain.STORAGE)
    if not os.path.exists(vol.backing.path):
        raise VirError(ErrorCode.SYSTEM_ERROR,
                       f"inaccessible backing store volume {vol.backing.path}: "
                       f"{os.strerror(errno.ENOENT)}", ErrorDomain.STORAGE)


def _check_prealloc(vol: Volume, flags: int) -> None:
    if flags & VOL_CREATE_PREALLOC_METADATA and vol.format == "raw":
        raise VirError(ErrorCode.CONFIG_UNSUPPORTED,
                       "unsupported configuration: metadata preallocation is not supported "
                       "for raw volumes", ErrorDomain.STORAGE)


class DirBackend(Backend):
    type = "dir"

    @property
    def target(self) -> str:
        return self.d.target_path

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
        self._mkdir()
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
        if not os.path.isdir(self.target):
            err = OSError(2 if not os.path.exists(self.target) else 20, "")
            raise _system_error(f"cannot open directory '{self.target}'", err)

    async def delete(self, flags: int) -> None:
        check_flags(flags, 0, "virStorageBackendDeleteLocal")
        try:
            os.rmdir(self.target)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise _system_error(f"failed to remove pool '{self.target}'", e) from None

    async def sizes(self) -> PoolSizes:
        try:
            fs = os.statvfs(self.target)
        except OSError as e:
            raise _system_error(f"cannot statvfs path '{self.target}'", e) from None
        capacity = fs.f_frsize * fs.f_blocks
        available = fs.f_frsize * fs.f_bfree
        return PoolSizes(capacity, capacity - available, available)

    async def refresh(self) -> Scan:
        try:
            st = os.stat(self.target)
            entries = sorted(os.scandir(self.target), key=lambda e: e.name)
        except OSError as e:
            raise _system_error(f"cannot open directory '{self.target}'", e) from None
        perms = Perms(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
        scan = Scan(await self.sizes(), perms)
        for entry in entries:
            with contextlib.suppress(OSError, VirError):
                if entry.is_file() or entry.is_dir():
                    vol = await self.refresh_vol(Volume(entry.name, path=entry.path))
                    scan.volumes[vol.name] = vol
        return scan

    def vol_path(self, name: str) -> str:
        return os.path.join(self.target, name)

    async def refresh_vol(self, vol: Volume) -> Volume:
        path = vol.path or self.vol_path(vol.name)
        st = os.stat(path)
        found = Volume(vol.name, path=path)
        found.perms = Perms(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
        found.timestamps = (_stamp(st.st_atime_ns), _stamp(st.st_mtime_ns), _stamp(st.st_ctime_ns))
        found.allocation = st.st_blocks * 512
        if stat.S_ISDIR(st.st_mode):
            found.type = found.format = "dir"
            found.capacity = found.physical = st.st_size
            return found
        found.physical = found.capacity = st.st_size
        if _has_image_header(path):
            info = json.loads(await qemu_img("info", "--output=json", "-U", path))
            found.format = info.get("format", "raw")
            found.capacity = int(info.get("virtual-size", st.st_size))
            if "cluster-size" in info:
                found.cluster_size = int(info["cluster-size"])
            specific = info.get("format-specific", {}).get("data", {})
            if found.format == "qcow2" and specific.get("compat") == "1.1":
                found.compat = "1.1"  # libvirt names only the newer level
                found.lazy_refcounts = bool(specific.get("lazy-refcounts"))
            backing = info.get("full-backing-filename") or info.get("backing-filename")
            if backing:
                found.backing = _backing(backing, info.get("backing-filename-format", "raw"))
        return found

    async def create_vol(self, vol: Volume, flags: int) -> None:
        path = self.vol_path(vol.name)
        if os.path.lexists(path):
            raise _target_exists(path)
        _check_prealloc(vol, flags)
        if vol.backing is not None:
            _check_backing(vol)
        if vol.format == "raw":
            await asyncio.to_thread(self._create_raw, vol, path)
        elif vol.format in _QEMU_IMG_FORMATS:
            await self._create_image(vol, path, flags)
        else:
            raise VirError(ErrorCode.OPERATION_UNSUPPORTED,
                           f"Operation not supported: format of volume '{vol.name}' "
                           f"cannot be created: {vol.format}", ErrorDomain.STORAGE)
        try:
            self._apply_perms(vol, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise _system_error(f"cannot set permissions of '{path}'", e) from None

    async def create_vol_from(self, vol: Volume, source: Volume, flags: int) -> None:
        """A copy of ``source`` in ``vol``'s format, grown to its capacity; sparse."""
        _check_prealloc(vol, flags)
        path = self.vol_path(vol.name)
        if os.path.lexists(path):
            raise _target_exists(path)
        if vol.format == "raw":
            # Into a file allocated as asked; zeros are written (-S 0) unless the
            # volume is to be sparse, as libvirt copies.
            await asyncio.to_thread(self._create_raw, vol, path)
            sparse = [] if (vol.allocation or 0) >= vol.capacity else ["-S", "4k"]
            args = ["convert", "-n", *(sparse or ["-S", "0"]), "-f", source.format,
                    "-O", "raw"]
        else:
            args = ["convert", "-f", source.format, "-O", vol.format]
            options = self._image_options(vol, flags)
            if options:
                args += ["-o", ",".join(options)]
        try:
            await qemu_img(*args, source.path, path)
            if vol.format != "raw" and vol.capacity > source.capacity:
                await qemu_img("resize", "-f", vol.format, path, str(vol.capacity))
            self._apply_perms(vol, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise

    @staticmethod
    def _image_options(vol: Volume, flags: int) -> list[str]:
        options = []
        if vol.format == "qcow2":
            options.append(f"compat={vol.compat or '0.10'}")
            if vol.lazy_refcounts:
                options.append("lazy_refcounts=on")
        if flags & VOL_CREATE_PREALLOC_METADATA:
            # libvirt asks for data too when the whole capacity is to be allocated.
            full = (vol.allocation or 0) // 1024 >= (vol.capacity + 1023) // 1024
            options.append("preallocation=falloc" if full else "preallocation=metadata")
        return options

    def _create_raw(self, vol: Volume, path: str) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, DEFAULT_VOL_MODE)
        except FileExistsError:
            raise _target_exists(path) from None
        except OSError as e:
            raise _system_error(f"cannot create path '{path}'", e) from None
        step = "extend"
        try:
            try:
                os.ftruncate(fd, vol.capacity)
                alloc = min(vol.allocation or 0, vol.capacity)
                if alloc:
                    step = "fill"
                    os.posix_fallocate(fd, 0, alloc)
            finally:
                os.close(fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise _system_error(f"cannot {step} file '{path}'", e) from None

    async def _create_image(self, vol: Volume, path: str, flags: int) -> None:
        options = self._image_options(vol, flags)
        args = ["create", "-f", vol.format]
        if vol.backing is not None:
            args += ["-b", vol.backing.path]
            options.insert(0, f"backing_fmt={vol.backing.format}")
        if options:
            args += ["-o", ",".join(options)]
        size_kib = (vol.capacity + 1023) // 1024
        try:
            await qemu_img(*args, path, f"{size_kib}K")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
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
            extra = ["--shrink"] if shrink else []
            await qemu_img("resize", *extra, "-f", vol.format, vol.path, str(capacity))
            return
        await asyncio.to_thread(self._resize_raw, vol.path, capacity, allocate)

    @staticmethod
    def _resize_raw(path: str, capacity: int, allocate: bool) -> None:
        try:
            with open(path, "r+b") as f:
                if allocate:
                    os.posix_fallocate(f.fileno(), 0, capacity)
                os.ftruncate(f.fileno(), capacity)
        except OSError as e:
            raise VirError(ErrorCode.SYSTEM_ERROR,
                           f"Failed to truncate file '{path}': {os.strerror(e.errno or 0)}",
                           ErrorDomain.NONE) from None

    async def wipe_vol(self, vol: Volume, algorithm: int) -> None:
        if algorithm == 0:
            await asyncio.to_thread(self._wipe, vol.path)
            return
        # The other patterns are scrub(1)'s, as in libvirt.
        scrub = shutil.which("scrub")
        if scrub is None:
            raise VirError(ErrorCode.SYSTEM_ERROR,
                           "Cannot find 'scrub' in path: No such file or directory")
        proc = await asyncio.create_subprocess_exec(
            scrub, "-f", "-p", _SCRUB_PATTERNS[algorithm], vol.path,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise VirError(ErrorCode.INTERNAL_ERROR,
                           f"internal error: Child process ({scrub} -f -p "
                           f"{_SCRUB_PATTERNS[algorithm]} {vol.path}) unexpected exit status "
                           f"{proc.returncode}: {err.decode().strip()}")

    @staticmethod
    def _wipe(path: str) -> None:
        """A sparse file becomes all holes; a dense one is written over with zeros,
        its blocks kept (as libvirt's zero algorithm does)."""
        try:
            with open(path, "r+b") as f:
                st = os.fstat(f.fileno())
                if st.st_blocks * 512 < st.st_size:
                    os.ftruncate(f.fileno(), 0)
                    os.ftruncate(f.fileno(), st.st_size)
                    return
                chunk = bytes(1 << 20)
                left = st.st_size
                while left > 0:
                    left -= f.write(chunk[: min(left, len(chunk))])
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise _system_error(f"cannot wipe '{path}'", e) from None

    async def delete_vol(self, vol: Volume, flags: int) -> None:
        try:
            if vol.type == "dir":
                os.rmdir(vol.path)
            else:
                os.unlink(vol.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise _system_error(f"cannot unlink file '{vol.path}'", e) from None

