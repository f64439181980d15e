"""Access to a running guest: console and channel streams, screenshots, keys, graphics.

Console and channel streams carry bytes both ways for as long as the client
keeps them open; the screenshot is a one-way stream of the image QEMU wrote;
OPEN_GRAPHICS_FD hands the client one end of a socket pair whose other end
QEMU's VNC or SPICE server took as a new client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
from collections.abc import Callable
from typing import Any

from daemon.dispatch import Call
from daemon.remote._common import check_flags, dom_of
from daemon.streams import CHUNK
from drivers.qemu import console, keymaps
from drivers.qemu.domain import Domain, running_process
from protocol.errors import ErrorCode, ErrorDomain, VirError
from protocol.programs import remote

R = remote().module

CONSOLE_FORCE = 1 << 0
CONSOLE_SAFE = 1 << 1
CHANNEL_FORCE = 1 << 0
GRAPHICS_SKIPAUTH = 1 << 0


# -- consoles and channels ------------------------------------------------------------


#: How long a forced open waits for the session it ends to be told so.
_KICK_WAIT = 1.0


def _serve_device(call: Call, path: str, fd: int, session: console.Session) -> None:
    stream = call.stream
    assert stream is not None
    client = call.client

    def never_started(_client: object) -> None:
        """The connection went before the transfer began: give the device back."""
        os.close(fd)
        console.release(path, session)

    async def transfer() -> None:
        client.on_close.remove(never_started)
        try:
            await console.pump(fd, stream.send, stream.recv, session.kicked)
        finally:
            console.release(path, session)

    client.on_close.append(never_started)
    stream.serve(transfer())


async def _claim_and_serve(call: Call, path: str, force: bool,
                           open_fd: Callable[[str], int], busy: str) -> None:
    """One stream per device: claim it (or take it over with force), open it, serve it.

    A forced open answers only once the session it ends has sent its error, as
    libvirtd's does: a client that reads nothing more after the reply (the
    forced-out stream polled without blocking) still learns of it.
    """
    session, previous = console.claim(path, force, busy)
    try:
        fd = open_fd(path)
    except BaseException:
        console.release(path, session)
        raise
    _serve_device(call, path, fd, session)
    if previous is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(previous.over.wait(), _KICK_WAIT)


async def domain_open_console(call: Call, args: Any) -> None:
    check_flags(args.flags, CONSOLE_FORCE | CONSOLE_SAFE, "qemuDomainOpenConsole")
    dom = dom_of(call, args.dom)
    path = console.console_path(dom, args.dev_name)
    await _claim_and_serve(call, path, bool(args.flags & CONSOLE_FORCE), console.open_pty,
                     "Active console session exists for this domain")


async def domain_open_channel(call: Call, args: Any) -> None:
    check_flags(args.flags, CHANNEL_FORCE, "qemuDomainOpenChannel")
    dom = dom_of(call, args.dom)
    path = console.channel_path(dom, args.name)
    await _claim_and_serve(call, path, bool(args.flags & CHANNEL_FORCE), console.connect_unix,
                     "Active channel stream exists for this domain")


# -- screenshot ---------------------------------------------------------------------


def _screen_device(dom: Domain, screen: int) -> tuple[str | None, int]:
    """(video device alias or None for the primary, head) of screen number ``screen``."""
    videos = [v for v in dom.live.devices.videos if v.model != "none"] if dom.live else []
    if not videos:
        raise VirError(ErrorCode.OPERATION_FAILED,
                       "operation failed: no screens to take screenshot from", ErrorDomain.QEMU)
    if screen == 0:
        return None, 0
    for video in videos:
        heads = int(video.attrs.get("heads", "1"))
        if screen < heads:
            return video.info.alias, screen
        screen -= heads
    raise VirError(ErrorCode.OPERATION_INVALID,
                   "Requested operation is not valid: no such screen ID", ErrorDomain.QEMU)


async def domain_screenshot(call: Call, args: Any) -> Any:
    check_flags(args.flags, 0, "qemuDomainScreenshot")
    dom = dom_of(call, args.dom)
    proc = running_process(dom)
    device, head = _screen_device(dom, args.screen)
    directory = call.driver.dirs.lib_dir
    fd, path = tempfile.mkstemp(prefix="qemu.screendump.", dir=directory)
    try:
        os.close(fd)
        cmd: dict[str, Any] = {"filename": path, "format": "png"}
        if device is not None:
            cmd.update(device=device, head=head)
        async with dom.lock:
            await proc.monitor.execute("screendump", cmd)
        with open(path, "rb") as f:
            image = f.read()
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    stream = call.stream
    assert stream is not None

    async def transfer() -> None:
        for start in range(0, len(image), CHUNK):
            await stream.send(image[start:start + CHUNK])

    stream.serve(transfer())
    return R.remote_domain_screenshot_ret("image/png")


# -- keys ---------------------------------------------------------------------------


async def domain_send_key(call: Call, args: Any) -> None:
    check_flags(args.flags, 0, "qemuDomainSendKey")
    codes = []
    for code in args.keycodes:
        qnum = keymaps.to_qnum(args.codeset, code)
        if qnum is None:
            names = keymaps.CODESETS
            name = names[args.codeset] if 0 <= args.codeset < len(names) else "(null)"
            raise VirError(ErrorCode.INTERNAL_ERROR,
                           f"internal error: cannot translate keycode {code} of {name}"
                           " codeset to qnum keycode", ErrorDomain.QEMU)
        codes.append(qnum)
    dom = dom_of(call, args.dom)
    async with dom.lock:
        proc = running_process(dom)
        cmd: dict[str, Any] = {"keys": [{"type": "number", "data": c} for c in codes]}
        if args.holdtime:
            cmd["hold-time"] = args.holdtime
        await proc.monitor.execute("send-key", cmd)


# -- graphics -----------------------------------------------------------------------


async def domain_open_graphics_fd(call: Call, args: Any) -> None:
    check_flags(args.flags, GRAPHICS_SKIPAUTH, "qemuDomainOpenGraphicsFD")
    dom = dom_of(call, args.dom)
    proc = running_process(dom)
    graphics = dom.live.devices.graphics if dom.live else []
    if args.idx >= len(graphics):
        raise VirError(ErrorCode.INTERNAL_ERROR,
                       f"internal error: No graphics backend with index {args.idx}",
                       ErrorDomain.QEMU)
    protocol = graphics[args.idx].type
    if protocol not in ("vnc", "spice"):
        raise VirError(ErrorCode.CONFIG_UNSUPPORTED,
                       "unsupported configuration: Can only open VNC or SPICE graphics"
                       f" backends, not {protocol}", ErrorDomain.QEMU)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        async with dom.lock:
            await proc.monitor.send_fd(theirs.fileno(), "graphicsfd")
            try:
                await proc.monitor.execute("add_client", {
                    "protocol": protocol, "fdname": "graphicsfd",
                    "skipauth": bool(args.flags & GRAPHICS_SKIPAUTH), "tls": False})
            except VirError:
                with contextlib.suppress(VirError):
                    await proc.monitor.execute("closefd", {"fdname": "graphicsfd"})
                raise
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    call.client.pass_fds(call.serial, [ours.detach()])
