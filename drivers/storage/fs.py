"""``fs`` and ``netfs`` pools: a file system mounted on the target directory.

Volumes are image files in the mounted directory, handled by the ``dir``
backend this one extends. The programs run are libvirt's, with the argument
lists it builds, so that errors read the same.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import shutil

from drivers import offload
from drivers.storage.dir import DEFAULT_POOL_MODE, DirBackend
from drivers.storage.pool_xml import (
    Host,
    PoolDef,
    PoolSource,
    format_sources,
    parse_source_spec,
)
from protocol.errors import ErrorCode, ErrorDomain, VirError

# The programs as libvirtd 9.0 on Debian names them in its messages.
MOUNT = "/bin/mount"
UMOUNT = "/bin/umount"
MKFS = "/sbin/mkfs"
SHOWMOUNT = "/sbin/showmount"
BLKID = "/sbin/blkid"

#: What libvirt mounts every pool with on Linux.
DEFAULT_MOUNT_OPTS = "nodev,nosuid,noexec"

MOUNTS = "/proc/self/mounts"

BUILD_NO_OVERWRITE = 1 << 2
BUILD_OVERWRITE = 1 << 3

#: mkfs needs to be told to write over what a device holds (libvirt's choice).
_MKFS_FORCE = {"xfs": "-f", "ext2": "-F", "ext3": "-F", "ext4": "-F", "vfat": "-I"}

_EXPORT = re.compile(r"^(/.*\S) +\S+$")
_OCTAL = re.compile(r"\\([0-7]{3})")


def child_error(argv: list[str] | tuple[str, ...], status: int, err: str) -> VirError:
    """libvirt's report of a helper program that failed, its stderr as it wrote it."""
    how = f"exit status {status}" if status >= 0 else f"fatal signal {-status}"
    tail = f": {err}" if err else ""
    return VirError(ErrorCode.INTERNAL_ERROR,
                    f"internal error: Child process ({' '.join(argv)}) unexpected {how}{tail}",
                    ErrorDomain.NONE)


async def run(*argv: str, check: bool = True,
              timeout: float | None = None) -> tuple[int, str, str]:
    """Run a helper (no stdin) and return status, stdout, stderr. A program that
    cannot be executed fails as libvirt's forked child reports it, status 127.
    ``timeout``: offload.TIMEOUT unless the helper writes data."""
    if not os.access(argv[0], os.X_OK):
        why = os.strerror(errno.ENOENT if not os.path.exists(argv[0]) else errno.EACCES)
        status, out, err = 127, "", f"libvirt:  error : cannot execute binary {argv[0]}: {why}\n"
    else:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out_b, err_b = await offload.communicate(proc, argv, timeout=timeout)
        status = proc.returncode if proc.returncode is not None else -1
        out, err = out_b.decode(errors="replace"), err_b.decode(errors="replace")
    if check and status != 0:
        raise child_error(argv, status, err)
    return status, out, err


def _error(code: ErrorCode, prefix: str, message: str) -> VirError:
    return VirError(code, f"{prefix}{message}", ErrorDomain.STORAGE)


def _canonical(path: str) -> str:
    """The real path, or the text itself for what is no path (``host:/dir``, ``proc``)."""
    try:
        return os.path.realpath(path, strict=True)
    except OSError:
        return path


def _loop_backing(device: str) -> str | None:
    """The file behind a loop device (mount makes one for an image file)."""
    name = os.path.basename(device)
    if not name.startswith("loop"):
        return None
    try:
        with open(f"/sys/block/{name}/loop/backing_file") as f:
            return f.read().strip()
    except OSError:
        return None


