"""daemon.client (with keepalive and streams): framing, concurrency, flow control.

A fake dispatch table stands in for the real one; the client talks to a real
socket pair, the test plays the libvirt client on the other end.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest

from daemon.client import Client
from daemon.listeners import Identity
from daemon.streams import Hole, Stream
from protocol import packet
from protocol.errors import ErrorCode, ErrorDomain, VirError

PROG = 0x20008086

FAST, SLOW, FAIL, CRASH, BLOCK, UPLOAD, DOWNLOAD = range(1, 8)


class FakeTable:
    """Procedures by number: each shows one behaviour of a handler."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.running = 0
        self.most = 0
        self.received: list[bytes | Hole] = []

    async def call(self, client: Client, prog: int, vers: int, proc: int, serial: int,
                   status: int, pkt: bytes) -> bytes:
        if proc == FAST:
            return b"fast"
        if proc == SLOW:
            await asyncio.sleep(0.05)
            return b"slow"
        if proc == FAIL:
            raise VirError(ErrorCode.NO_DOMAIN, "Domain not found: x", ErrorDomain.QEMU)
        if proc == CRASH:
            raise RuntimeError("bug")
        if proc == BLOCK:
            self.running += 1
            self.most = max(self.most, self.running)
            await self.release.wait()
            self.running -= 1
            return b""
        if proc in (UPLOAD, DOWNLOAD):
            stream = Stream(client, prog, vers, proc, serial, sparse=True, limit=8)
            client.add_stream(stream)
            stream.serve(self._upload(stream) if proc == UPLOAD else self._download(stream))
            return b""
        raise AssertionError(proc)

    async def _upload(self, stream: Stream) -> None:
        while (item := await stream.recv()) != b"":
            self.received.append(item)

    async def _download(self, stream: Stream) -> None:
        await stream.send(b"a" * 300000)
        await stream.send_hole(1 << 20)


