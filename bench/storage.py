"""Volume upload and download throughput of aiovirtd against Debian's libvirtd 9.0.

Two files go through ``vol.upload`` and ``vol.download`` on each daemon: a
1 GiB file of which 90 % are holes, sent as a sparse stream (holes travel as
STREAM_HOLE packets, as ``virsh vol-upload --sparse`` does), and a 256 MiB
file of random data sent as a plain stream. Each daemon gets a dir pool of
its own under a temporary directory; everything is removed at the end. Run it
with ``make bench`` or ``.venv/bin/python bench/storage.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _daemons import Daemon, start_aiovirtd, start_libvirtd

MiB = 1 << 20
CHUNK = 4 * MiB
POOL_XML = """<pool type='dir'>
  <name>{name}</name>
  <target><path>{path}</path></target>
</pool>
"""
# Allocation 0: both daemons would otherwise preallocate the whole capacity,
# and the holes a sparse download finds would then depend on how each daemon
# treats that preallocation (libvirtd's sparse upload drops it).
VOL_XML = """<volume>
  <name>{name}</name>
  <capacity unit='bytes'>{size}</capacity>
  <allocation>0</allocation>
  <target><format type='raw'/></target>
</volume>
"""


@dataclass(frozen=True)
class Case:
    """One test file: its name, size, and whether it moves as a sparse stream."""

    name: str
    size: int
    sparse: bool


CASES = (Case("sparse 1 GiB, 90 % holes", 1024 * MiB, True),
         Case("dense 256 MiB", 256 * MiB, False))


def _libvirt() -> Any:
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def make_file(path: Path, case: Case) -> None:
    """Random data; a sparse file has 1 MiB of it at the start of every 10 MiB."""
    with open(path, "wb") as f:
        if case.sparse:
            for off in range(0, case.size, 10 * MiB):
                f.seek(off)
                f.write(os.urandom(MiB))
            f.truncate(case.size)
        else:
            f.writelines(os.urandom(CHUNK) for _ in range(case.size // CHUNK))


def _next_section(fd: int) -> tuple[bool, int]:
    """Whether the file offset sits in data, and how far that data or hole runs."""
    here = os.lseek(fd, 0, os.SEEK_CUR)
    end = os.fstat(fd).st_size
    if here >= end:
        return (True, 0)  # a read of nothing ends the transfer
    try:
        data = os.lseek(fd, here, os.SEEK_DATA)
    except OSError:  # ENXIO: only a hole up to the end of the file
        data = end
    if data > here:
        section = (False, data - here)
    else:
        section = (True, os.lseek(fd, here, os.SEEK_HOLE) - here)
    os.lseek(fd, here, os.SEEK_SET)
    return section


def upload(conn: Any, vol: Any, path: Path, case: Case) -> float:
    """Seconds to send ``path`` into ``vol``, sparse like ``virsh vol-upload --sparse``."""
    libvirt = _libvirt()
    fd = os.open(path, os.O_RDONLY)
    try:
        stream = conn.newStream(0)
        t0 = time.perf_counter()
        if case.sparse:
            vol.upload(stream, 0, case.size, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
            stream.sparseSendAll(lambda _s, n, fd: os.read(fd, n),
                                 lambda _s, fd: _next_section(fd),
                                 lambda _s, n, fd: os.lseek(fd, n, os.SEEK_CUR) and 0, fd)
        else:
            vol.upload(stream, 0, case.size, 0)
            stream.sendAll(lambda _s, n, fd: os.read(fd, n), fd)
        stream.finish()
        return time.perf_counter() - t0
    finally:
        os.close(fd)


def download(conn: Any, vol: Any, path: Path, case: Case) -> float:
    """Seconds to fetch ``vol`` into ``path``, leaving holes where the stream had them."""
    libvirt = _libvirt()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        stream = conn.newStream(0)
        t0 = time.perf_counter()
        if case.sparse:
            vol.download(stream, 0, case.size, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
            stream.sparseRecvAll(lambda _s, buf, fd: os.write(fd, buf),
                                 lambda _s, n, fd: os.lseek(fd, n, os.SEEK_CUR) and 0, fd)
        else:
            vol.download(stream, 0, case.size, 0)
            stream.recvAll(lambda _s, buf, fd: os.write(fd, buf), fd)
        stream.finish()
        # A trailing hole only moved the offset: give the file its full length.
        os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_CUR))
        return time.perf_counter() - t0
    finally:
        os.close(fd)


class Bench:
    """One daemon's connection, pool and volumes, made here and removed at the end."""

    def __init__(self, d: Daemon, work: Path) -> None:
        self.name = d.name
        self.conn = _libvirt().open(d.uri)
        self.dir = work / f"pool-{d.name}"
        self.dir.mkdir()
        self.pool = self.conn.storagePoolCreateXML(
            POOL_XML.format(name=f"bench-storage-{d.name}", path=self.dir), 0)
        self.vols: dict[Case, Any] = {}

    def volume(self, case: Case) -> Any:
        if case not in self.vols:
            self.vols[case] = self.pool.createXML(
                VOL_XML.format(name=f"bench-{len(self.vols)}.raw", size=case.size), 0)
        return self.vols[case]

    def close(self) -> None:
        for vol in self.vols.values():
            _quietly(vol.delete)
        _quietly(self.pool.destroy)
        _quietly(self.conn.close)
        shutil.rmtree(self.dir, ignore_errors=True)


