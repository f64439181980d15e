"""Events: from the drivers' EventBus to MESSAGE packets for registered clients.

A driver emits ``bus.emit("domain-lifecycle", dom, event=..., detail=...)``.
Clients register per event id, either the old way (every matching event as
``DOMAIN_EVENT_<NAME>``) or with a callback id and an optional domain
filter (``DOMAIN_EVENT_CALLBACK_<NAME>`` carrying the id). Adding an event is
one :data:`DOMAIN_EVENTS` entry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from drivers.events import EventBus
from protocol.programs import Program

if TYPE_CHECKING:
    from daemon.client import Client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DomainEvent:
    """One kind of domain event: bus kind, libvirt event id, message name, fields.

    ``fields`` gives the message fields after the domain from the event data;
    the messages are ``remote_domain_event_<name>_msg`` and
    ``remote_domain_event_callback_<name>_msg`` (callbackID, msg).
    """

    kind: str
    event_id: int
    name: str
    fields: Callable[[dict[str, Any]], tuple[Any, ...]] = lambda data: ()
    # Newer events exist only as the callback message, with the fields inline.
    flat: bool = False


DOMAIN_EVENTS = (
    DomainEvent("domain-lifecycle", 0, "LIFECYCLE", lambda d: (d["event"], d["detail"])),
    DomainEvent("domain-reboot", 1, "REBOOT"),
    DomainEvent("domain-device-removed", 15, "DEVICE_REMOVED", lambda d: (d["alias"],)),
    DomainEvent(
        "domain-agent-lifecycle", 18, "AGENT_LIFECYCLE", lambda d: (d["state"], d["reason"]),
        flat=True,
    ),
    DomainEvent("domain-device-added", 19, "DEVICE_ADDED", lambda d: (d["alias"],), flat=True),
    DomainEvent(
        "domain-device-removal-failed", 22, "DEVICE_REMOVAL_FAILED", lambda d: (d["alias"],),
        flat=True,
    ),
)

#: Event ids a client may register for (VIR_DOMAIN_EVENT_ID_*), whether or not
#: we ever emit them: the old-style registration knows one fewer than the new.
LEGACY_EVENT_IDS = range(0, 26)
CALLBACK_EVENT_IDS = range(0, 27)

#: Storage pool events by bus kind: VIR_STORAGE_POOL_EVENT_ID_*, the message
#: ``remote_storage_pool_event_<name>_msg`` and its fields after the pool.
POOL_EVENTS: dict[str, tuple[int, str, Callable[[dict[str, Any]], tuple[Any, ...]]]] = {
    "storage-pool-lifecycle": (0, "LIFECYCLE", lambda d: (d["event"], d["detail"])),
    "storage-pool-refresh": (1, "REFRESH", lambda d: ()),
}
POOL_EVENT_IDS = range(2)

#: Network events likewise: VIR_NETWORK_EVENT_ID_*, ``remote_network_event_<name>_msg``.
NETWORK_EVENTS: dict[str, tuple[int, str, Callable[[dict[str, Any]], tuple[Any, ...]]]] = {
    "network-lifecycle": (0, "LIFECYCLE", lambda d: (d["event"], d["detail"])),
}
NETWORK_EVENT_IDS = range(1)


@dataclass
class Registrations:
    """One client's domain event registrations."""

    legacy: set[int] = field(default_factory=set)
    callbacks: dict[int, tuple[int, bytes | None]] = field(default_factory=dict)
    pool_callbacks: dict[int, tuple[int, bytes | None]] = field(default_factory=dict)
    network_callbacks: dict[int, tuple[int, bytes | None]] = field(default_factory=dict)

    def tracked(self, event_id: int, uuid: bytes | None) -> bool:
        if uuid is None and event_id in self.legacy:
            return True
        return (event_id, uuid) in self.callbacks.values()


