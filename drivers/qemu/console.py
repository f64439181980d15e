"""A running guest's character devices opened for a client: consoles and channels.

A serial console is a pty QEMU made (its path comes from ``query-chardev`` at
start); a channel is a Unix socket QEMU listens on. One client at a time may
hold a device, as libvirtd enforces: a second one is refused unless it forces
its way in, which ends the first session.

:func:`pump` moves bytes both ways between the device and a sink/source pair
(the daemon passes its stream), and stops when either side ends.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import termios
import tty
from collections.abc import Awaitable, Callable
from typing import Any

from drivers.qemu.domain import Domain, not_running
from drivers.qemu.domain_xml.model import CharDevice
from protocol.errors import ErrorCode, ErrorDomain, VirError

READ_SIZE = 65536

# Who holds each device (by path): the event that tells the session to end.
class Session:
    """One client's hold on a device: ``kicked`` asks it to end, ``over`` says it has."""

    def __init__(self) -> None:
        self.kicked = asyncio.Event()
        self.over = asyncio.Event()


_holders: dict[str, Session] = {}


def _error(code: ErrorCode, text: str) -> VirError:
    return VirError(code, text, ErrorDomain.QEMU)


def console_path(dom: Domain, dev_name: str | None) -> str:
    """The pty of the console ``dev_name`` (an alias), or of the first console or serial."""
    d, live = dom.live, dom.live_state
    if d is None or live is None or not dom.active:
        raise not_running()
    devs = d.devices
    dev: CharDevice | None = None
    if dev_name is not None:
        for c in (*devs.consoles, *devs.serials):
            if c.info.alias == dev_name:
                dev = c
                break
    elif devs.consoles:
        dev = devs.consoles[0]
    elif devs.serials:
        dev = devs.serials[0]
    if dev is None:
        raise _error(ErrorCode.INTERNAL_ERROR,
                     f"internal error: cannot find character device {dev_name or '<null>'}")
    path = live.pty_paths.get(dev.info.alias or "") if dev.source.type == "pty" else None
    if path is None:
        raise _error(ErrorCode.INTERNAL_ERROR,
                     f"internal error: character device {dev_name or dev.info.alias}"
                     " is not using a PTY")
    return path


def channel_path(dom: Domain, name: str | None) -> str:
    """The Unix socket of the channel ``name`` (alias or target name), or of the first.

    Only Unix socket channels can be opened, as with libvirtd.
    """
    d, live = dom.live, dom.live_state
    if d is None or live is None or not dom.active:
        raise not_running()
    dev: CharDevice | None = None
    for c in d.devices.channels:
        if name is None or c.info.alias == name or \
                (c.target_type == "virtio" and c.target_name == name):
            dev = c
            break
    if dev is None:
        raise _error(ErrorCode.INTERNAL_ERROR,
                     f"internal error: cannot find channel {name or '<null>'}")
    if dev.source.type == "unix" and dev.source.attrs.get("path"):
        return dev.source.attrs["path"]
    raise _error(ErrorCode.INTERNAL_ERROR,
                 f"internal error: channel {name or dev.info.alias} is not using a UNIX socket")


def claim(path: str, force: bool, busy_message: str) -> tuple[Session, Session | None]:
    """Take the device at ``path`` for one session; returns it, and the session
    it forced out if any.

    A held device is refused (``busy_message``) unless ``force``, which ends
    the session holding it.
    """
    holder = _holders.get(path)
    if holder is not None:
        if not force:
            raise _error(ErrorCode.OPERATION_FAILED, f"operation failed: {busy_message}")
        holder.kicked.set()
    session = _holders[path] = Session()
    return session, holder


def release(path: str, session: Session) -> None:
    session.over.set()
    if _holders.get(path) is session:
        del _holders[path]


def open_pty(path: str) -> int:
    """Open a guest's pty raw and non-blocking, as a terminal program would use it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise VirError(ErrorCode.SYSTEM_ERROR,
                       f"Unable to open '{path}': {e.strerror}", ErrorDomain.STREAMS) from None
    try:
        tty.setraw(fd, termios.TCSANOW)
    except termios.error:
        pass  # not a terminal after all: bytes still flow
    return fd


def connect_unix(path: str) -> int:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError as e:
        s.close()
        raise VirError(ErrorCode.SYSTEM_ERROR,
                       f"Unable to connect to UNIX socket '{path}': {e.strerror}",
                       ErrorDomain.STREAMS) from None
    s.setblocking(False)
    return s.detach()


async def _ready(fd: int, write: bool) -> None:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    (loop.add_writer if write else loop.add_reader)(fd, wake)
    try:
        await fut
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


async def _device_to(fd: int, send: Callable[[bytes], Awaitable[None]]) -> None:
    while True:
        await _ready(fd, write=False)
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            continue
        except OSError as e:
            if e.errno in (errno.EIO, errno.ECONNRESET):  # the other end went away
                return
            raise
        if not data:
            return
        await send(data)


async def _to_device(fd: int, recv: Callable[[], Awaitable[Any]]) -> None:
    while True:
        data = await recv()
        if not isinstance(data, bytes):
            continue  # a hole means nothing to a character device
        if not data:
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                await _ready(fd, write=True)
            except OSError as e:
                if e.errno in (errno.EIO, errno.EPIPE, errno.ECONNRESET):
                    return
                raise


async def pump(fd: int, send: Callable[[bytes], Awaitable[None]],
               recv: Callable[[], Awaitable[Any]], kicked: asyncio.Event) -> None:
    """Copy both ways until the device or the client ends, or ``kicked`` is set.

    Closes ``fd``. Errors of either direction propagate; a session forced out
    fails as libvirtd's does, with an I/O failure.
    """
    tasks = [asyncio.ensure_future(_device_to(fd, send)),
             asyncio.ensure_future(_to_device(fd, recv)),
             asyncio.ensure_future(kicked.wait())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
        if tasks[2] in done:
            raise VirError(ErrorCode.RPC, "stream had I/O failure", ErrorDomain.STREAMS)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        os.close(fd)
