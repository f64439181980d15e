"""daemon.events: which client gets which MESSAGE for a driver event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.events import EventRelay
from drivers.events import EventBus
from protocol import programs

REMOTE = programs.remote()
R = REMOTE.module
PROCS = {p.name: p for p in REMOTE.procedures.values()}


@dataclass
class Dom:
    name: str
    uuid: bytes
    id: int


class FakeClient:
    def __init__(self) -> None:
        self.sent: list[tuple[int, Any]] = []
        self.closed = False
        self.on_close: list[Any] = []

    def send_message(self, prog: int, vers: int, proc: int, body: bytes) -> None:
        assert (prog, vers) == (REMOTE.number, REMOTE.version)
        name = next(p.name for p in REMOTE.procedures.values() if p.number == proc)
        self.sent.append((name, PROCS[name].args.decode(body)))


A = Dom("a", b"\xaa" * 16, 3)
B = Dom("b", b"\xbb" * 16, -1)


def _setup() -> tuple[EventBus, EventRelay, FakeClient]:
    bus = EventBus()
    return bus, EventRelay(bus, REMOTE), FakeClient()


def test_legacy_registration_gets_plain_messages() -> None:
    bus, relay, client = _setup()
    relay.registrations(client).legacy.add(0)
    bus.emit("domain-lifecycle", A, event=2, detail=1)
    [(name, msg)] = client.sent
    assert name == "DOMAIN_EVENT_LIFECYCLE"
    assert (msg.dom.name, msg.dom.uuid, msg.dom.id, msg.event, msg.detail) == \
        ("a", A.uuid, 3, 2, 1)


def test_callback_registration_with_domain_filter() -> None:
    bus, relay, client = _setup()
    regs = relay.registrations(client)
    every, only_b = relay.new_callback_id(), relay.new_callback_id()
    regs.callbacks[every] = (0, None)
    regs.callbacks[only_b] = (0, B.uuid)
    bus.emit("domain-lifecycle", A, event=0, detail=0)
    bus.emit("domain-lifecycle", B, event=5, detail=1)
    got = [(name, msg.callbackID, msg.msg.dom.name) for name, msg in client.sent]
    assert got == [("DOMAIN_EVENT_CALLBACK_LIFECYCLE", every, "a"),
                   ("DOMAIN_EVENT_CALLBACK_LIFECYCLE", every, "b"),
                   ("DOMAIN_EVENT_CALLBACK_LIFECYCLE", only_b, "b")]


def test_other_event_ids_and_kinds_do_not_match() -> None:
    bus, relay, client = _setup()
    regs = relay.registrations(client)
    regs.callbacks[relay.new_callback_id()] = (1, None)  # reboot
    bus.emit("domain-lifecycle", A, event=0, detail=0)
    bus.emit("something-else", A)
    assert client.sent == []
    bus.emit("domain-reboot", A)
    assert [name for name, _ in client.sent] == ["DOMAIN_EVENT_CALLBACK_REBOOT"]


def test_closed_and_forgotten_clients_get_nothing() -> None:
    bus, relay, client = _setup()
    relay.registrations(client).legacy.add(0)
    client.closed = True
    bus.emit("domain-lifecycle", A, event=0, detail=0)
    assert client.sent == []
    client.closed = False
    for callback in client.on_close:
        callback(client)
    bus.emit("domain-lifecycle", A, event=0, detail=0)
    assert client.sent == []


def test_tracked() -> None:
    _, relay, client = _setup()
    regs = relay.registrations(client)
    regs.callbacks[7] = (0, A.uuid)
    assert regs.tracked(0, A.uuid) and not regs.tracked(0, None)
    regs.legacy.add(0)
    assert regs.tracked(0, None) and not regs.tracked(1, None)
