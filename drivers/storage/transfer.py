"""Volume contents over a stream: download (holes skipped when sparse) and upload.

The stream side is two callables, so the driver stays off the wire: ``send``
and ``send_hole`` for downloads, ``recv`` (bytes, a hole, or b"" at the end)
for uploads.

An upload gives the volume what libvirtd's would: the bytes sent from
``offset`` on, zeros where the stream has a hole, and the old contents
elsewhere, except that a hole cuts the file off at its end (libvirtd truncates
there), so a sparse stream leaves holes and drops any preallocation. Unlike
libvirtd, an upload cut off midway (the client aborts, or goes away) leaves
the volume as it was: a plain file volume is written as a new file next to it,
which the old contents not sent are copied into and which replaces the volume
only when the stream ends cleanly (the price: room for a second copy while
the upload runs). What cannot be swapped like that - a block device, or a
file a running guest has open - is written in place as libvirtd writes it,
its holes punched out rather than left with the old bytes.

The new file is ``.NAME.XXXXXXXX.upload`` in the volume's directory. A pool
refresh lists no such file as a volume, and removes one no upload of this
daemon writes (left by a daemon killed midway).

As in libvirtd, a volume that cannot be opened fails the call itself; a read
that fails later fails the stream.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import stat
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

from drivers import offload
from protocol.errors import ErrorDomain, VirError, system_error

#: Bytes read from the file per step (the stream cuts them into packets).
READ_SIZE = 4 << 20

_KEEP_SIZE = 0x01  # FALLOC_FL_KEEP_SIZE
_PUNCH_HOLE = 0x02 | _KEEP_SIZE  # FALLOC_FL_PUNCH_HOLE
_RENAME_EXCHANGE = 1 << 1
#: Pieces gathered into one write at most (well under IOV_MAX).
_MAX_BATCH = 64


_TEMP_SUFFIX = ".upload"
#: What mkstemp names an upload's new file (its 8 random characters).
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}" + re.escape(_TEMP_SUFFIX), re.DOTALL)
#: The new files of the uploads under way in this daemon.
_writing: set[str] = set()


def _error(message: str, err: OSError) -> VirError:
    return system_error(message, err, ErrorDomain.STORAGE)


def is_upload_file(name: str) -> bool:
    """Whether a directory entry is the new file of an upload, not a volume."""
    return _TEMP_NAME.fullmatch(name) is not None


def is_stale_upload(path: str) -> bool:
    """An upload's new file that no upload of this daemon writes any more."""
    return is_upload_file(os.path.basename(path)) and path not in _writing


def open_volume(path: str, write: bool) -> int:
    """The volume opened for a stream; libvirtd's error when it cannot be."""
    try:
        return os.open(path, (os.O_RDWR if write else os.O_RDONLY) | os.O_CLOEXEC)
    except OSError as e:
        raise system_error(f"Unable to open stream for '{path}'", e,
                           ErrorDomain.STREAMS) from None


def check_open(path: str, write: bool) -> None:
    """Fail the stream's call, before the stream starts, where libvirtd's open would."""
    os.close(open_volume(path, write))


def _extents(fd: int, start: int, end: int) -> list[tuple[int, int, bool]]:
    """(offset, length, is_data) runs between start and end, from SEEK_DATA/SEEK_HOLE."""
    runs = []
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.EINVAL:  # a block device: it knows no holes
                return [*runs, (pos, end - pos, True)]
            if e.errno != errno.ENXIO:
                raise
            data = end  # nothing but hole up to the end of the file
        data = min(data, end)
        if data > pos:
            runs.append((pos, data - pos, False))
            pos = data
            continue
        hole = min(os.lseek(fd, pos, os.SEEK_HOLE), end)
        runs.append((pos, hole - pos, True))
        pos = hole
    return runs


