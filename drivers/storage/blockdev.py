"""Block devices under ``logical`` and ``disk`` pools: the tools run on them,
what is already written on them, and the volumes they hold.

Every tool failure reads as libvirt's virCommandRun words it: the command line,
the exit status and the tool's own message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from typing import TYPE_CHECKING

from drivers import offload
from drivers.storage.perms import Perms
from drivers.storage.vol_xml import Backing, Volume
from protocol.errors import ErrorCode, ErrorDomain, VirError

if TYPE_CHECKING:
    from drivers.storage.backend import Backend

#: What libvirt zeroes at both ends of a device before labelling it.
ZERO_SIZE = 1 << 20

#: The volume mode libvirt gives new volumes when the XML names none.
DEFAULT_VOL_MODE = 0o600


def system_error(message: str, err: OSError) -> VirError:
    return VirError(ErrorCode.SYSTEM_ERROR, f"{message}: {os.strerror(err.errno or 0)}",
                    ErrorDomain.STORAGE)


async def run(*argv: str, timeout: float | None = None) -> str:
    """Run a tool to its end; its standard output, or libvirt's error with its stderr.
    ``timeout``: offload.TIMEOUT unless the tool writes data."""
    env = dict(os.environ, LC_ALL="C", LVM_SUPPRESS_FD_WARNINGS="1")
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env)
    except OSError as e:
        raise system_error(f"Cannot find '{argv[0]}' in path", e) from None
    out, err = await offload.communicate(proc, argv, timeout=timeout)
    if proc.returncode != 0:
        status = (f"exit status {proc.returncode}" if proc.returncode > 0
                  else f"fatal signal {-proc.returncode}")
        text = err.decode(errors="replace").strip()
        raise VirError(ErrorCode.INTERNAL_ERROR,
                       f"internal error: Child process ({' '.join(argv)}) unexpected {status}"
                       + (f": {text}" if text else ""), ErrorDomain.NONE)
    return out.decode(errors="replace")


async def probe(device: str) -> tuple[str | None, str | None]:
    """(file system or PV type, partition table type) found on ``device``, as
    libblkid sees them (``blkid -p``, the low-level probe libvirt uses)."""
    argv = ("blkid", "-p", "-o", "export", device)
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, _ = await offload.communicate(proc, argv)
    if proc.returncode == 2:  # nothing recognised
        return None, None
    if proc.returncode != 0:
        raise VirError(ErrorCode.STORAGE_PROBE_FAILED,
                       "Storage pool probe failed: Failed to create filesystem probe for "
                       f"device {device}",
                       ErrorDomain.STORAGE)
    found = dict(line.split("=", 1) for line in out.decode().splitlines() if "=" in line)
    return found.get("TYPE"), found.get("PTTYPE")


async def check_empty(device: str, fmt: str, writelabel: bool) -> None:
    """libvirt's virStorageBackendDeviceIsEmpty: before writing a label
    (``writelabel``) nothing may be there; before using one, ``fmt`` must be."""
    fs_type, pt_type = await probe(device)
    found = fs_type or pt_type
    if found is None:
        if writelabel:
            return
        raise VirError(ErrorCode.STORAGE_PROBE_FAILED,
                       "Storage pool probe failed: "
                       f"Device '{device}' is unrecognized, requires build",
                       ErrorDomain.STORAGE)
    if found == fmt:
        if not writelabel:
            return
        raise VirError(ErrorCode.STORAGE_POOL_BUILT,
                       "Storage pool already built: "
                       f"Device '{device}' already formatted using '{fmt}'",
                       ErrorDomain.STORAGE)
    raise VirError(ErrorCode.STORAGE_POOL_BUILT,
                   f"Storage pool already built: Device '{device}' formatted cannot "
                   f"overwrite using '{fmt}', "
                   "requires build --overwrite", ErrorDomain.STORAGE)


def zero_ends(device: str, size: int = ZERO_SIZE) -> None:
    """Zeros over the first and last ``size`` bytes, where labels and their
    backups live (libvirt's virStorageBackendZeroPartitionTable)."""
    try:
        fd = os.open(device, os.O_WRONLY)
    except OSError as e:
        raise system_error(f"Failed to open storage volume with path '{device}'", e) from None
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        zeros = bytes(min(size, end))
        for offset in sorted({0, max(end - size, 0)}):
            os.pwrite(fd, zeros, offset)
        os.fsync(fd)
    except OSError as e:
        raise system_error(f"Failed to wipe volume with path '{device}'", e) from None
    finally:
        os.close(fd)


#: scrub(1) patterns for virStorageVolWipeAlgorithm 1..8.
_SCRUB = {1: "nnsa", 2: "dod", 3: "bsi", 4: "gutmann", 5: "schneier", 6: "pfitzner7",
          7: "pfitzner33", 8: "random"}


async def wipe(vol: Volume, algorithm: int) -> None:
    """Zeros over the volume's allocation, or one of scrub's patterns (libvirt's local wipe)."""
    if algorithm:
        await run("scrub", "-f", "-p", _SCRUB[algorithm], vol.path,
                  timeout=offload.LONG_TIMEOUT)
    else:
        await offload.run_long(vol.path, wipe_zero, vol.path, vol.allocation or 0)


def wipe_zero(path: str, length: int) -> None:
    """Zeros over the first ``length`` bytes of a block volume."""
    chunk = bytes(1 << 20)
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as e:
        raise system_error(f"Failed to open storage volume with path '{path}'", e) from None
    try:
        done = 0
        while done < length:
            done += os.write(fd, chunk[: min(len(chunk), length - done)])
        os.fsync(fd)
    except OSError as e:
        raise system_error(f"Failed to wipe volume with path '{path}'", e) from None
    finally:
        os.close(fd)


VOL_CREATE_PREALLOC_METADATA = 1 << 0
VOL_CREATE_REFLINK = 1 << 1


async def create_from(backend: Backend, vol: Volume, source: Volume, flags: int) -> None:
    """A new volume of ``backend`` (a partition, an LV) holding ``source``'s
    contents; removed again when the copy fails."""
    await backend.create_vol(vol, 0)
    vol.path = backend.vol_path(vol.name)
    try:
        await copy_from(vol, source, flags)
    except BaseException:
        with contextlib.suppress(VirError):
            await backend.delete_vol(vol, 0)
        raise


async def copy_from(vol: Volume, source: Volume, flags: int) -> None:
    """Fill a new block volume from ``source`` (libvirt's build-from for block
    volumes): raw bytes up to the new capacity, images through qemu-img."""
    if flags & ~(VOL_CREATE_PREALLOC_METADATA | VOL_CREATE_REFLINK):
        raise VirError(ErrorCode.INVALID_ARG, f"unsupported flags (0x{flags:x}) in function "
                       "storageBackendCreateBlockFrom", ErrorDomain.STORAGE)
    if flags & VOL_CREATE_PREALLOC_METADATA:
        raise VirError(ErrorCode.CONFIG_UNSUPPORTED, "unsupported configuration: metadata "
                       "preallocation is not supported for block volumes", ErrorDomain.STORAGE)
    if source.type == "file" and source.format not in ("raw", ""):
        await run("/usr/bin/qemu-img", "convert", "-f", source.format, "-O", "raw",
                  source.path, vol.path, timeout=offload.LONG_TIMEOUT)
    else:
        await offload.run_long(vol.path, _copy, source.path, vol.path, vol.capacity)
    apply_perms(vol.path, vol.perms)


def _copy(src: str, dst: str, limit: int) -> None:
    try:
        fin = os.open(src, os.O_RDONLY)
    except OSError as e:
        raise system_error(f"could not open input path '{src}'", e) from None
    try:
        fout = os.open(dst, os.O_RDWR)
    except OSError as e:
        os.close(fin)
        raise system_error(f"cannot create path '{dst}'", e) from None
    try:
        left = limit
        while left > 0:
            chunk = os.read(fin, min(left, 1 << 20))
            if not chunk:
                break
            os.write(fout, chunk)
            left -= len(chunk)
        os.fdatasync(fout)
    except OSError as e:
        raise system_error(f"failed writing to file '{dst}'", e) from None
    finally:
        os.close(fin)
        os.close(fout)


def _stamp(ns: int) -> str:
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def stat_block(vol: Volume) -> None:
    """Size, permissions and times of a block volume from its device node, as
    libvirt reads them: capacity, allocation and physical are all its size."""
    try:
        st = os.stat(vol.path)
        fd = os.open(vol.path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise VirError(ErrorCode.NO_STORAGE_VOL, "Storage volume not found: no storage vol "
                       f"with matching path '{vol.path}'", ErrorDomain.STORAGE) from None
    except OSError as e:
        raise system_error(f"cannot open volume '{vol.path}'", e) from None
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)
    if not stat.S_ISBLK(st.st_mode) and not stat.S_ISREG(st.st_mode):
        raise VirError(ErrorCode.INTERNAL_ERROR,
                       f"internal error: unexpected storage mode for '{vol.path}'",
                       ErrorDomain.STORAGE)
    vol.type = "block"
    vol.capacity = vol.allocation = vol.physical = size
    vol.perms = Perms(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    vol.timestamps = (_stamp(st.st_atime_ns), _stamp(st.st_mtime_ns), _stamp(st.st_ctime_ns))


def stat_backing(back: Backing) -> None:
    """Permissions and times of a backing volume, when it can be reached."""
    try:
        st = os.stat(back.path)
    except OSError:
        return
    back.perms = Perms(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    back.timestamps = (_stamp(st.st_atime_ns), _stamp(st.st_mtime_ns), _stamp(st.st_ctime_ns))


def apply_perms(path: str, perms: Perms) -> None:
    """Owner and mode of a new block volume, as libvirt sets them when root."""
    try:
        if os.geteuid() == 0:
            os.chown(path, perms.owner if perms.owner is not None else -1,
                     perms.group if perms.group is not None else -1)
    except OSError as e:
        raise system_error(f"cannot set file owner '{path}'", e) from None
    try:
        os.chmod(path, perms.mode if perms.mode is not None else DEFAULT_VOL_MODE)
    except OSError as e:
        raise system_error(f"cannot set file mode '{path}'", e) from None
