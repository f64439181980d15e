"""Pieces of guest access that need no QEMU: key codes, event filters, fd passing."""

from __future__ import annotations

import asyncio
import os
import socket
import struct

import pytest

from daemon.client import Client
from daemon.listeners import Identity
from daemon.remote.qemu import EVENT_NOCASE, EVENT_REGEX, _matcher
from drivers.qemu import console, keymaps
from protocol import packet
from protocol.errors import VirError

PROG = 0x20008086


@pytest.mark.parametrize(("codeset", "code", "qnum"), [
    (keymaps.LINUX, 30, 0x1E),          # KEY_A
    (keymaps.LINUX, 28, 0x1C),          # KEY_ENTER
    (keymaps.LINUX, 97, 0x9D),          # KEY_RIGHTCTRL
    (keymaps.LINUX, 103, 0xC8),         # KEY_UP
    (keymaps.XT, 0x1C, 0x1C),
    (keymaps.XT, 0x56, 0x56),
    (keymaps.ATSET1, 0xE01D, 0x9D),
    (keymaps.XT_KBD, 0x11D, 0x9D),
    (keymaps.USB, 0x04, 0x1E),          # a
    (keymaps.USB, 0x27, 0x0B),          # 0
    (keymaps.USB, 0x62, 0x52),          # keypad 0
    (keymaps.USB, 0xE4, 0x9D),          # right ctrl
    (keymaps.WIN32, 0x41, 0x1E),        # VK 'A'
    (keymaps.WIN32, 0x30, 0x0B),        # VK '0'
    (keymaps.WIN32, 0x11, 0x1D),        # VK_CONTROL: the left one
    (keymaps.QNUM, 0xB8, 0xB8),
])
def test_to_qnum(codeset: int, code: int, qnum: int) -> None:
    assert keymaps.to_qnum(codeset, code) == qnum


@pytest.mark.parametrize(("codeset", "code"), [
    (keymaps.LINUX, 700), (keymaps.LINUX, 0), (keymaps.XT, 0x9D), (keymaps.XT_KBD, 0x9D),
    (keymaps.ATSET1, 0xE0FF), (keymaps.WIN32, 0x10), (keymaps.WIN32, 0xA2), (3, 0x1C),
])
def test_codes_without_qnum(codeset: int, code: int) -> None:
    assert keymaps.to_qnum(codeset, code) is None


def test_event_filters() -> None:
    assert _matcher(None, 0) is None
    exact = _matcher("STOP", 0)
    assert exact is not None and exact("STOP") and not exact("stop")
    nocase = _matcher("stop", EVENT_NOCASE)
    assert nocase is not None and nocase("STOP") and not nocase("STOPPED")
    regex = _matcher("^BLOCK_", EVENT_REGEX)
    assert regex is not None and regex("BLOCK_JOB_READY") and not regex("block_job_ready")
    both = _matcher("job", EVENT_REGEX | EVENT_NOCASE)
    assert both is not None and both("BLOCK_JOB_READY")
    with pytest.raises(VirError, match="failed to compile regex '\\('"):
        _matcher("(", EVENT_REGEX)


class _FdTable:
    """Every call answers with one end of a new pipe, plus an empty body."""

    def __init__(self) -> None:
        self.pipes: list[int] = []

    async def call(self, client: Client, prog: int, vers: int, proc: int, serial: int,
                   status: int, pkt: bytes) -> bytes:
        read_end, write_end = os.pipe()
        self.pipes.append(write_end)
        client.pass_fds(serial, [read_end])
        if proc == 2:
            client.send_message(prog, vers, 99, b"event")  # goes out before the reply
        return b""