def mounted(source: str, target: str, mounts: str = MOUNTS) -> bool:
    """Whether ``source`` is mounted on ``target``.

    libvirt compares the mount table's source with the pool's alone, so an image
    file (which mount puts on a loop device) never looks mounted to it and its
    pool-destroy leaves the file system mounted. Here the loop device's backing
    file counts as the source too, so such a pool is unmounted when stopped.
    """
    try:
        with open(mounts) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise VirError(ErrorCode.SYSTEM_ERROR,
                       f"cannot read mount list '{mounts}': {os.strerror(e.errno or 0)}",
                       ErrorDomain.STORAGE) from None
    want_target, want_source = _canonical(target), _canonical(source)
    for line in lines:
        fields = line.split()
        if len(fields) < 2:
            continue
        fsname, mnt_dir = (_OCTAL.sub(lambda m: chr(int(m[1], 8)), x) for x in fields[:2])
        # The kernel lists mount points resolved already; resolving them again
        # would touch every mount of the host, a hung one too.
        if mnt_dir != want_target:
            continue
        if _canonical(fsname) == want_source or _loop_backing(fsname) == want_source:
            return True
    return False


def mount_options(d: PoolDef, extra: str | None) -> list[str]:
    """``-o`` and its list: libvirt's defaults, what the format needs, the XML's own."""
    opts = [DEFAULT_MOUNT_OPTS, *([extra] if extra else []), *(d.mount_opts or [])]
    return ["-o", ",".join(opts)]


def mount_argv(d: PoolDef) -> list[str]:
    """The mount command line libvirt builds for the pool."""
    src, fmt = source_spec(d), d.source.format or "auto"
    if d.type == "fs":
        return [MOUNT, *mount_options(d, None), "-t", fmt, src, d.target_path]
    nfsvers = f"nfsvers={d.source.protocol}" if d.source.protocol else None
    if fmt == "auto":  # mount -t auto does not find nfs by itself; plain mount does
        return [MOUNT, *mount_options(d, nfsvers), src, d.target_path]
    if fmt == "glusterfs":
        return [MOUNT, *mount_options(d, "direct-io-mode=1"), "-t", fmt, src, d.target_path]
    if fmt == "cifs":
        return [MOUNT, *mount_options(d, "guest"), "-t", fmt, src, d.target_path]
    return [MOUNT, *mount_options(d, nfsvers), "-t", fmt, src, d.target_path]


def source_spec(d: PoolDef) -> str:
    """What is mounted: the device, ``host:dir``, or ``//host/dir`` for CIFS."""
    src = d.source
    if d.type != "netfs":
        return src.devices[0].path
    if src.format == "cifs":
        return f"//{src.hosts[0].name}/{src.dir}"
    return f"{src.hosts[0].name}:{src.dir}"


def check_source(d: PoolDef) -> None:
    """libvirt's checks before it mounts, unmounts or looks at the mount table."""
    src = d.source
    if d.type == "netfs":
        if len(src.hosts) != 1:
            raise _error(ErrorCode.CONFIG_UNSUPPORTED, "unsupported configuration: ",
                         "expected exactly 1 host for the storage pool")
        if src.dir is None:
            raise _error(ErrorCode.INTERNAL_ERROR, "internal error: ", "missing source path")
    elif len(src.devices) != 1:
        if not src.devices:
            raise _error(ErrorCode.INTERNAL_ERROR, "internal error: ", "missing source device")
        raise _error(ErrorCode.CONFIG_UNSUPPORTED, "unsupported configuration: ",
                     "expected exactly 1 device for the storage pool")


async def probe_empty(device: str, fmt: str) -> None:
    """Refuse to format a device that already holds a file system or a partition
    table (libvirt's blkid probe for a build without overwrite)."""
    if not os.access(BLKID, os.X_OK):
        raise _error(ErrorCode.OPERATION_INVALID, "Requested operation is not valid: ",
                     f"Unable to probe '{device}' for existing data, forced overwrite is "
                     "necessary")
    status, out, _ = await run(BLKID, "-p", "-o", "export", device, check=False)
    found = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    kind = found.get("TYPE") or found.get("PTTYPE")
    if status != 0 or kind is None:
        return
    built = "Storage pool already built: "
    if kind == fmt:
        raise _error(ErrorCode.STORAGE_POOL_BUILT, built,
                     f"Device '{device}' already formatted using '{fmt}'")
    raise _error(ErrorCode.STORAGE_POOL_BUILT, built,
                 f"Format of device '{device}' does not match the expected format '{fmt}', "
                 "forced overwrite is necessary")


