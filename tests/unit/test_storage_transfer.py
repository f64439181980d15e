"""Volume uploads (drivers/storage/transfer.py) on real files: what the volume holds afterwards."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.streams import Hole
from drivers.storage import transfer
from protocol.errors import ErrorCode, ErrorDomain, VirError

MiB = 1 << 20


def _feed(items: list[Any]) -> Callable[[], Awaitable[Any]]:
    """A stream's recv: the items, then b"" (the end); an exception item is raised."""
    queue = list(items)

    async def recv() -> Any:
        item = queue.pop(0) if queue else b""
        if isinstance(item, BaseException):
            raise item
        return item

    return recv


def _upload(path: Path, items: list[Any], offset: int = 0, length: int = 0,
            replace: bool = True) -> None:
    sparse = any(isinstance(item, Hole) for item in items)
    asyncio.run(transfer.upload(str(path), offset, length, _feed(items), replace=replace,
                                sparse=sparse))


def _volume(tmp_path: Path, data: bytes, prealloc: bool = False) -> Path:
    path = tmp_path / "vol"
    path.write_bytes(data)
    os.chmod(path, 0o640)
    if prealloc:
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, len(data))
    return path


def _others(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name != "vol")


@pytest.mark.parametrize("replace", [True, False])
def test_plain_upload_overwrites_from_offset_and_keeps_the_rest(tmp_path: Path,
                                                                replace: bool) -> None:
    old = os.urandom(4 * MiB)
    path = _volume(tmp_path, old)
    _upload(path, [b"a" * MiB, b"b" * 100], offset=MiB, replace=replace)
    assert path.read_bytes() == old[:MiB] + b"a" * MiB + b"b" * 100 + old[2 * MiB + 100:]
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    assert _others(tmp_path) == []


@pytest.mark.parametrize("replace", [True, False])
def test_holes_read_as_zeros_and_cut_the_file_as_libvirtd(tmp_path: Path,
                                                          replace: bool) -> None:
    path = _volume(tmp_path, b"\xff" * (8 * MiB), prealloc=True)
    _upload(path, [b"d" * MiB, Hole(2 * MiB), b"e" * MiB], replace=replace)
    # libvirtd truncates the file where a hole ends: nothing of the old tail stays.
    assert path.read_bytes() == b"d" * MiB + bytes(2 * MiB) + b"e" * MiB
    assert path.stat().st_blocks * 512 <= 2 * MiB + 64 * 1024  # the hole is not allocated


def test_a_trailing_hole_keeps_the_size(tmp_path: Path) -> None:
    path = _volume(tmp_path, b"\xff" * (4 * MiB), prealloc=True)
    _upload(path, [b"d" * MiB, Hole(3 * MiB)])
    assert path.stat().st_size == 4 * MiB
    assert path.read_bytes() == b"d" * MiB + bytes(3 * MiB)
    assert path.stat().st_blocks * 512 <= MiB + 64 * 1024


def test_length_caps_holes(tmp_path: Path) -> None:
    path = _volume(tmp_path, b"\xff" * MiB)
    _upload(path, [b"x" * 1000, Hole(500)], length=1200)
    assert path.read_bytes() == b"x" * 1000 + bytes(200)


def test_data_past_length_fails_as_libvirtd_and_changes_nothing(tmp_path: Path) -> None:
    path = _volume(tmp_path, b"\xff" * MiB)
    with pytest.raises(VirError) as info:
        _upload(path, [b"x" * 1000, b"y" * 1000], length=1200)
    assert (info.value.code, info.value.domain, info.value.message) == (
        ErrorCode.SYSTEM_ERROR, ErrorDomain.STREAMS,
        "cannot write to stream: No space left on device")
    assert path.read_bytes() == b"\xff" * MiB
    assert _others(tmp_path) == []


ABORTED = VirError(ErrorCode.RPC, "stream aborted at client request", ErrorDomain.STREAMS)


@pytest.mark.parametrize("cut", [ABORTED, asyncio.CancelledError()])
def test_an_upload_cut_midway_leaves_the_volume_alone(tmp_path: Path,
                                                      cut: BaseException) -> None:
    old = os.urandom(2 * MiB)
    path = _volume(tmp_path, old)
    with pytest.raises(type(cut)):
        _upload(path, [b"x" * MiB, Hole(10), cut])
    assert path.read_bytes() == old
    assert _others(tmp_path) == []  # the new contents were thrown away


def test_in_place_writes_through_the_open_file(tmp_path: Path) -> None:
    """A file a guest holds open must see the upload in the same inode."""
    path = _volume(tmp_path, bytes(MiB))
    inode = path.stat().st_ino
    _upload(path, [b"z" * 10], replace=False)
    assert path.stat().st_ino == inode
    _upload(path, [b"y" * 10])
    assert path.stat().st_ino != inode and path.read_bytes()[:10] == b"y" * 10


def test_a_missing_volume_is_libvirtds_open_error(tmp_path: Path) -> None:
    with pytest.raises(VirError) as info:
        _upload(tmp_path / "nope", [b"x"])
    assert info.value.message == (f"Unable to open stream for '{tmp_path}/nope': "
                                  "No such file or directory")
    assert (info.value.domain, info.value.int1) == (ErrorDomain.STREAMS, errno.ENOENT)


def test_a_directory_fails_the_upload_call_and_the_download_stream(tmp_path: Path) -> None:
    """libvirtd cannot open a directory for writing; for reading it can, and
    then fails the first read."""
    with pytest.raises(VirError) as info:
        transfer.check_open(str(tmp_path), write=True)
    assert info.value.message == f"Unable to open stream for '{tmp_path}': Is a directory"
    assert (info.value.code, info.value.domain, info.value.int1) == (
        ErrorCode.SYSTEM_ERROR, ErrorDomain.STREAMS, errno.EISDIR)
    transfer.check_open(str(tmp_path), write=False)
    sent: list[Any] = []

    async def send(data: Any) -> None:
        sent.append(data)

    with pytest.raises(VirError) as info:
        asyncio.run(transfer.download(str(tmp_path), 0, 0, False, send, send))
    assert info.value.message == f"Unable to read {tmp_path}: Is a directory"
    assert (info.value.domain, info.value.int1) == (ErrorDomain.STREAMS, errno.EISDIR)
    assert sent == []


def test_the_new_file_of_an_upload_is_known_while_it_runs(tmp_path: Path) -> None:
    """A pool refresh must neither list the new file nor remove it while the
    upload runs; afterwards one left behind is stale."""
    path = _volume(tmp_path, bytes(MiB))
    seen: list[tuple[str, bool]] = []

    async def recv() -> Any:
        if not seen:
            (name,) = _others(tmp_path)
            seen.append((name, transfer.is_stale_upload(str(tmp_path / name))))
            return b"x"
        return b""

    asyncio.run(transfer.upload(str(path), 0, 0, recv))
    ((name, stale),) = seen
    assert transfer.is_upload_file(name) and name.startswith(".vol.") and not stale
    assert transfer.is_stale_upload(str(tmp_path / name))  # no upload writes it now
    assert _others(tmp_path) == []
    for other in ("vol", ".vol", ".vol.upload", ".vol.abc.upload", "vol.abcdefgh.upload"):
        assert not transfer.is_upload_file(other)