class _Encoded:
    """Encodings of one event for the clients that want it, made on first need."""

    def __init__(self, relay: EventRelay, event: DomainEvent, obj: Any, data: dict[str, Any]):
        module = relay.program.module
        self.module = module
        self.event = event
        self._procs = relay.procedures
        self.dom = module.remote_nonnull_domain(obj.name, obj.uuid, obj.id)
        self.fields = event.fields(data)
        self.msg = None if event.flat else getattr(
            module, f"remote_domain_event_{event.name.lower()}_msg")(self.dom, *self.fields)
        self._legacy: bytes | None = None

    def legacy(self) -> tuple[int, bytes]:
        proc = self._proc(f"DOMAIN_EVENT_{self.event.name}")
        if self._legacy is None:
            self._legacy = proc.args.encode(self.msg)
        return proc.number, self._legacy

    def callback(self, callback_id: int) -> tuple[int, bytes]:
        proc = self._proc(f"DOMAIN_EVENT_CALLBACK_{self.event.name}")
        cls = getattr(self.module, f"remote_domain_event_callback_{self.event.name.lower()}_msg")
        if self.event.flat:
            return proc.number, proc.args.encode(cls(callback_id, self.dom, *self.fields))
        return proc.number, proc.args.encode(cls(callback_id, self.msg))

    def _proc(self, name: str) -> Any:
        return self._procs[name]


class EventRelay:
    """Listens on the bus and sends each event to the clients registered for it."""

    def __init__(self, bus: EventBus, program: Program) -> None:
        self.program = program
        self.procedures = {p.name: p for p in program.procedures.values()}
        self._kinds = {e.kind: e for e in DOMAIN_EVENTS}
        self._clients: dict[Client, Registrations] = {}
        self._next_callback_id = 0
        bus.subscribe(self._on_event)
        self._bus = bus

    def close(self) -> None:
        self._bus.unsubscribe(self._on_event)
        self._clients.clear()

    def registrations(self, client: Client) -> Registrations:
        """The client's registrations, created (and cleaned up at close) on demand."""
        regs = self._clients.get(client)
        if regs is None:
            regs = self._clients[client] = Registrations()
            client.on_close.append(self._forget)
        return regs

    def new_callback_id(self) -> int:
        callback_id = self._next_callback_id
        self._next_callback_id += 1
        return callback_id

    def _forget(self, client: Client) -> None:
        self._clients.pop(client, None)

    def _on_event(self, kind: str, obj: Any, **data: Any) -> None:
        if kind in POOL_EVENTS:
            self._on_pool_event(kind, obj, data)
            return
        if kind in NETWORK_EVENTS:
            self._on_network_event(kind, obj, data)
            return
        event = self._kinds.get(kind)
        if event is None or not self._clients:
            return
        encoded: _Encoded | None = None
        event_id = event.event_id
        for client, regs in list(self._clients.items()):
            if client.closed:
                continue
            if event_id in regs.legacy and not event.flat:
                encoded = encoded or _Encoded(self, event, obj, data)
                self._send(client, *encoded.legacy())
            for callback_id, (wanted, uuid) in regs.callbacks.items():
                if wanted == event_id and (uuid is None or uuid == obj.uuid):
                    encoded = encoded or _Encoded(self, event, obj, data)
                    self._send(client, *encoded.callback(callback_id))

    def _on_pool_event(self, kind: str, pool: Any, data: dict[str, Any]) -> None:
        event_id, name, fields = POOL_EVENTS[kind]
        handle = self.program.module.remote_nonnull_storage_pool(pool.name, pool.uuid)
        self._to_callbacks(f"STORAGE_POOL_EVENT_{name}", event_id, pool.uuid,
                           lambda regs: regs.pool_callbacks, [handle, *fields(data)])

    def _on_network_event(self, kind: str, net: Any, data: dict[str, Any]) -> None:
        event_id, name, fields = NETWORK_EVENTS[kind]
        handle = self.program.module.remote_nonnull_network(net.name, net.uuid)
        self._to_callbacks(f"NETWORK_EVENT_{name}", event_id, net.uuid,
                           lambda regs: regs.network_callbacks, [handle, *fields(data)])

    def _to_callbacks(
        self,
        proc_name: str,
        event_id: int,
        uuid: bytes,
        callbacks: Callable[[Registrations], dict[int, tuple[int, bytes | None]]],
        fields: list[Any],
    ) -> None:
        """An event of an object that is not a domain, to each callback registered
        for its kind on that object or on all: the message is the callback id, then
        ``fields``."""
        proc = self.procedures[proc_name]
        msg = getattr(self.program.module, f"remote_{proc_name.lower()}_msg")
        for client, regs in list(self._clients.items()):
            for callback_id, (wanted, want_uuid) in callbacks(regs).items():
                if not client.closed and wanted == event_id and want_uuid in (None, uuid):
                    body = proc.args.encode(msg(callback_id, *fields))
                    self._send(client, proc.number, body)

    def _send(self, client: Client, proc: int, body: bytes) -> None:
        client.send_message(self.program.number, self.program.version, proc, body)
