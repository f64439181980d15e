"""Data streams riding on a call: console I/O, volume upload and download.

A procedure marked ``@readstream`` or ``@writestream`` gets a :class:`Stream`
in ``call.stream``. The handler sets things up, hands the transfer to
:meth:`Stream.serve` and returns; the transfer starts once the reply is on
the wire, as libvirt clients expect.

Packets of a stream share the call's program, procedure and serial. Data goes
as STREAM/CONTINUE, holes as STREAM_HOLE, an abort as STREAM/ERROR with an
error body. The end is libvirt's handshake: the client's finish is an empty
STREAM/OK, which we confirm with the same; our end of data is an empty
STREAM/CONTINUE, after which the client finishes and we confirm (a STREAM/OK
the client did not ask for breaks its connection). Both directions are bounded: incoming data beyond
``limit`` bytes pauses reading the connection, sending waits for the socket.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from protocol import packet
from protocol.errors import ErrorCode, ErrorDomain, VirError

if TYPE_CHECKING:
    from daemon.client import Client

log = logging.getLogger(__name__)

_HOLE = struct.Struct(">qI")
#: Largest data packet we send; what libvirt clients of every age accept.
CHUNK = packet.MESSAGE_LEGACY_PAYLOAD_MAX
#: Incoming bytes buffered before we stop reading from the client.
LIMIT = 4 * CHUNK


class Hole:
    """A run of ``length`` zero bytes not sent as data (sparse streams)."""

    __slots__ = ("length", "flags")

    def __init__(self, length: int, flags: int = 0) -> None:
        self.length = length
        self.flags = flags

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Hole) and (self.length, self.flags) == (other.length, other.flags)

    def __repr__(self) -> str:
        return f"Hole({self.length})"


def _aborted() -> VirError:
    return VirError(ErrorCode.RPC, "stream aborted at client request", ErrorDomain.STREAMS)


class Stream:
    """One stream of one client; see the module docstring for the protocol."""

    def __init__(self, client: Client, prog: int, vers: int, proc: int, serial: int,
                 *, sparse: bool = False, limit: int = LIMIT) -> None:
        self.client = client
        self.sparse = sparse
        self._prefix = (prog, vers, proc)
        self.serial = serial
        self._limit = limit
        self._queue: deque[bytes | Hole] = deque()
        self._queued = 0
        self._eof = False  # the client finished sending
        self._done = False  # we finished sending
        self._error: VirError | None = None
        #: A transfer's error ends our data and answers the client's finish, as
        #: libvirtd's volume downloads report a failed read (set by the handler).
        self.late_errors = False
        self._late: VirError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._pending: Coroutine[Any, Any, None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.closed = False

    # -- for handlers -----------------------------------------------------------

    def serve(self, transfer: Coroutine[Any, Any, None]) -> None:
        """Run ``transfer`` once the call's reply has been sent.

        It ends the stream when it returns (unless it did so itself); a
        ``VirError`` it raises aborts the stream with that error.
        """
        self._pending = transfer

    async def recv(self) -> bytes | Hole:
        """The next piece the client sent; ``b""`` once it finished sending."""
        while not self._queue:
            if self._error is not None:
                raise self._error
            if self._eof or self.closed:
                return b""
            self._waiter = self.client.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._queue.popleft()
        if isinstance(item, bytes):
            self._queued -= len(item)
            if self._queued < self._limit:
                self.client.resume_reading(self)
        return item

    async def send(self, data: bytes) -> None:
        """Send data, waiting while the client reads slower than we produce."""
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            self._check()
            await self.client.drain()
            self._check()
            self._packet(packet.STREAM, packet.CONTINUE, view[start:start + CHUNK])

    async def send_hole(self, length: int, flags: int = 0) -> None:
        self._check()
        await self.client.drain()
        self._check()
        self._packet(packet.STREAM_HOLE, packet.CONTINUE, _HOLE.pack(length, flags))

    async def finish(self) -> None:
        """End the stream successfully (end of data, or the confirmation)."""
        if self.closed:
            return
        self._check()
        if self._eof:
            self._confirm()
            return
        self._packet(packet.STREAM, packet.CONTINUE, b"")
        self._done = True

    async def abort(self, error: VirError) -> None:
        """End the stream with an error the client will report."""
        if self.closed:
            return
        self._packet(packet.STREAM, packet.ERROR, packet.error_body(
            error.code, error.domain, error.message, error.level, error.int1))
        self._close()

    # -- for the client ---------------------------------------------------------

    def start(self) -> None:
        """The reply went out: begin the transfer the handler set up."""
        if self._pending is not None:
            self._task = self.client.loop.create_task(self._run(self._pending))
            self._pending = None

    def feed(self, type_: int, status: int, pkt: bytes) -> None:
        """A packet of this stream arrived from the client."""
        if type_ == packet.STREAM_HOLE:
            if not self.sparse:
                self.client.fail(VirError(ErrorCode.RPC, "Unexpected stream hole",
                                          ErrorDomain.STREAMS))
                return
            length, flags = _HOLE.unpack_from(pkt, packet.PACKET_MIN)
            self._push(Hole(length, flags))
        elif status == packet.CONTINUE:
            data = pkt[packet.PACKET_MIN:]
            self._queued += len(data)
            self._push(data)
            if self._queued >= self._limit:
                self.client.pause_reading(self)
        elif status == packet.OK:
            self._eof = True
            if self._done:  # our end already went out: confirm and be done
                self._confirm()
            else:
                self._wake()
        else:  # the client aborts: confirm, and stop whoever works on it
            self._error = _aborted()
            self._packet(packet.STREAM, packet.OK, b"")
            self._close()

    def close(self) -> None:
        """The connection is gone: stop the transfer."""
        if not self.closed:
            self._error = self._error or VirError(
                ErrorCode.RPC, "stream had unexpected termination", ErrorDomain.STREAMS)
            self._close()
        if self._pending is not None:
            self._pending.close()
            self._pending = None
        if self._task is not None:
            self._task.cancel()

    # -- inside -----------------------------------------------------------------

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self.closed:
            raise VirError(ErrorCode.RPC, "stream is closed", ErrorDomain.STREAMS)

    def _confirm(self) -> None:
        """Answer the client's finish: OK, or the error kept for it."""
        if self._late is not None:
            self._packet(packet.STREAM, packet.ERROR, packet.error_body(
                self._late.code, self._late.domain, self._late.message, self._late.level,
                self._late.int1))
        else:
            self._packet(packet.STREAM, packet.OK, b"")
        self._close()

    def _packet(self, type_: int, status: int, body: bytes | memoryview) -> None:
        prog, vers, proc = self._prefix
        self.client.write(packet.PREFIX.pack(packet.PACKET_MIN + len(body), prog, vers, proc,
                                             type_, self.serial, status), body)

    def _push(self, item: bytes | Hole) -> None:
        self._queue.append(item)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _close(self) -> None:
        self.closed = True
        self._queue.clear()
        self._queued = 0
        self._wake()
        self.client.resume_reading(self)
        self.client.forget_stream(self)

    async def _run(self, transfer: Coroutine[Any, Any, None]) -> None:
        try:
            await transfer
        except VirError as e:
            if self.closed:
                pass
            elif self.late_errors and not self._done:
                self._late = e
                await self.finish()
            else:
                await self.abort(e)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("stream transfer failed")
            await self.abort(VirError(ErrorCode.INTERNAL_ERROR,
                                      "internal error: stream transfer failed",
                                      ErrorDomain.STREAMS))
        else:
            await self.finish()
