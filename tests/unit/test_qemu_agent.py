"""The guest agent client against a fake agent on a unix socket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from drivers.qemu import agent
from drivers.qemu.agent import Agent
from protocol.errors import ErrorCode, VirError

Answer = Callable[[dict[str, Any]], bytes | None]


class FakeAgent:
    """Reads JSON lines (dropping 0xFF resets), answers with ``answer(cmd)``."""

    def __init__(self, path: Path, answer: Answer) -> None:
        self.path, self.answer = path, answer
        self.seen: list[str] = []
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, str(self.path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            cmd = json.loads(line.replace(b"\xff", b""))
            self.seen.append(cmd["execute"])
            out = self.answer(cmd)
            if out == b"CLOSE":
                break
            if out is not None:
                writer.write(out)
                await writer.drain()
        writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


def sync_reply(cmd: dict[str, Any]) -> bytes:
    return b"\xff" + json.dumps({"return": cmd["arguments"]["id"]}).encode() + b"\n"


def qga(replies: dict[str, Any]) -> Answer:
    """A well-behaved agent: syncs, and answers each command from ``replies``."""

    def answer(cmd: dict[str, Any]) -> bytes | None:
        if cmd["execute"] == "guest-sync-delimited":
            return sync_reply(cmd)
        reply = replies.get(cmd["execute"])
        if callable(reply):
            reply = reply(cmd)
        return None if reply is None else json.dumps(reply).encode() + b"\n"

    return answer


Make = Callable[[Answer], Awaitable[FakeAgent]]


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[Make]:
    fakes: list[FakeAgent] = []

    async def make(answer: Answer) -> FakeAgent:
        f = FakeAgent(tmp_path / f"qga{len(fakes)}.sock", answer)
        await f.start()
        fakes.append(f)
        return f

    yield make
    for f in fakes:
        await f.stop()


async def test_sync_then_command(fake: Make) -> None:
    f = await fake(qga({"guest-get-host-name": {"return": {"host-name": "tiny"}}}))
    a = Agent(str(f.path))
    assert await a.execute("guest-get-host-name") == {"host-name": "tiny"}
    assert await a.execute("guest-get-host-name") == {"host-name": "tiny"}
    # In sync after the first exchange: one handshake for both commands.
    assert f.seen == ["guest-sync-delimited", "guest-get-host-name", "guest-get-host-name"]
    a.close()


async def test_leftovers_before_the_delimiter_are_dropped(fake: Make) -> None:
    def answer(cmd: dict[str, Any]) -> bytes | None:
        if cmd["execute"] == "guest-sync-delimited":
            stale = b'{"return": 12}\n{"return": {"late": 1}}\n'
            return stale + sync_reply(cmd)
        return b'{"return": {}}\n'

    f = await fake(answer)
    a = Agent(str(f.path))
    assert await a.execute("guest-ping") == {}
    a.close()


async def test_silent_agent_times_out_alone(fake: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent, "DEFAULT_TIMEOUT", 0.3)
    silent = await fake(lambda cmd: None)
    good = await fake(qga({"guest-ping": {"return": {}}}))
    slow = asyncio.ensure_future(Agent(str(silent.path)).execute("guest-ping", timeout=0.3))
    # Another guest's agent answers while the silent one is being waited for.
    assert await Agent(str(good.path)).execute("guest-ping") == {}
    assert not slow.done()
    with pytest.raises(VirError) as e:
        await slow
    assert e.value.code == ErrorCode.AGENT_UNRESPONSIVE
    assert e.value.message == "Guest agent is not responding: Guest agent not available for now"


async def test_late_answer_after_timeout_is_not_taken_for_the_next(fake: Make) -> None:
    state = {"slow": True}

    def answer(cmd: dict[str, Any]) -> bytes | None:
        if cmd["execute"] == "guest-sync-delimited":
            return sync_reply(cmd)
        if cmd["execute"] == "guest-get-time" and state["slow"]:
            state["slow"] = False
            return None  # answered only later, see below
        return json.dumps({"return": cmd["execute"]}).encode() + b"\n"

    f = await fake(answer)
    a = Agent(str(f.path))
    with pytest.raises(VirError):
        await a.execute("guest-get-time", timeout=0.2)
    assert await a.execute("guest-info") == "guest-info"
    assert f.seen.count("guest-sync-delimited") == 2  # in sync again before the next


async def test_errors_as_libvirt_words_them(fake: Make) -> None:
    f = await fake(qga({
        "guest-nope": {"error": {"class": "CommandNotFound"}},
        "guest-fail": {"error": {"class": "GenericError", "desc": "it broke"}},
        "guest-odd": {"neither": 1},
    }))
    a = Agent(str(f.path))
    for cmd, text in (
        ("guest-nope", "unable to execute QEMU agent command 'guest-nope':"
                       " The command has not been found"),
        ("guest-fail", "unable to execute QEMU agent command 'guest-fail': it broke"),
        ("guest-odd", "unable to execute QEMU agent command 'guest-odd'"),
    ):
        with pytest.raises(VirError) as e:
            await a.execute(cmd)
        assert e.value.code == ErrorCode.INTERNAL_ERROR
        assert e.value.message == f"internal error: {text}"
    a.close()


async def test_agent_going_away(fake: Make) -> None:
    f = await fake(lambda cmd: sync_reply(cmd) if "sync" in cmd["execute"] else b"CLOSE")
    a = Agent(str(f.path))
    with pytest.raises(VirError) as e:
        await a.execute("guest-bye")
    assert e.value.message == (
        "Guest agent is not responding: Guest agent disappeared while executing command")
    # The next call connects again.
    f.answer = qga({"guest-ping": {"return": {}}})
    assert await a.execute("guest-ping") == {}


async def test_no_agent_listening(tmp_path: Path) -> None:
    with pytest.raises(VirError) as e:
        await Agent(str(tmp_path / "none.sock")).execute("guest-ping")
    assert e.value.code == ErrorCode.AGENT_UNRESPONSIVE


async def test_shutdown_ends_with_the_event(fake: Make) -> None:
    f = await fake(qga({"guest-shutdown": None}))  # qemu-ga powers off without a word
    a = Agent(str(f.path))
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.1, done.set_result, None)
    assert await a.execute("guest-shutdown", {"mode": "powerdown"}, timeout=5, until=done) is None
    assert f.seen[-1] == "guest-shutdown"


async def test_no_wait(fake: Make) -> None:
    f = await fake(qga({}))
    a = Agent(str(f.path))
    assert await a.send({"execute": "guest-fstrim"}, timeout=0) is None


def test_interfaces_from_the_agent() -> None:
    from daemon.remote.lifecycle import _agent_interfaces

    reply = [
        {"name": "lo", "hardware-address": "00:00:00:00:00:00",
         "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8}]},
        {"name": "eth0", "hardware-address": "52:54:00:aa:bb:cc",
         "ip-addresses": [{"ip-address-type": "ipv6", "ip-address": "fe80::1", "prefix": 64}]},
        {"name": "eth0:1",
         "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "10.0.0.2", "prefix": 24}]},
        {"name": "sit0"},
    ]
    ifaces = _agent_interfaces(reply)
    assert [(i.name, i.hwaddr) for i in ifaces] == [
        ("lo", "00:00:00:00:00:00"), ("eth0", "52:54:00:aa:bb:cc"), ("sit0", None)]
    assert [(a.type, a.addr, a.prefix) for a in ifaces[1].addrs] == [
        (1, "fe80::1", 64), (0, "10.0.0.2", 24)]
    with pytest.raises(VirError, match="unknown IP address type 'ipx'"):
        _agent_interfaces([{"name": "x", "ip-addresses": [{"ip-address-type": "ipx"}]}])
