"""Transport: listening sockets, and who is on the other end of each connection.

A :class:`Listener` accepts connections and hands each to the server together
with an :class:`Identity` learned from the transport before a byte is read.
Unix sockets are the only transport today; TCP, TLS and SSH become new
subclasses with their own ``identify``; systemd socket activation passes an
already bound socket instead of a path.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: The programs a listener serves: the daemon's API or the administration API.
SERVICE_REMOTE = "remote"
SERVICE_ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the peer is, as far as the transport can tell.

    Access control decides on this; ``uid``/``gid``/``pid`` are ``None`` where
    the transport cannot know them (e.g. TCP).
    """

    transport: str
    listener: str
    readonly: bool
    uid: int | None = None
    gid: int | None = None
    pid: int | None = None


#: Called for every accepted connection; the server wraps it into a Client.
Accept = Callable[[socket.socket, "Listener", Identity], Awaitable[None]]


class Listener:
    """One listening endpoint: a name, a service, read-only or not.

    Subclasses provide :meth:`bind` and :meth:`identify`; accepting (with the
    server's connection limit applied by ``accept``) is shared.
    """

    transport = "?"

    def __init__(self, name: str, service: str = SERVICE_REMOTE, readonly: bool = False) -> None:
        self.name = name
        self.service = service
        self.readonly = readonly
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    def bind(self) -> socket.socket:
        """Create (or adopt) the listening socket."""
        raise NotImplementedError

    def identify(self, sock: socket.socket) -> Identity:
        """The peer of a freshly accepted connection."""
        raise NotImplementedError

    def start(self, accept: Accept) -> None:
        self._sock = self.bind()
        self._sock.setblocking(False)
        self._task = asyncio.get_running_loop().create_task(
            self._serve(self._sock, accept), name=f"listener {self.name}")

    async def _serve(self, sock: socket.socket, accept: Accept) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("%s: cannot accept: %s", self.name, e.strerror)
                    await asyncio.sleep(0.1)
                    continue
                if e.errno in (errno.ECONNABORTED, errno.EINTR, errno.EAGAIN):
                    continue
                raise
            try:
                identity = self.identify(conn)
            except OSError as e:
                log.warning("%s: dropping connection, peer unknown: %s", self.name, e)
                conn.close()
                continue
            try:
                await accept(conn, self, identity)
            except asyncio.CancelledError:
                conn.close()
                raise
            except Exception:  # one bad connection must not stop the listener
                log.exception("%s: cannot set up a connection", self.name)
                conn.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None


_UCRED = struct.Struct("3i")


class UnixListener(Listener):
    """A Unix socket at ``path`` with libvirtd's permission handling.

    With ``sock`` (socket activation) the socket is adopted as it is and its
    file is left alone at close.
    """

    transport = "unix"

    def __init__(self, name: str, path: Path, mode: int, *, group: str | None = None,
                 service: str = SERVICE_REMOTE, readonly: bool = False,
                 backlog: int = 1000, sock: socket.socket | None = None) -> None:
        super().__init__(name, service, readonly)
        self.path = path
        self.mode = mode
        self.group = group
        self.backlog = backlog
        self._adopted = sock
        self._created = False

    def bind(self) -> socket.socket:
        if self._adopted is not None:
            return self._adopted
        gid = -1
        if self.group is not None:
            try:
                gid = grp.getgrnam(self.group).gr_gid
            except KeyError:
                raise OSError(errno.EINVAL, f"Failed to lookup group '{self.group}'") from None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bind under a umask that yields the final mode, so the socket is never
        # reachable with wider permissions than configured.
        old = os.umask(~self.mode & 0o777)
        try:
            sock.bind(str(self.path))
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old)
        self._created = True
        if gid != -1:
            os.chown(self.path, -1, gid)
        sock.listen(self.backlog)
        return sock

    def identify(self, sock: socket.socket) -> Identity:
        pid, uid, gid = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        return Identity("unix", self.name, self.readonly, uid, gid, pid)

    async def close(self) -> None:
        await super().close()
        if self._created:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self._created = False


def _remove_stale(path: Path) -> None:
    """Remove a socket file nobody listens on; refuse to take over a live one."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
    else:
        raise OSError(errno.EADDRINUSE, f"{path} is in use by another daemon")
    finally:
        probe.close()
