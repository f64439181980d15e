"""A writer for the cpio "newc" format, the one the Linux kernel unpacks as an initramfs.

Written here rather than calling cpio(1) so that building the test guest
needs nothing beyond Python and dpkg, and so that the archive holds exactly
the entries we list, with fixed owners and times (the same inputs give the
same bytes), and device nodes without being root.
"""

from __future__ import annotations

import stat

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


class Archive:
    """Entries in the order added; parents must be added before their children."""

    def __init__(self) -> None:
        self._out = bytearray()
        self._ino = 0
        self._closed = False

    def dir(self, path: str, mode: int = 0o755) -> None:
        self._add(path, stat.S_IFDIR | mode, b"", nlink=2)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._add(path, stat.S_IFREG | mode, data)

    def symlink(self, path: str, target: str) -> None:
        self._add(path, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._add(path, stat.S_IFCHR | mode, b"", rdev=(major, minor))

    def getvalue(self) -> bytes:
        """The archive with its trailer; nothing may be added afterwards."""
        if not self._closed:
            self._add(TRAILER, 0, b"", ino=0)
            self._closed = True
        return bytes(self._out)

    def _add(self, path: str, mode: int, data: bytes, nlink: int = 1,
             rdev: tuple[int, int] = (0, 0), ino: int | None = None) -> None:
        if self._closed:
            raise ValueError("archive already finished")
        name = path.strip("/").encode() + b"\0"
        if ino is None:
            self._ino += 1
            ino = self._ino
        # ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
        # rdevmajor, rdevminor, namesize, check: each 8 hex digits.
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, *rdev, len(name), 0)
        header = MAGIC + b"".join(b"%08X" % f for f in fields)
        self._out += header + name + _pad4(len(header) + len(name))
        self._out += data + _pad4(len(data))