class Peer:
    """The libvirt client's side of the socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.buf = b""

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def call(self, proc: int, serial: int, body: bytes = b"") -> None:
        await self.send(packet.packet(PROG, 1, proc, packet.CALL, serial, packet.OK, body))

    async def recv(self, timeout: float = 2) -> tuple[tuple[int, ...], bytes] | None:
        async def read() -> tuple[tuple[int, ...], bytes] | None:
            while True:
                if len(self.buf) >= 4:
                    (n,) = struct.unpack_from(">I", self.buf)
                    if len(self.buf) >= n:
                        pkt, self.buf = self.buf[:n], self.buf[n:]
                        return packet.HEADER.unpack_from(pkt, 4), pkt[28:]
                chunk = await self.loop.sock_recv(self.sock, 1 << 20)
                if not chunk:
                    return None
                self.buf += chunk
        return await asyncio.wait_for(read(), timeout)


@pytest.fixture
async def pair() -> Any:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    table = FakeTable()
    made: list[Client] = []

    async def connect(**kw: Any) -> tuple[Client, Peer, FakeTable]:
        client = Client(table, Identity("unix", "test", False, 0, 0, 1), **kw)  # type: ignore[arg-type]
        await asyncio.get_running_loop().connect_accepted_socket(lambda: client, ours)
        made.append(client)
        return client, Peer(theirs), table

    yield connect
    for client in made:
        client.abort()
    theirs.close()


async def test_replies_in_completion_order(pair: Any) -> None:
    _, peer, _ = await pair()
    await peer.call(SLOW, 1)
    await peer.call(FAST, 2)
    first, second = await peer.recv(), await peer.recv()
    assert (first[0][4], first[1]) == (2, b"fast")
    assert (second[0][4], second[1]) == (1, b"slow")
    assert first[0] == (PROG, 1, FAST, packet.REPLY, 2, packet.OK)


async def test_pipelined_calls_in_one_write(pair: Any) -> None:
    _, peer, _ = await pair()
    await peer.send(b"".join(packet.packet(PROG, 1, FAST, packet.CALL, s, packet.OK)
                             for s in range(10, 14)))
    assert [(await peer.recv())[0][4] for _ in range(4)] == [10, 11, 12, 13]


async def test_packet_split_across_writes(pair: Any) -> None:
    _, peer, _ = await pair()
    data = packet.packet(PROG, 1, FAST, packet.CALL, 5, packet.OK, b"x" * 1000)
    for i in range(0, len(data), 7):
        await peer.send(data[i:i + 7])
        await asyncio.sleep(0)
    assert (await peer.recv())[0][4] == 5


async def test_errors_become_error_replies(pair: Any) -> None:
    _, peer, _ = await pair()
    await peer.call(FAIL, 1)
    header, body = await peer.recv()
    assert header[5] == packet.ERROR
    assert packet.decode_error(body) == (42, 10, "Domain not found: x", 2)
    await peer.call(CRASH, 2)
    header, body = await peer.recv()
    assert header[5] == packet.ERROR and packet.decode_error(body)[0] == 1
    await peer.call(FAST, 3)  # and the connection goes on
    assert (await peer.recv())[1] == b"fast"


@pytest.mark.parametrize("length", [0, 4, 27, packet.PACKET_MAX + 1, 0xFFFFFFFF])
async def test_bad_length_closes_the_connection(pair: Any, length: int) -> None:
    client, peer, _ = await pair()
    await peer.send(struct.pack(">I", length) + b"\0" * 24)
    assert await peer.recv() is None
    assert client.closed


async def test_largest_length_is_accepted_before_the_body_arrives(pair: Any) -> None:
    client, peer, _ = await pair()
    await peer.send(struct.pack(">I", packet.PACKET_MAX) + b"\0" * 24)
    await asyncio.sleep(0.05)
    assert not client.closed


async def test_at_most_max_requests_in_flight(pair: Any) -> None:
    client, peer, table = await pair(max_requests=3)
    for serial in range(1, 7):
        await peer.call(BLOCK, serial)
    await peer.call(FAST, 99)
    await asyncio.sleep(0.1)
    assert table.running == 3
    table.release.set()
    serials = sorted([(await peer.recv())[0][4] for _ in range(7)])
    assert serials == [1, 2, 3, 4, 5, 6, 99]
    assert table.most == 3


async def test_keepalive_ping_gets_pong(pair: Any) -> None:
    _, peer, _ = await pair()
    await peer.send(packet.PING)
    assert (await peer.recv())[0] == (packet.KEEPALIVE_PROGRAM, 1, packet.KEEPALIVE_PROC_PONG,
                                      packet.MESSAGE, 0, packet.OK)


async def test_keepalive_pings_a_silent_client_then_drops_it(pair: Any) -> None:
    client, peer, _ = await pair(keepalive_interval=0.1, keepalive_count=2)
    client.keepalive.start()
    pings = 0
    while (msg := await peer.recv(timeout=1)) is not None:
        assert msg[0][2] == packet.KEEPALIVE_PROC_PING
        pings += 1
    assert pings == 2 and client.closed


async def test_keepalive_answered_keeps_the_client(pair: Any) -> None:
    client, peer, _ = await pair(keepalive_interval=0.05, keepalive_count=1)
    client.keepalive.start()
    for _ in range(4):
        assert (await peer.recv())[0][2] == packet.KEEPALIVE_PROC_PING
        await peer.send(packet.PONG)
    assert not client.closed


async def test_no_keepalive_until_started(pair: Any) -> None:
    client, peer, _ = await pair(keepalive_interval=0.05, keepalive_count=1)
    with pytest.raises(asyncio.TimeoutError):
        await peer.recv(timeout=0.2)
    assert not client.closed


async def test_message_packets(pair: Any) -> None:
    client, peer, _ = await pair()
    client.send_message(PROG, 1, 107, b"body")
    assert await peer.recv() == ((PROG, 1, 107, packet.MESSAGE, 1, packet.OK), b"body")


def _stream(proc: int, serial: int, status: int, body: bytes = b"",
            type_: int = packet.STREAM) -> bytes:
    return packet.packet(PROG, 1, proc, type_, serial, status, body)


async def test_upload_stream(pair: Any) -> None:
    _, peer, table = await pair()
    await peer.call(UPLOAD, 4)
    assert (await peer.recv())[0][3:] == (packet.REPLY, 4, packet.OK)
    await peer.send(_stream(UPLOAD, 4, packet.CONTINUE, b"hello"))
    await peer.send(_stream(UPLOAD, 4, packet.CONTINUE, struct.pack(">qI", 4096, 0),
                            packet.STREAM_HOLE))
    await peer.send(_stream(UPLOAD, 4, packet.CONTINUE, b"world"))
    await peer.send(_stream(UPLOAD, 4, packet.OK))
    assert await peer.recv() == ((PROG, 1, UPLOAD, packet.STREAM, 4, packet.OK), b"")
    assert table.received == [b"hello", Hole(4096), b"world"]


async def test_upload_backpressure_pauses_reading(pair: Any) -> None:
    client, peer, table = await pair()
    await peer.call(UPLOAD, 4)
    await peer.recv()
    stream = client._streams[4]
    stream._task.cancel()  # nobody consumes: the buffer must fill and stop us
    await peer.send(_stream(UPLOAD, 4, packet.CONTINUE, b"123456789"))
    await peer.call(FAST, 5)
    with pytest.raises(asyncio.TimeoutError):
        await peer.recv(timeout=0.2)
    assert await stream.recv() == b"123456789"  # consumer catches up: reading resumes
    assert (await peer.recv())[1] == b"fast"


async def test_upload_abort_by_client(pair: Any) -> None:
    _, peer, _ = await pair()
    await peer.call(UPLOAD, 4)
    await peer.recv()
    await peer.send(_stream(UPLOAD, 4, packet.ERROR))
    assert await peer.recv() == ((PROG, 1, UPLOAD, packet.STREAM, 4, packet.OK), b"")


async def test_download_stream(pair: Any) -> None:
    _, peer, _ = await pair()
    await peer.call(DOWNLOAD, 8)
    assert (await peer.recv())[0][3] == packet.REPLY
    data = b""
    while True:
        header, body = await peer.recv()
        if header[3] == packet.STREAM_HOLE:
            assert struct.unpack(">qI", body) == (1 << 20, 0)
            continue
        assert header[5] == packet.CONTINUE and len(body) <= 262144
        if not body:  # the end of data, as libvirtd sends it
            break
        data += body
    assert data == b"a" * 300000
    await peer.send(_stream(DOWNLOAD, 8, packet.OK))  # the client's finish is confirmed
    assert await peer.recv() == ((PROG, 1, DOWNLOAD, packet.STREAM, 8, packet.OK), b"")


async def test_stray_stream_packets_are_ignored(pair: Any) -> None:
    _, peer, _ = await pair()
    await peer.send(_stream(FAST, 77, packet.CONTINUE, b"late"))
    await peer.call(FAST, 1)
    assert (await peer.recv())[0][4] == 1


async def test_client_not_reading_its_events_is_dropped(pair: Any) -> None:
    client, peer, _ = await pair()
    body = b"e" * 65536
    for _ in range(400):  # far more than the socket buffers hold
        client.send_message(PROG, 1, 107, body)
        if client.closed:
            break
    assert client.closed


async def test_long_pipelines_are_handled_in_turns(pair: Any) -> None:
    client, peer, _ = await pair()
    await peer.send(b"".join(packet.packet(PROG, 1, FAST, packet.CALL, s, packet.OK)
                             for s in range(1000)))
    serials = [(await peer.recv())[0][4] for _ in range(1000)]
    assert serials == list(range(1000))
    assert not client._buf and not client._paused