def _quietly(fn: Callable[[], object]) -> None:
    try:
        fn()
    except _libvirt().libvirtError as exc:
        print(f"cleanup: {exc}", file=sys.stderr)


def measure(benches: list[Bench], work: Path, rounds: int) -> dict[str, dict[str, float]]:
    """MB/s of each direction and file, the best of ``rounds`` turns.

    The daemons take turns within each round so that load on the shared
    machine falls on both alike; each download is checked against the source.
    """
    res: dict[str, dict[str, float]] = {b.name: {} for b in benches}
    for case in CASES:
        src, dst = work / "source", work / "copy"
        make_file(src, case)
        for _ in range(rounds):
            for b in benches:
                vol = b.volume(case)
                for label, fn, path in (("upload", upload, src), ("download", download, dst)):
                    key = f"{label} {case.name} (MB/s)"
                    rate = case.size / 1e6 / fn(b.conn, vol, path, case)
                    res[b.name][key] = max(rate, res[b.name].get(key, 0.0))
                if not filecmp.cmp(src, dst, shallow=False):
                    raise RuntimeError(f"{b.name}: {case.name} came back different")
                if case.sparse and os.stat(dst).st_blocks * 512 > case.size // 5:
                    raise RuntimeError(f"{b.name}: {case.name} came back without its holes")
                dst.unlink()
        src.unlink()
    return res


def table(ours: dict[str, float], theirs: dict[str, float]) -> str:
    rows = [("", "aiovirtd", "libvirtd", "ratio")]
    for key in dict.fromkeys([*theirs, *ours]):
        a, b = ours.get(key), theirs.get(key)
        ratio = f"{a / b:.2f}" if a and b else "-"
        rows.append((key, f"{a:,.0f}" if a else "-", f"{b:,.0f}" if b else "-", ratio))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))) for r in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="turns per daemon; the best counts")
    args = ap.parse_args()

    t0 = time.monotonic()
    # /tmp, not /var/tmp: the system libvirtd sees an empty /var of its own.
    work = Path(tempfile.mkdtemp(prefix="stb-", dir="/tmp"))
    daemons: list[Daemon] = []
    benches: list[Bench] = []
    res: dict[str, dict[str, float]] = {}
    try:
        # The system daemon, as aiovirtd runs as root: pool dirs are root's.
        daemons.append(start_libvirtd("system"))
        daemons.append(start_aiovirtd())
        benches = [Bench(d, work) for d in daemons]
        res = measure(benches, work, args.rounds)
    finally:
        for b in benches:
            b.close()
        for d in daemons:
            d.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(table(res["aiovirtd"], res["libvirtd"]))
    print("\nratio: aiovirtd/libvirtd MB/s; >= 1.00 favours aiovirtd. MB = 10^6 bytes of the "
          "file's size, holes included.")
    print(f"libvirtd: Debian's system daemon; best of {args.rounds} rounds; "
          f"{time.monotonic() - t0:.0f} s in all.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
