"""Volume contents over a stream: download (holes skipped when sparse) and upload.

The stream side is two callables, so the driver stays off the wire: ``send``
and ``send_hole`` for downloads, ``recv`` (bytes, a hole, or b"" at the end)
for uploads.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Awaitable, Callable
from typing import Any

from protocol.errors import ErrorCode, ErrorDomain, VirError

#: Bytes read from the file per step (the stream cuts them into packets).
READ_SIZE = 4 << 20


def _error(message: str, err: OSError) -> VirError:
    return VirError(ErrorCode.SYSTEM_ERROR, f"{message}: {os.strerror(err.errno or 0)}",
                    ErrorDomain.STORAGE)


def _extents(fd: int, start: int, end: int) -> list[tuple[int, int, bool]]:
    """(offset, length, is_data) runs between start and end, from SEEK_DATA/SEEK_HOLE."""
    runs = []
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
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
    """Send ``length`` bytes (0: to the end) of ``path`` from ``offset``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise _error(f"Unable to open '{path}'", e) from None
    try:
        size = os.fstat(fd).st_size
        end = size if length == 0 else min(size, offset + length)
        runs = _extents(fd, offset, end) if sparse else [(offset, end - offset, True)]
        for start, count, is_data in runs:
            if not is_data:
                await send_hole(count)
                continue
            pos = start
            while pos < start + count:
                chunk = await asyncio.to_thread(os.pread, fd, min(READ_SIZE, start + count - pos),
                                                pos)
                if not chunk:
                    return
                await send(chunk)
                pos += len(chunk)
    except OSError as e:
        raise _error(f"Unable to read from '{path}'", e) from None
    finally:
        os.close(fd)


async def upload(path: str, offset: int, length: int,
                 recv: Callable[[], Awaitable[Any]]) -> None:
    """Write what the client sends into ``path`` from ``offset``; a hole is skipped
    over (the file grows to cover it). ``length`` (0: no limit) caps what is taken."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise _error(f"Unable to open '{path}'", e) from None
    limit = offset + length if length else None
    pos = offset
    try:
        while True:
            item = await recv()
            if isinstance(item, bytes):
                if not item:
                    break
                if limit is not None:
                    item = item[: max(limit - pos, 0)]
                view = memoryview(item)
                while view:
                    written = await asyncio.to_thread(os.pwrite, fd, view, pos)
                    view = view[written:]
                    pos += written
            else:
                pos += item.length if limit is None else min(item.length, max(limit - pos, 0))
        if os.fstat(fd).st_size < pos:
            os.ftruncate(fd, pos)
    except OSError as e:
        raise _error(f"Unable to write to '{path}'", e) from None
    finally:
        os.close(fd)
