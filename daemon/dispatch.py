"""Dispatch: from (program, version, procedure) to the handler, one table.

The table is built once from ``protocol.programs`` and the handler modules in
``daemon/remote/``: REMOTE procedure ``FOO_BAR`` is ``async def foo_bar(call,
args)``, QEMU's is ``qemu_foo_bar`` in ``daemon/remote/qemu.py``, ADMIN's
``admin_foo_bar``. For each call the steps and their errors are libvirtd's:
program and version, status, procedure, authentication, argument decoding,
an open connection, access control, then the handler.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
import types
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from protocol import packet
from protocol.errors import ErrorCode, ErrorDomain, VirError
from protocol.programs import Procedure, Program
from protocol.xdr import XDRError

if TYPE_CHECKING:
    from daemon.client import Client
    from daemon.streams import Stream

log = logging.getLogger(__name__)

Handler = Callable[["Call", Any], Awaitable[Any]]


@dataclass(eq=False)
class Connection:
    """What CONNECT_OPEN established: the driver serving this client."""

    driver: Any
    uri: str
    readonly: bool
    flags: int = 0


class Call:
    """One call as its handler sees it."""

    __slots__ = ("client", "conn", "serial", "procedure", "stream")

    def __init__(self, client: Client, conn: Connection | None, serial: int,
                 procedure: Procedure, stream: Stream | None = None) -> None:
        self.client = client
        self.conn = conn
        self.serial = serial
        self.procedure = procedure
        self.stream = stream

    @property
    def driver(self) -> Any:
        """The connection's driver (handlers run only once a connection is open)."""
        return self.conn.driver  # type: ignore[union-attr]


class AccessControl(Protocol):
    def check(self, call: Call, args: Any) -> None:
        """Raise ``VirError`` if the caller may not make this call."""


# The procedures of REMOTE that work without an open connection or before
# authentication (libvirtd's dispatcher makes the same exceptions).
_NO_CONNECTION = frozenset({"CONNECT_OPEN", "CONNECT_CLOSE", "AUTH_LIST", "AUTH_SASL_INIT",
                            "AUTH_SASL_START", "AUTH_SASL_STEP", "AUTH_POLKIT"})


class Entry:
    """A procedure with what dispatch needs at hand.

    The codecs are fetched on the first call: compiling all of them up front
    would cost megabytes for procedures most daemons never see.
    """

    __slots__ = ("procedure", "handler", "ready", "unpack", "encode", "needs_conn",
                 "needs_auth")

    def __init__(self, procedure: Procedure, handler: Handler | None, needs_conn: bool) -> None:
        self.procedure = procedure
        self.handler = handler
        self.ready = False
        self.unpack: Callable[[bytes, int], tuple[Any, int]] | None = None
        self.encode: Callable[[Any], bytes] | None = None
        self.needs_conn = needs_conn
        self.needs_auth = not procedure.name.startswith("AUTH_")

    def prepare(self) -> None:
        args, ret = self.procedure.args, self.procedure.ret
        self.unpack = args.unpack if args is not None else None
        self.encode = ret.encode if ret is not None else None
        self.ready = True


