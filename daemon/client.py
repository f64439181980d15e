"""One connected client: framing, concurrent calls, keepalive, streams.

The hot path is ``data_received`` -> ``_packet`` -> ``_call``: a call runs
eagerly up to its first real suspension, so a call that never waits (most
getters) is answered without creating a task; one that waits continues as a
task and its reply goes out whenever it is ready, in any order. At most
``max_requests`` calls run at a time; beyond that, and while the socket is
not writable or a stream's buffer is full, we stop reading from this client.
Malformed framing closes this connection only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from daemon.keepalive import KeepAlive
from daemon.listeners import Identity
from protocol import packet
from protocol.errors import ErrorCode, ErrorDomain, VirError

if TYPE_CHECKING:
    from daemon.dispatch import Connection, Table
    from daemon.streams import Stream

log = logging.getLogger(__name__)

_LENGTH_FROM = packet.LENGTH.unpack_from
_HEADER_FROM = packet.HEADER.unpack_from
_PREFIX_PACK = packet.PREFIX.pack
_MIN = packet.PACKET_MIN
_MAX = packet.PACKET_MAX
_CALL = packet.CALL
_REPLY = packet.REPLY
_OK = packet.OK
_ERROR = packet.ERROR
_SMALL = 65536  # bodies below this are joined with their header in one write
_BACKLOG_MAX = packet.MESSAGE_MAX  # unsent bytes after which an event drops the client

_REQUESTS = "requests"  # pause reason: too many calls in flight
_WRITING = "writing"  # pause reason: the peer does not read its replies
_TURN = "turn"  # pause reason: a batch was handled, other clients go first
_BATCH = 64  # packets handled per turn


class Client(asyncio.Protocol):
    """The server side of one connection.

    ``identity`` is known before the first byte; ``conn`` is set by
    CONNECT_OPEN; ``server`` gives handlers the daemon-wide services.
    """

    def __init__(self, table: Table, identity: Identity, server: Any = None, *,
                 max_requests: int = 5, keepalive_interval: float = 5,
                 keepalive_count: int = 5, authenticated: bool = True) -> None:
        self.server = server
        self.table = table
        self.identity = identity
        self.authenticated = authenticated
        self.conn: Connection | None = None
        self.loop = asyncio.get_running_loop()
        self.closed = False
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._parsing = False  # inside a parse loop: resuming must not re-enter it
        self._max_requests = max(1, max_requests)
        self._inflight = 0
        self._paused: set[object] = set()
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._streams: dict[int, Stream] = {}
        self._reply_fds: dict[int, list[int]] = {}  # serial -> fds its reply carries
        self._skip = 0  # bytes still to come that carried fds we could not take
        self._held: list[tuple[bytes, bytes, list[int] | None]] | None = None  # _send_fds
        self._tasks: set[asyncio.Task[None]] = set()
        self.keepalive = KeepAlive(keepalive_interval, keepalive_count,
                                   self._send_ping, self._keepalive_dead)
        self.on_close: list[Callable[[Client], None]] = []  # run once when the connection ends

    def __repr__(self) -> str:
        i = self.identity
        return f"<Client {i.listener} pid={i.pid} uid={i.uid}>"

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._transport = None
        self.keepalive.stop()
        for stream in list(self._streams.values()):
            stream.close()
        self._streams.clear()
        self._wake_drain()
        for callback in self.on_close:
            try:
                callback(self)
            except Exception:
                log.exception("close handler of %r failed", self)
        self.on_close.clear()

    def pause_writing(self) -> None:
        self.pause_reading(_WRITING)

    def resume_writing(self) -> None:
        self._wake_drain()
        self.resume_reading(_WRITING)

    def data_received(self, data: bytes) -> None:
        self.keepalive.seen()
        buf = self._buf
        if buf:
            buf += data
            self._parse()
            return
        # Fast path: nothing buffered, take packets straight from ``data``.
        used = self._consume(data)
        if used < len(data) and not self.closed:
            buf += data[used:]

    def _parse(self) -> None:
        """Handle the complete packets in the buffer, as long as we may."""
        buf = self._buf
        del buf[:self._consume(buf)]

    def _consume(self, view: bytes | bytearray) -> int:
        """Handle complete packets at the start of ``view``; return the bytes used.

        Stops when reading is paused, and after a batch of packets, so a
        client that pipelines thousands of calls gives the others a turn.
        """
        pos, end = 0, len(view)
        budget = _BATCH
        self._parsing = True
        try:
            while not self._paused:
                if self._skip:  # the bytes that carried a CALL_WITH_FDS's fds
                    skipped = min(self._skip, end - pos)
                    pos += skipped
                    self._skip -= skipped
                if end - pos < 4:
                    break
                (length,) = _LENGTH_FROM(view, pos)
                if length < _MIN or length > _MAX:
                    self._bad_length(length)
                    return end
                if end - pos < length:
                    break
                if not budget:
                    self.pause_reading(_TURN)
                    self.loop.call_soon(self.resume_reading, _TURN)
                    break
                budget -= 1
                self._packet(view if length == end and type(view) is bytes
                             else bytes(view[pos:pos + length]))
                pos += length
                if self.closed:
                    return end
        finally:
            self._parsing = False
        return pos

    def _bad_length(self, length: int) -> None:
        log.warning("%r: packet length %d out of range, closing", self, length)
        self.abort()

    # -- packets ----------------------------------------------------------------

    def _packet(self, pkt: bytes) -> None:
        prog, vers, proc, type_, serial, status = _HEADER_FROM(pkt, 4)
        if type_ == _CALL:
            self._inflight += 1
            if self._inflight >= self._max_requests:
                self.pause_reading(_REQUESTS)
            _run_eagerly(self._call(prog, vers, proc, serial, status, pkt), self._tasks)
        elif prog == packet.KEEPALIVE_PROGRAM and type_ == packet.MESSAGE:
            if vers == packet.KEEPALIVE_VERSION and proc == packet.KEEPALIVE_PROC_PING:
                self.write_packet(packet.PONG)
        elif type_ == packet.STREAM or type_ == packet.STREAM_HOLE:
            stream = self._streams.get(serial)
            if stream is not None and stream._prefix == (prog, vers, proc):
                stream.feed(type_, status, pkt)
            # else: data for a stream that already ended; dropped like libvirtd
        elif type_ == packet.CALL_WITH_FDS:
            # Each fd follows on a byte of its own, which a plain read takes without
            # the fd: skip those bytes and run the call without fds (the calls that
            # need some have no handler and answer NO_SUPPORT).
            nfds = _LENGTH_FROM(pkt, _MIN)[0] if len(pkt) >= _MIN + 4 else -1
            if not 0 <= nfds <= packet.MESSAGE_NUM_FDS_MAX:
                self.fail(VirError(ErrorCode.RPC, f"Too many FDs to receive: {nfds}",
                                   ErrorDomain.RPC))
                return
            self._skip += nfds
            self._packet(_PREFIX_PACK(len(pkt) - 4, prog, vers, proc, _CALL, serial, status)
                         + pkt[_MIN + 4:])
        else:
            log.debug("%r: ignoring packet of type %d", self, type_)

    async def _call(self, prog: int, vers: int, proc: int, serial: int, status: int,
                    pkt: bytes) -> None:
        try:
            body = await self.table.call(self, prog, vers, proc, serial, status, pkt)
            ok = True
        except VirError as e:
            body = packet.error_body(e.code, e.domain, e.message, e.level, e.int1)
            ok = False
        except Exception:
            log.exception("%r: call %d of program %#x failed", self, proc, prog)
            body = packet.error_body(ErrorCode.INTERNAL_ERROR, ErrorDomain.RPC,
                                     "internal error: unexpected failure in the daemon")
            ok = False
        finally:
            self._inflight -= 1
            if self._inflight < self._max_requests and _REQUESTS in self._paused:
                self.resume_reading(_REQUESTS)
        if len(body) > packet.MESSAGE_PAYLOAD_MAX:
            body = packet.error_body(ErrorCode.RPC, ErrorDomain.RPC,
                                     "Unable to encode message payload")
            ok = False
        fds = self._reply_fds.pop(serial, None)
        if fds is not None and ok:
            self._reply_with_fds(prog, vers, proc, serial, body, fds)
        else:
            _close_all(fds or ())
            self._reply(prog, vers, proc, serial, _OK if ok else _ERROR, body)
        stream = self._streams.get(serial)
        if stream is not None:
            if ok:
                stream.start()
            else:
                stream.close()

    def _reply(self, prog: int, vers: int, proc: int, serial: int, status: int,
               body: bytes) -> None:
        self.write(_PREFIX_PACK(_MIN + len(body), prog, vers, proc, _REPLY, serial, status),
                   body)

    # -- file descriptors -------------------------------------------------------

    def pass_fds(self, serial: int, fds: list[int]) -> None:
        """Send ``fds`` with the reply to call ``serial`` (they are ours to close)."""
        self._reply_fds[serial] = fds

    def _reply_with_fds(self, prog: int, vers: int, proc: int, serial: int, body: bytes,
                        fds: list[int]) -> None:
        """A REPLY_WITH_FDS: the fd count before the body, then each fd on its own
        one-byte message, sent once the packet is all on the socket."""
        body = packet.LENGTH.pack(len(fds)) + body
        header = _PREFIX_PACK(_MIN + len(body), prog, vers, proc, packet.REPLY_WITH_FDS,
                              serial, _OK)
        if self._held is not None:  # fds of an earlier reply still wait: go after them
            self._held.append((header, body, fds))
            return
        self.write(header, body)
        self._held = []
        self._send_fds(fds)

    def _send_fds(self, fds: list[int]) -> None:
        """Send ``fds`` as soon as what is queued before them is written; other
        packets wait in ``_held`` meanwhile, so none slips in between."""
        transport = self._transport
        if transport is None:
            _close_all(fds)
            return
        if transport.get_write_buffer_size():
            self.loop.call_later(0.001, self._send_fds, fds)
            return
        own = transport.get_extra_info("socket")
        try:
            with socket.fromfd(own.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                for fd in fds:
                    socket.send_fds(sock, [b"\0"], [fd])
        except OSError as e:
            log.warning("%r: cannot pass file descriptors: %s", self, e)
            self.abort()
        finally:
            _close_all(fds)
        held, self._held = self._held or [], None
        for i, (header, body, more) in enumerate(held):
            self.write(header, body)
            if more is not None:
                self._held = held[i + 1:]
                self._send_fds(more)
                return

    # -- output -----------------------------------------------------------------

    def write(self, header: bytes, body: bytes | memoryview = b"") -> None:
        """Queue one packet given as its header and body."""
        transport = self._transport
        if transport is None:
            return
        if self._held is not None:
            self._held.append((header, bytes(body), None))
            return
        if len(body) < _SMALL:
            transport.write(header + body)
        else:
            transport.writelines((header, body))

    def write_packet(self, data: bytes) -> None:
        if self._held is not None:
            self._held.append((data, b"", None))
        elif self._transport is not None:
            self._transport.write(data)

    def send_message(self, prog: int, vers: int, proc: int, body: bytes) -> None:
        """An asynchronous MESSAGE (an event) to this client.

        Events are not paced by the client's calls; one that stopped reading
        is dropped before its backlog grows without bound.
        """
        transport = self._transport
        if transport is None:
            return
        if transport.get_write_buffer_size() > _BACKLOG_MAX:
            log.warning("%r: not reading its events, closing", self)
            self.abort()
            return
        self.write(_PREFIX_PACK(_MIN + len(body), prog, vers, proc, packet.MESSAGE, 1, _OK),
                   body)

    async def drain(self) -> None:
        """Wait until the socket takes more data (or the client is gone)."""
        if _WRITING not in self._paused or self.closed:
            return
        waiter = self.loop.create_future()
        self._drain_waiters.append(waiter)
        await waiter

    def _wake_drain(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- flow control -----------------------------------------------------------

    def pause_reading(self, reason: object) -> None:
        if not self._paused and self._transport is not None:
            self._transport.pause_reading()
        self._paused.add(reason)

    def resume_reading(self, reason: object) -> None:
        if reason not in self._paused:
            return
        self._paused.discard(reason)
        if self._paused or self._transport is None:
            return
        if self._buf and not self._parsing:
            self._parse()  # packets that arrived before we paused come first
            if self._paused or self.closed:
                return
        self._transport.resume_reading()

    # -- streams ----------------------------------------------------------------

    def add_stream(self, stream: Stream) -> None:
        self._streams[stream.serial] = stream

    def forget_stream(self, stream: Stream) -> None:
        if self._streams.get(stream.serial) is stream:
            del self._streams[stream.serial]

    # -- keepalive and closing --------------------------------------------------

    def _send_ping(self) -> None:
        self.write_packet(packet.PING)

    def _keepalive_dead(self) -> None:
        log.info("%r: connection closed due to keepalive timeout", self)
        self.abort()

    def fail(self, error: VirError) -> None:
        """The peer broke the protocol: log why and drop the connection."""
        log.warning("%r: %s, closing", self, error.message)
        self.abort()

    def close(self) -> None:
        """Close after what is queued has been written."""
        if self._transport is not None and not self.closed:
            self.closed = True
            self._transport.close()

    def abort(self) -> None:
        """Close now, dropping whatever is queued."""
        if self._transport is not None:
            self.closed = True
            self._transport.abort()


def _close_all(fds: list[int] | tuple[int, ...]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _run_eagerly(coro: Coroutine[Any, Any, None], tasks: set[asyncio.Task[None]]) -> None:
    """Run ``coro`` now until it first waits; continue it as a task only then.

    Most calls finish without ever waiting; they cost no task and no extra
    trip through the event loop.
    """
    try:
        waiting_on = coro.send(None)
    except StopIteration:
        return
    loop = asyncio.get_running_loop()

    def resume(_: object = None) -> None:
        task = loop.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    if waiting_on is None:  # a bare yield: it only wants the loop to run once
        loop.call_soon(resume)
    else:  # a future: the task may take over once it is done
        waiting_on._asyncio_future_blocking = False
        waiting_on.add_done_callback(resume)