async def test_reply_with_fds() -> None:
    """REPLY_WITH_FDS: fd count, body, then each fd on a one-byte message."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    table = _FdTable()
    client = Client(table, Identity("unix", "test", False, 0, 0, 1))  # type: ignore[arg-type]
    await asyncio.get_running_loop().connect_accepted_socket(lambda: client, ours)
    try:
        for serial, proc in ((1, 1), (2, 2)):
            theirs.sendall(packet.packet(PROG, 1, proc, packet.CALL, serial, packet.OK))
        theirs.settimeout(5)
        for serial in (1, 2):
            if serial == 2:
                event = await asyncio.to_thread(theirs.recv, packet.PACKET_MIN + 5,
                                                socket.MSG_WAITALL)
                assert packet.HEADER.unpack_from(event, 4)[3] == packet.MESSAGE
            head = await asyncio.to_thread(theirs.recv, packet.PACKET_MIN + 4,
                                           socket.MSG_WAITALL)
            header = packet.HEADER.unpack_from(head, 4)
            assert header == (PROG, 1, serial, packet.REPLY_WITH_FDS, serial, packet.OK)
            assert struct.unpack_from(">I", head, packet.PACKET_MIN) == (1,)
            msg, fds, _, _ = await asyncio.to_thread(socket.recv_fds, theirs, 1, 1)
            assert msg == b"\0" and len(fds) == 1
            os.write(table.pipes[serial - 1], b"through")
            assert os.read(fds[0], 7) == b"through"
            os.close(fds[0])
    finally:
        client.abort()
        theirs.close()
        for fd in table.pipes:
            os.close(fd)


class _EchoTable:
    async def call(self, client: Client, prog: int, vers: int, proc: int, serial: int,
                   status: int, pkt: bytes) -> bytes:
        return pkt[packet.PACKET_MIN:]


async def test_call_with_fds_runs_without_them() -> None:
    """The fds' bytes are skipped, the call runs on its own arguments, and the
    connection goes on."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    identity = Identity("unix", "test", False, 0, 0, 1)
    client = Client(_EchoTable(), identity)  # type: ignore[arg-type]
    await asyncio.get_running_loop().connect_accepted_socket(lambda: client, ours)
    try:
        body = struct.pack(">I", 2) + b"args"
        theirs.sendall(packet.packet(PROG, 1, 7, packet.CALL_WITH_FDS, 1, packet.OK, body))
        r, w = os.pipe()
        for _ in range(2):
            socket.send_fds(theirs, [b"\0"], [r])
        os.close(r)
        os.close(w)
        theirs.sendall(packet.packet(PROG, 1, 8, packet.CALL, 2, packet.OK, b"next"))
        theirs.settimeout(5)
        for serial, echo in ((1, b"args"), (2, b"next")):
            reply = await asyncio.to_thread(theirs.recv, packet.PACKET_MIN + 4,
                                            socket.MSG_WAITALL)
            assert packet.HEADER.unpack_from(reply, 4)[3:5] == (packet.REPLY, serial)
            assert reply[packet.PACKET_MIN:] == echo
    finally:
        client.abort()
        theirs.close()


async def test_pump_moves_bytes_both_ways_until_the_client_ends() -> None:
    master, slave = os.openpty()
    fd = console.open_pty(os.ttyname(slave))
    os.close(slave)
    sent: list[bytes] = []
    incoming: asyncio.Queue[bytes] = asyncio.Queue()

    async def send(data: bytes) -> None:
        sent.append(data)

    task = asyncio.ensure_future(console.pump(fd, send, incoming.get, asyncio.Event()))
    os.write(master, b"guest says\n")  # raw mode: no echo, no line editing
    await incoming.put(b"client says")
    for _ in range(100):
        if sent:
            break
        await asyncio.sleep(0.01)
    assert b"".join(sent) == b"guest says\n"
    assert await asyncio.to_thread(os.read, master, 100) == b"client says"
    await incoming.put(b"")  # the client finished
    await asyncio.wait_for(task, 5)
    os.close(master)


async def test_pump_forced_out() -> None:
    master, slave = os.openpty()
    path = os.ttyname(slave)
    first, previous = console.claim(path, False, "busy")
    assert previous is None
    with pytest.raises(VirError, match="busy"):
        console.claim(path, False, "busy")
    fd = console.open_pty(path)
    os.close(slave)

    async def send(data: bytes) -> None:
        pass

    never: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(console.pump(fd, send, lambda: never, first.kicked))
    await asyncio.sleep(0)
    second, previous = console.claim(path, True, "busy")
    assert previous is first and not first.over.is_set()
    with pytest.raises(VirError, match="stream had I/O failure"):
        await asyncio.wait_for(task, 5)
    console.release(path, first)  # the old session's release leaves the new one
    assert first.over.is_set()
    with pytest.raises(VirError, match="busy"):
        console.claim(path, False, "busy")
    console.release(path, second)
    console.release(path, console.claim(path, False, "busy")[0])
    os.close(master)