class Table:
    """Procedures of the programs a listener serves, ready to call."""

    def __init__(self, acl: AccessControl) -> None:
        self.acl = acl
        self._programs: dict[tuple[int, int], dict[int, Entry]] = {}
        self.missing: list[str] = []  # APIs without a handler, for the curious

    def add(self, program: Program, handlers: dict[str, Handler], prefix: str = "",
            needs_conn: bool = True) -> None:
        """Serve ``program``; ``handlers`` maps function names to handlers."""
        entries: dict[int, Entry] = {}
        for number, proc in program.procedures.items():
            if proc.event:
                continue  # server-to-client only: calling one is an unknown procedure
            handler = handlers.get(prefix + proc.name.lower())
            if handler is None:
                self.missing.append(proc.api)
            entries[number] = Entry(proc, handler,
                                    needs_conn and proc.name not in _NO_CONNECTION)
        self._programs[(program.number, program.version)] = entries

    async def call(self, client: Client, prog: int, vers: int, proc: int, serial: int,
                   status: int, pkt: bytes) -> bytes:
        """Run one call; return the reply body or raise ``VirError``."""
        procs = self._programs.get((prog, vers))
        if procs is None:
            raise VirError(ErrorCode.RPC, f"Cannot find program {prog} version {vers}",
                           ErrorDomain.RPC)
        if status != packet.OK:
            raise VirError(ErrorCode.RPC, f"Unexpected message status {status}",
                           ErrorDomain.RPC)
        entry = procs.get(proc)
        if entry is None:
            raise VirError(ErrorCode.RPC, f"unknown procedure: {proc}", ErrorDomain.RPC)
        if entry.needs_auth and not client.authenticated:
            raise VirError(ErrorCode.RPC, "authentication required", ErrorDomain.RPC)
        if not entry.ready:
            entry.prepare()
        args = None
        if entry.unpack is not None:
            try:
                args = entry.unpack(pkt, packet.PACKET_MIN)[0]
            except (XDRError, IndexError, ValueError, UnicodeDecodeError):
                raise VirError(ErrorCode.RPC, "Unable to decode message payload",
                               ErrorDomain.RPC) from None
        conn = client.conn
        if conn is None and entry.needs_conn:
            raise VirError(ErrorCode.INTERNAL_ERROR,
                           "internal error: hypervisor connection not open", ErrorDomain.RPC)
        procedure = entry.procedure
        stream = None
        if procedure.stream is not None and entry.handler is not None:
            from daemon.streams import Stream
            stream = Stream(client, prog, vers, proc, serial)
        call = Call(client, conn, serial, procedure, stream)
        self.acl.check(call, args)
        if entry.handler is None:
            raise VirError(ErrorCode.NO_SUPPORT,
                           f"this function is not supported by the connection driver: "
                           f"{procedure.api}", api_error_domain(procedure.api))
        if stream is not None:
            client.add_stream(stream)
        ret = await entry.handler(call, args)
        return entry.encode(ret) if entry.encode is not None else b""


def api_error_domain(api: str) -> ErrorDomain:
    """The error domain libvirt reports for an API's own checks.

    It is the domain of the source file the API lives in, which follows
    from the object in its name.
    """
    if api.startswith("virAdm"):
        return ErrorDomain.ADMIN
    for word, domain in _API_DOMAINS:
        if word in api:
            return domain
    return ErrorDomain.NONE


_API_DOMAINS = (
    ("Qemu", ErrorDomain.DOM), ("Snapshot", ErrorDomain.DOMAIN_SNAPSHOT),
    ("Checkpoint", ErrorDomain.DOMAIN_CHECKPOINT), ("Domain", ErrorDomain.DOMAIN),
    ("NWFilter", ErrorDomain.NWFILTER), ("NodeDevice", ErrorDomain.NODEDEV),
    ("Network", ErrorDomain.NETWORK), ("Storage", ErrorDomain.STORAGE),
    ("Interface", ErrorDomain.INTERFACE), ("Secret", ErrorDomain.SECRET),
    ("Stream", ErrorDomain.STREAMS),
)


def find_handlers(package: str = "daemon.remote") -> dict[str, Handler]:
    """Every coroutine function defined in the modules of ``package``, by name.

    A module that fails to import is logged and skipped: its procedures then
    answer NO_SUPPORT instead of taking the daemon down.
    """
    handlers: dict[str, Handler] = {}
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        try:
            module = importlib.import_module(f"{package}.{info.name}")
        except Exception:
            log.exception("cannot load handler module %s.%s", package, info.name)
            continue
        for name, fn in _coroutines(module):
            other = handlers.setdefault(name, fn)
            if other is not fn:
                raise RuntimeError(f"handler {name} defined in both {other.__module__} "
                                   f"and {fn.__module__}")
    return handlers


def _coroutines(module: types.ModuleType) -> Iterable[tuple[str, Handler]]:
    for name, fn in vars(module).items():
        if not name.startswith("_") and inspect.iscoroutinefunction(fn) \
                and fn.__module__ == module.__name__:
            yield name, fn