async def download(path: str, offset: int, length: int, sparse: bool,
                   send: Callable[[bytes], Awaitable[None]],
                   send_hole: Callable[[int], Awaitable[Any]]) -> None:
    """Send ``length`` bytes (0: to the end) of ``path`` from ``offset``. The file
    is only touched on the lanes of its directory (drivers/offload.py)."""
    key = os.path.dirname(path)
    fd = await offload.run(key, open_volume, path, False)
    try:
        runs = await offload.run(key, _runs, fd, offset, length, sparse)
        for start, count, is_data in runs:
            if not is_data:
                await send_hole(count)
                continue
            pos = start
            while pos < start + count:
                chunk = await offload.run_long(key, os.pread, fd,
                                               min(READ_SIZE, start + count - pos), pos)
                if not chunk:
                    return
                await send(chunk)
                pos += len(chunk)
    except OSError as e:
        raise system_error(f"Unable to read {path}", e, ErrorDomain.STREAMS) from None
    finally:
        await offload.run_long(key, os.close, fd)  # a close flushes, which can hang


def _runs(fd: int, offset: int, length: int, sparse: bool) -> list[tuple[int, int, bool]]:
    """What a download sends: the extents of the range, or all of it as data."""
    size = os.lseek(fd, 0, os.SEEK_END)  # st_size is 0 for a block device
    end = size if length == 0 else min(size, offset + length)
    return _extents(fd, offset, end) if sparse else [(offset, end - offset, True)]


@functools.cache
def _libc() -> Any:
    """fallocate with flags and renameat2, which ``os`` lacks. ctypes (0.4 MiB)
    is loaded by the first transfer that needs them, not at daemon start."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    libc.renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                               ctypes.c_uint)
    return libc


def _write_all(fd: int, data: bytes, pos: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, pos)
        view, pos = view[written:], pos + written


def _zero(fd: int, start: int, length: int) -> None:
    """Make a range read as zeros without allocating it, where the file system can."""
    if _libc().fallocate(fd, _PUNCH_HOLE, start, length) == 0:
        return
    import ctypes  # already loaded by _libc()

    err = ctypes.get_errno()
    if err not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.ENODEV, errno.EINVAL):
        raise OSError(err, os.strerror(err))
    zeros = bytes(min(length, READ_SIZE))
    end = start + length
    while start < end:
        _write_all(fd, zeros[: end - start], start)
        start += min(len(zeros), end - start)


def _copy_range(src: int, dst: int, start: int, end: int) -> None:
    """Copy what ``src`` holds in [start, end) into ``dst`` at the same offsets,
    its holes left as holes (copy_file_range shares blocks where it can)."""
    for pos, count, is_data in _extents(src, start, end):
        while is_data and count > 0:
            try:
                done = os.copy_file_range(src, dst, count, pos, pos)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                done = len(chunk := os.pread(src, min(count, READ_SIZE), pos))
                _write_all(dst, chunk, pos)
            if done == 0:
                break
            pos, count = pos + done, count - done


class _Sink:
    """Where the stream's bytes go, gathered into few large writes, and what a
    hole does there."""

    def __init__(self, key: str, fd: int, block: bool, fresh: bool) -> None:
        self.key = key  # the lane its writes go to
        self.fd = fd
        self.block = block  # a device: its size is fixed, holes are written as zeros
        self.fresh = fresh  # a new empty file: a hole there is already one
        self.cut: int | None = None  # where the last hole ended, if there was one
        self._batch: list[bytes] = []
        self._at = 0
        self._size = 0

    async def data(self, pos: int, item: bytes) -> None:
        if not self._batch:
            self._at = pos
        self._batch.append(item)
        self._size += len(item)
        if self._size >= READ_SIZE or len(self._batch) >= _MAX_BATCH:
            await self.flush()

    async def flush(self) -> None:
        if self._batch:
            batch, self._batch, self._size = self._batch, [], 0
            await offload.run_long(self.key, _write_vec, self.fd, batch, self._at)

    async def hole(self, start: int, length: int) -> None:
        await self.flush()
        if not self.block:
            self.cut = start + length
        if not self.fresh:
            await offload.run_long(self.key, self._clear, start, length)

    def _clear(self, start: int, length: int) -> None:
        _zero(self.fd, start, length)
        if not self.block:
            os.ftruncate(self.fd, start + length)  # libvirtd cuts the file there


def _reserve(fd: int, start: int, length: int) -> None:
    """Allocate the blocks a dense stream is about to fill in one go, the file's
    size unchanged: a new file filled write by write costs the file system about
    twice the time of overwriting the old one in place. Best effort."""
    if length > 0:
        _libc().fallocate(fd, _KEEP_SIZE, start, length)


async def upload(path: str, offset: int, length: int,
                 recv: Callable[[], Awaitable[Any]], replace: bool = True,
                 sparse: bool = False) -> None:
    """Write what the client sends into ``path`` from ``offset``; ``length``
    (0: no limit) caps what is taken. ``replace``: a regular file may be
    swapped for the new contents (see the module docstring); ``sparse``: the
    stream may bring holes."""
    key = os.path.dirname(path)
    old = await offload.run(key, open_volume, path, True)
    tmp: str | None = None
    try:
        st = await offload.run(key, os.fstat, old)
        fd = old
        if replace and stat.S_ISREG(st.st_mode):
            fd, tmp = await offload.run(key, _new_file, path, st)
            _writing.add(tmp)
            if not sparse:
                await offload.run_long(key, _reserve, fd, offset, length or st.st_size - offset)
        sink = _Sink(key, fd, stat.S_ISBLK(st.st_mode), fresh=tmp is not None)
        try:
            end = await _receive(sink, offset, length, recv)
            if tmp is not None:
                await offload.run_long(key, _complete, old, fd, offset, end, st.st_size,
                                       sink.cut)
                await offload.run_long(key, _swap, tmp, path)
                _writing.discard(tmp)
                tmp = None
        finally:
            if fd != old:
                await offload.run_long(key, os.close, fd)
    except OSError as e:
        raise _error(f"Unable to write to '{path}'", e) from None
    finally:
        await offload.run_long(key, os.close, old)
        if tmp is not None:
            with contextlib.suppress(OSError):
                await offload.run_long(key, os.unlink, tmp)
            _writing.discard(tmp)


def _new_file(path: str, st: os.stat_result) -> tuple[int, str]:
    """The upload's new file next to the volume, with the volume's mode and owner."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=_TEMP_SUFFIX,
                               dir=os.path.dirname(path))
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    with contextlib.suppress(PermissionError):
        os.fchown(fd, st.st_uid, st.st_gid)
    return fd, tmp


