"""A QMP monitor connection with deadlines and synchronous event delivery.

``qemu.qmp`` queues events for readers; we want them handled in the order
QEMU sent them, interleaved correctly with command replies, and without a
queue growing while nobody reads. So events go to one callback, called from
the library's reader as they arrive, and the default queue is switched off.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable, Mapping
from typing import Any

from qemu.qmp import EventListener, ExecuteError, QMPClient, QMPError
from qemu.qmp.message import Message

from protocol.errors import ErrorCode, ErrorDomain, VirError

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0

EventCallback = Callable[[str, dict[str, Any]], None]


class _CallbackListener(EventListener):
    """Hands every event to a callback instead of queueing it."""

    def __init__(self, callback: EventCallback, monitor: Monitor) -> None:
        super().__init__()
        self._callback = callback
        self._monitor = monitor

    def accept(self, event: Message) -> bool:
        stamp = event.get("timestamp") or {}
        self._monitor.event_time = (int(stamp.get("seconds", 0)),
                                    int(stamp.get("microseconds", 0)))
        try:
            self._callback(event["event"], dict(event.get("data", {})))
        except Exception:  # a bug in a handler must not kill the monitor
            log.exception("QMP event handler failed for %s", event.get("event"))
        return False


def _timed_out(cmd: str, timeout: float) -> VirError:
    return VirError(
        ErrorCode.OPERATION_TIMEOUT,
        f"Timed out during operation: QEMU monitor command '{cmd}' got no answer within"
        f" {timeout:g}s",
        ErrorDomain.QEMU,
    )


class Monitor:
    """One QMP session to one QEMU."""

    def __init__(self, name: str, on_event: EventCallback) -> None:
        self.name = name
        self.on_event = on_event
        # When QEMU emitted the event being handled (seconds, microseconds):
        # valid inside ``on_event``, for those who forward events as they are.
        self.event_time = (0, 0)
        self._qmp = QMPClient(name)
        self._qmp.events.event_filter = lambda _event: False
        self._qmp.register_listener(_CallbackListener(on_event, self))
        self._closing: asyncio.Future[None] | None = None

    async def connect(self, path: str, timeout: float = CONNECT_TIMEOUT) -> None:
        """Connect and negotiate capabilities (``qmp_capabilities``)."""
        try:
            await asyncio.wait_for(self._qmp.connect(path), timeout)
        except BaseException:
            await self.close()
            raise

    async def execute(
        self, cmd: str, args: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """Run one command; QEMU errors and timeouts become ``VirError``."""
        timeout = COMMAND_TIMEOUT if timeout is None else timeout
        try:
            return await asyncio.wait_for(self._qmp.execute(cmd, args), timeout)
        except asyncio.TimeoutError:
            raise _timed_out(cmd, timeout) from None
        except ExecuteError as e:
            raise VirError(
                ErrorCode.INTERNAL_ERROR,
                f"internal error: unable to execute QEMU command '{cmd}': {e}",
                ErrorDomain.QEMU,
            ) from None
        except QMPError as e:
            raise self._failed(e) from None
        except (EOFError, OSError) as e:
            raise VirError(
                ErrorCode.OPERATION_FAILED,
                "operation failed: domain is no longer running",
                ErrorDomain.QEMU,
            ) from e

    async def execute_raw(self, msg: Mapping[str, Any], timeout: float | None = None) -> Any:
        """Send a command as given and return QEMU's whole reply, errors included
        (a client's own QMP, as ``virsh qemu-monitor-command`` passes it)."""
        timeout = COMMAND_TIMEOUT if timeout is None else timeout
        try:
            return await asyncio.wait_for(self._qmp._raw(dict(msg)), timeout)
        except asyncio.TimeoutError:
            raise _timed_out(str(msg.get("execute")), timeout) from None
        except (QMPError, EOFError, OSError) as e:
            raise self._failed(e) from None

    async def send_fd(self, fd: int, name: str) -> None:
        """Hand QEMU a file descriptor (a tap for a hotplugged NIC) under ``name``."""
        try:
            # By hand: qemu.qmp's send_fd_scm wants asyncio's own socket, not uvloop's.
            writer = self._qmp._writer  # noqa: SLF001
            if writer is None:
                raise OSError("not connected")
            own = writer.transport.get_extra_info("socket")
            with socket.fromfd(own.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("@i", fd))
                sock.sendmsg([b" "], [rights])
        except OSError as e:
            raise self._failed(e) from None
        await self.execute("getfd", {"fdname": name})

    def _failed(self, e: Exception) -> VirError:
        return VirError(
            ErrorCode.OPERATION_FAILED,
            f"operation failed: QEMU monitor of {self.name} failed: {e}",
            ErrorDomain.QEMU,
        )

    async def close(self, timeout: float = 2.0) -> None:
        """Disconnect, first letting the reader take in what QEMU already sent.

        QEMU having gone away (EOF, reset) is the normal way this ends. Several
        callers may ask at once (the exit watcher and destroy): they share one
        disconnect, which ``qemu.qmp`` requires.
        """
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._disconnect(timeout))
        await asyncio.shield(self._closing)

    async def _disconnect(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._qmp.disconnect(), timeout)
        except (asyncio.TimeoutError, EOFError, OSError, QMPError):
            pass