class FsBackend(DirBackend):
    """A local file system on ``<source><device/>``, of ``<format type/>``."""

    type = "fs"

    async def build(self, flags: int) -> None:
        """The directory, and with an overwrite flag the file system: always with
        ``--overwrite``, on a device found empty with ``--no-overwrite``."""
        try:
            await super().build(flags)
            return
        except VirError as e:
            # The dir backend refuses the flags for want of a device, after the
            # mkdir, as libvirt's common code does; a pool with one goes on.
            if e.code != ErrorCode.OPERATION_INVALID or not self.d.source.devices:
                raise
        device = self.d.source.devices[0].path
        fmt = self.d.source.format or "auto"
        if not await self._fs(os.path.exists, device):
            raise _error(ErrorCode.OPERATION_INVALID, "Requested operation is not valid: ",
                         f"Source device does not exist when formatting pool '{self.d.name}'")
        if not flags & BUILD_OVERWRITE:
            await probe_empty(device, fmt)
        if shutil.which(MKFS) is None:
            raise _error(ErrorCode.INTERNAL_ERROR, "internal error: ",
                         f"mkfs is not available on this platform: Failed to make filesystem "
                         f"of type '{fmt}' on device '{device}'")
        force = [_MKFS_FORCE[fmt]] if fmt in _MKFS_FORCE else []
        await run(MKFS, "-t", fmt, *force, device, timeout=offload.LONG_TIMEOUT)

    async def _mounted(self) -> bool:
        """Whether the pool's source is mounted on its target; the target is
        resolved on the pool's lane, as a hung mount would not answer."""
        return await self._fs(mounted, source_spec(self.d), self.d.target_path)

    async def start(self) -> None:
        check_source(self.d)
        if not await self._mounted():
            await run(*mount_argv(self.d))

    async def stop(self) -> None:
        check_source(self.d)
        if await self._mounted():
            await run(UMOUNT, self.d.target_path)

    async def is_active(self) -> bool:
        try:
            check_source(self.d)
            return await self._mounted()
        except VirError as e:
            if e.code == ErrorCode.OPERATION_TIMEOUT:
                raise  # the pool's state is not known
            return False


class NetfsBackend(FsBackend):
    """A network file system, ``<source><host/><dir/>``: NFS, CIFS or GlusterFS."""

    type = "netfs"

    def _mkdir(self) -> None:
        """libvirt gives a netfs target its default mode when the XML names none,
        even over an existing directory's own."""
        super()._mkdir()
        if self.d.target_perms.mode is None:
            os.chmod(self.target, DEFAULT_POOL_MODE)

    @classmethod
    async def find_sources(cls, spec: str | None) -> str:
        """The host's NFS exports, as showmount lists them."""
        if spec is None:
            raise _error(ErrorCode.INVALID_ARG, "invalid argument: ",
                         "hostname must be specified for netfs sources")
        source = parse_source_spec(spec, cls.type)
        if len(source.hosts) != 1:
            raise _error(ErrorCode.CONFIG_UNSUPPORTED, "unsupported configuration: ",
                         "Expected exactly 1 host for the storage pool")
        host = source.hosts[0].name
        status, out, _ = await run(SHOWMOUNT, "--no-headers", "--exports", host, check=False)
        if status != 0:
            raise _error(ErrorCode.OPERATION_FAILED, "operation failed: ",
                         f"no storage pools were found on host '{host}'")
        found = []
        for line in out.splitlines():
            match = _EXPORT.match(line)
            if match is None:
                continue
            if match[1].endswith("/"):
                raise _error(ErrorCode.INTERNAL_ERROR, "internal error: ",
                             f"invalid netfs path (ends in /): {match[1]}")
            found.append(PoolSource(hosts=[Host(host)], dir=match[1], format="nfs"))
        return format_sources(found, cls.type)