async def _receive(sink: _Sink, offset: int, length: int,
                   recv: Callable[[], Awaitable[Any]]) -> int:
    """Take the stream into ``sink`` up to its end; where the data ended."""
    limit = offset + length if length else None
    pos = offset
    while True:
        item = await recv()
        if isinstance(item, bytes):
            if not item:
                await sink.flush()
                return pos
            if limit is not None and pos + len(item) > limit:
                # libvirtd takes what fits, then fails the stream
                await sink.data(pos, item[: max(limit - pos, 0)])
                await sink.flush()
                raise system_error("cannot write to stream", OSError(errno.ENOSPC, ""),
                                   ErrorDomain.STREAMS)
            await sink.data(pos, item)
            pos += len(item)
        else:
            size = item.length if limit is None else min(item.length, max(limit - pos, 0))
            if size:
                await sink.hole(pos, size)
                pos += size


def _write_vec(fd: int, batch: list[bytes], pos: int) -> None:
    views = [memoryview(b) for b in batch]
    while views:
        done = os.pwritev(fd, views, pos)
        pos += done
        while views and done >= len(views[0]):
            done -= len(views.pop(0))
        if done:
            views[0] = views[0][done:]


def _swap(new: str, path: str) -> None:
    """Put ``new`` in the place of ``path``. An exchange, where the file system
    has it, spares ext4 the flush it does when a rename replaces a file."""
    parent = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc().renameat2(parent, os.path.basename(new).encode(), parent,
                             os.path.basename(path).encode(), _RENAME_EXCHANGE) == 0:
            os.unlink(new)  # the old contents now
            return
    finally:
        os.close(parent)
    os.replace(new, path)


def _complete(old: int, new: int, offset: int, end: int, old_size: int,
              cut: int | None) -> None:
    """Give the new file the old contents the stream did not replace: what lies
    before ``offset`` and, unless a hole cut the file off, what lies past ``end``."""
    if offset:
        _copy_range(old, new, 0, min(offset, old_size))
    if cut is not None:
        size = end
    else:
        if old_size > end:
            _copy_range(old, new, end, old_size)
        size = max(old_size, end if end > offset else 0)
    if os.fstat(new).st_size < size:
        os.ftruncate(new, size)
