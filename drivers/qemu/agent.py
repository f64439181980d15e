"""A client of the QEMU guest agent (qemu-ga) on a guest's virtio channel.

The agent speaks QMP-like JSON over ``org.qemu.guest_agent.0``, whose host
end is a unix socket QEMU serves. Nothing tells us whether the agent inside
heard us, so every exchange starts in sync: ``guest-sync-delimited`` with a
fresh id, whose reply comes after a 0xFF byte; bytes before it (the answer to
a command that timed out earlier) are dropped. A silent agent fails its own
call after a deadline; other calls never wait on it beyond their own turn.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from typing import TYPE_CHECKING, Any

from drivers.qemu.domain import State, not_running
from protocol.errors import ErrorCode, ErrorDomain, VirError

if TYPE_CHECKING:
    from drivers.qemu.domain import Domain
    from drivers.qemu.process import QemuProcess

AGENT_CHANNEL = "org.qemu.guest_agent.0"
# libvirt's default wait for one agent command, and for guest-shutdown.
DEFAULT_TIMEOUT = 5.0
SHUTDOWN_TIMEOUT = 60.0
# virDomainQemuAgentCommandTimeoutValues
COMMAND_BLOCK = -2
COMMAND_DEFAULT = -1
COMMAND_NOWAIT = 0
MAX_LINE = 16 * 1024 * 1024

# What libvirt says instead of an agent's bare error class.
_CLASS_TEXT = {
    "BufferOverrun": "Buffer overrun",
    "CommandDisabled": "The command has been disabled for this instance",
    "CommandNotFound": "The command has not been found",
    "FdNotFound": "File descriptor not found",
    "InvalidParameter": "Invalid parameter",
    "InvalidParameterType": "Invalid parameter type",
    "InvalidParameterValue": "Invalid parameter value",
    "OpenFileFailed": "Cannot open file",
    "QgaCommandFailed": "Guest agent command failed",
    "QMPBadInputObjectMember": "Bad QMP input object member",
    "QMPExtraInputObjectMember": "Unexpected extra object member",
    "UndefinedError": "An undefined error has occurred",
    "Unsupported": "this feature or command is not currently supported",
}


def unresponsive(what: str) -> VirError:
    return VirError(
        ErrorCode.AGENT_UNRESPONSIVE, f"Guest agent is not responding: {what}", ErrorDomain.QEMU
    )


def command_failed(name: str, error: Any = None) -> VirError:
    text = f"internal error: unable to execute QEMU agent command '{name}'"
    if isinstance(error, dict):
        desc = error.get("desc") or _CLASS_TEXT.get(error.get("class", ""), error.get("class"))
        text += f": {desc or 'unknown QEMU command error'}"
    return VirError(ErrorCode.INTERNAL_ERROR, text, ErrorDomain.QEMU)


class Agent:
    """One connection to one guest's agent socket; one command at a time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._in_sync = False
        self._next_id = int(time.time() * 1000)

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def _connect(self) -> None:
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_unix_connection(self.path, limit=MAX_LINE), DEFAULT_TIMEOUT
            )
        except (OSError, asyncio.TimeoutError) as e:
            raise unresponsive(f"cannot connect to {self.path}: {e}") from None
        self._in_sync = False

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
        self._in_sync = False

    async def execute(
        self,
        cmd: str,
        args: dict[str, Any] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        until: asyncio.Future[None] | None = None,
    ) -> Any:
        """Run ``cmd`` and return its ``return`` value.

        ``timeout`` None waits for ever, 0 does not wait for the reply.
        ``until`` is for commands the agent may never answer (guest-shutdown):
        the call also ends, successfully, when that future is done or when
        the agent closes its end.
        """
        message = {"execute": cmd, **({"arguments": args} if args is not None else {})}
        reply = await self.send(message, timeout, until)
        if reply is None:
            return None
        if "error" in reply:
            raise command_failed(cmd, reply["error"])
        if "return" not in reply:
            raise command_failed(cmd)
        return reply["return"]

    async def send(
        self,
        message: Any,
        timeout: float | None = DEFAULT_TIMEOUT,
        until: asyncio.Future[None] | None = None,
    ) -> dict[str, Any] | None:
        """Send one JSON command, return the agent's whole reply object (None if not waited)."""
        async with self._lock:
            if not self.connected:
                await self._connect()
            if not self._in_sync:
                await self._sync()
            assert self._writer is not None
            self._writer.write(json.dumps(message).encode() + b"\n")
            if timeout == 0:
                await self._writer.drain()
                return None
            reading = asyncio.ensure_future(self._read_reply(None))
            waits: set[asyncio.Future[Any]] = {reading}
            if until is not None:
                waits.add(until)
            try:
                done, _ = await asyncio.wait(waits, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not reading.done():
                    reading.cancel()
            gone = reading.done() and not reading.cancelled() and reading.exception() is not None
            if until is not None and (until.done() or gone):
                # What was waited for happened, or the agent went away with
                # its guest (as it does on a power-off): either way it is done.
                self._in_sync = False
                return None
            if reading in done:
                return reading.result()
            self._in_sync = False
            raise unresponsive("Guest agent not available for now")

    async def _sync(self) -> None:
        """``guest-sync-delimited`` until the agent echoes our id after its 0xFF."""
        assert self._writer is not None
        self._next_id += 1
        sync_id = self._next_id
        # A leading 0xFF makes the agent drop any half-read command of ours.
        request = {"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}
        self._writer.write(b"\xff" + json.dumps(request).encode() + b"\n")
        try:
            await asyncio.wait_for(self._read_reply(sync_id), DEFAULT_TIMEOUT)
        except asyncio.TimeoutError:
            raise unresponsive("Guest agent not available for now") from None
        self._in_sync = True

    async def _read_reply(self, sync_id: int | None) -> dict[str, Any]:
        """The next reply object; with ``sync_id``, the sync reply echoing it."""
        assert self._reader is not None
        while True:
            try:
                if sync_id is not None:
                    await self._reader.readuntil(b"\xff")
                line = await self._reader.readline()
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                line = b""
            if not line:
                self.close()
                raise unresponsive("Guest agent disappeared while executing command")
            line = line.strip(b"\xff \r\n")
            if not line:
                continue
            try:
                reply = json.loads(line)
            except ValueError:
                continue  # noise from before the agent started
            if not isinstance(reply, dict):
                continue
            if sync_id is None:
                return reply
            if reply.get("return") == sync_id:
                return reply


# -- which agent a domain has ------------------------------------------------------

_agents: weakref.WeakKeyDictionary[Domain, tuple[QemuProcess, Agent]] = (
    weakref.WeakKeyDictionary()
)


def agent_channel(dom: Domain) -> Any:
    """The guest's qemu-ga channel (a unix socket channel), or None."""
    for ch in dom.definition.devices.channels:
        if ch.target_type == "virtio" and ch.target_name == AGENT_CHANNEL:
            if ch.source.type == "unix":
                return ch
    return None


def available(dom: Domain) -> bool:
    """The guest runs and its agent has its end of the channel open."""
    ch = agent_channel(dom)
    if ch is None or dom.live_state is None or dom.state != State.RUNNING:
        return False
    return dom.live_state.channel_states.get(ch.info.alias or "") == "connected"


def agent_for(dom: Domain) -> Agent:
    """The domain's agent, ready for a command, or libvirt's error why not."""
    if not dom.active or dom.process is None or dom.state != State.RUNNING:
        raise not_running()
    ch = agent_channel(dom)
    if ch is None:
        raise VirError(
            ErrorCode.ARGUMENT_UNSUPPORTED,
            "argument unsupported: QEMU guest agent is not configured",
            ErrorDomain.QEMU,
        )
    if not available(dom):
        drop(dom)
        raise unresponsive("QEMU guest agent is not connected")
    proc = dom.process
    known = _agents.get(dom)
    if known is not None and known[0] is proc and known[1].path == ch.source.attrs.get("path"):
        return known[1]
    drop(dom)
    agent = Agent(ch.source.attrs.get("path", ""))
    _agents[dom] = (proc, agent)
    return agent


def drop(dom: Domain) -> None:
    """Forget the domain's agent connection (guest stopped, or agent gone)."""
    known = _agents.pop(dom, None)
    if known is not None:
        known[1].close()


async def arbitrary_command(dom: Domain, text: str, timeout: int) -> str:
    """virDomainQemuAgentCommand: the caller's JSON as is, the agent's whole reply as text.

    ``timeout`` is in seconds, or COMMAND_BLOCK / COMMAND_DEFAULT / COMMAND_NOWAIT.
    """
    if timeout < COMMAND_BLOCK:
        raise VirError(
            ErrorCode.INVALID_ARG,
            f"invalid argument: guest agent timeout '{timeout}' is less than"
            f" the minimum '{COMMAND_BLOCK}'",
            ErrorDomain.QEMU,
        )
    client = agent_for(dom)
    try:
        message = json.loads(text)
    except ValueError as e:
        raise VirError(
            ErrorCode.INTERNAL_ERROR,
            f"internal error: cannot parse json {text}: {e}",
            ErrorDomain.QEMU,
        ) from None
    wait = {COMMAND_BLOCK: None, COMMAND_DEFAULT: DEFAULT_TIMEOUT}.get(timeout, float(timeout))
    reply = await client.send(message, wait)
    if reply is None:
        raise unresponsive("Guest agent not available for now")
    name = message.get("execute") if isinstance(message, dict) else None
    if not isinstance(name, str):
        name = "<unknown>"  # sent as it is all the same: the agent has the last word
    if "error" in reply:
        raise command_failed(name, reply["error"])
    if "return" not in reply:
        raise command_failed(name)
    return json.dumps(reply, separators=(",", ":"))
