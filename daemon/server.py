"""The server: drivers, dispatch tables, listeners and the clients they accept."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path
from typing import Any

from daemon.client import Client
from daemon.config import Config
from daemon.dispatch import Table, find_handlers
from daemon.events import EventRelay
from daemon.listeners import SERVICE_ADMIN, SERVICE_REMOTE, Identity, Listener, UnixListener
from daemon.paths import Paths
from drivers.events import EventBus
from policy import auth
from policy.acl import ReadOnly
from protocol import programs

log = logging.getLogger(__name__)

RW_SOCKET = "libvirt-sock"
RO_SOCKET = "libvirt-sock-ro"
ADMIN_SOCKET = "libvirt-admin-sock"


class Server:
    """Everything the daemon runs, started and stopped as one."""

    def __init__(self, config: Config, paths: Paths) -> None:
        self.config = config
        self.paths = paths
        self.bus = EventBus()
        self.events: EventRelay | None = None
        self.listeners: list[Listener] = []
        self.clients: dict[str, set[Client]] = {SERVICE_REMOTE: set(), SERVICE_ADMIN: set()}
        self._drivers: dict[str, Any] = {}
        self._tables: dict[str, Table] = {}
        self._auth: dict[str, auth.Auth] = {}
        self._slot_waiters: list[asyncio.Future[None]] = []

    @property
    def socket_dir(self) -> Path:
        configured = self.config.unix_sock_dir
        return Path(configured) if configured else self.paths.run_dir

    @property
    def rw_socket(self) -> Path:
        return self.socket_dir / RW_SOCKET

    # -- life cycle -------------------------------------------------------------

    async def start(self, sockets: dict[str, socket.socket] | None = None) -> None:
        """Start drivers, then listen. ``sockets``: pre-bound ones by listener name
        (systemd socket activation)."""
        await self._start_drivers()
        remote = programs.remote()
        self.events = EventRelay(self.bus, remote)
        handlers = find_handlers()
        table = Table(ReadOnly())
        table.add(remote, handlers)
        table.add(programs.qemu(), handlers, prefix="qemu_")
        admin = Table(ReadOnly())
        admin.add(programs.admin(), handlers, prefix="admin_", needs_conn=False)
        self._tables = {SERVICE_REMOTE: table, SERVICE_ADMIN: admin}
        log.debug("%d procedures without a handler", len(table.missing))
        self._listen(sockets or {})

    async def _start_drivers(self) -> None:
        """Storage and networks first, then QEMU: guests that autostart or re-attach
        use pools and network ports.

        Each driver sees the others through ``peers`` (this server's table), so
        the QEMU driver can resolve a ``<source pool= volume=>`` disk.
        """
        from drivers.storage.driver import StorageDriver
        storage = StorageDriver(self.paths, self.bus, peers=self._drivers)
        await storage.startup()
        self._drivers["storage"] = storage
        from drivers.network.driver import NetworkDriver
        network = NetworkDriver(self.paths, self.bus)
        await network.startup()
        self._drivers["network"] = network
        from drivers.interface.driver import InterfaceDriver
        interface = InterfaceDriver(self.paths, self.bus)
        await interface.startup()
        self._drivers["interface"] = interface
        try:
            from drivers.qemu.driver import QemuDriver
        except ImportError:
            log.exception("the QEMU driver is not available")
            return
        driver = QemuDriver(self.paths, self.bus, peers=self._drivers)
        await driver.startup()
        self._drivers["qemu"] = driver

    def _listen(self, sockets: dict[str, socket.socket]) -> None:
        c = self.config
        d = self.socket_dir
        self._auth = {RW_SOCKET: auth.for_name(c.auth_unix_rw),
                      RO_SOCKET: auth.for_name(c.auth_unix_ro),
                      ADMIN_SOCKET: auth.AuthNone()}
        self.listeners = [
            UnixListener(RW_SOCKET, d / RW_SOCKET, c.mode("unix_sock_rw_perms"),
                         group=c.unix_sock_group, backlog=c.max_queued_clients,
                         sock=sockets.get(RW_SOCKET)),
            UnixListener(RO_SOCKET, d / RO_SOCKET, c.mode("unix_sock_ro_perms"),
                         group=c.unix_sock_group, readonly=True,
                         backlog=c.max_queued_clients, sock=sockets.get(RO_SOCKET)),
            UnixListener(ADMIN_SOCKET, d / ADMIN_SOCKET, c.mode("unix_sock_admin_perms"),
                         service=SERVICE_ADMIN, sock=sockets.get(ADMIN_SOCKET)),
        ]
        for listener in self.listeners:
            listener.start(self._accept)

    async def stop(self) -> None:
        """Stop listening, drop clients, shut drivers down (guests keep running)."""
        for listener in self.listeners:
            await listener.close()
        clients = [c for group in self.clients.values() for c in group]
        for client in clients:
            client.close()
        if clients:
            await asyncio.sleep(0.05)  # let queued replies reach the sockets
            for client in clients:
                client.abort()
        if self.events is not None:
            self.events.close()
        for name, driver in self._drivers.items():
            try:
                await driver.shutdown()
            except Exception:
                log.exception("%s driver shutdown failed", name)
        self._drivers.clear()

    # -- clients ----------------------------------------------------------------

    async def _accept(self, sock: socket.socket, listener: Listener, identity: Identity) -> None:
        service = listener.service
        c = self.config
        if service == SERVICE_ADMIN:
            limit, requests = c.admin_max_clients, c.admin_max_client_requests
            interval, count = c.admin_keepalive_interval, c.admin_keepalive_count
        else:
            limit, requests = c.max_clients, c.max_client_requests
            interval, count = c.keepalive_interval, c.keepalive_count
        group = self.clients[service]
        while len(group) >= limit:  # leave the rest waiting in the listen backlog
            waiter = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            await waiter
        scheme = self._auth.get(listener.name, auth.AuthNone())
        client = Client(self._tables[service], identity, self, max_requests=requests,
                        keepalive_interval=interval, keepalive_count=count,
                        authenticated=scheme.initially_authenticated(identity))
        group.add(client)
        client.on_close.append(self._client_gone)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: client, sock)
        except OSError as e:
            log.warning("cannot set up connection from %s: %s", identity, e)
            self._client_gone(client)
            sock.close()
            return
        log.debug("client %r connected", client)

    def _client_gone(self, client: Client) -> None:
        for group in self.clients.values():
            group.discard(client)
        while self._slot_waiters:
            waiter = self._slot_waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                break
        log.debug("client %r gone", client)

    # -- for handlers -----------------------------------------------------------

    def driver(self, name: str) -> Any:
        return self._drivers.get(name)

    def auth_for(self, client: Client) -> auth.Auth:
        return self._auth.get(client.identity.listener, auth.AuthNone())

    def idle(self) -> bool:
        """No clients and no running guests: the daemon may exit (``--timeout``)."""
        if any(self.clients.values()):
            return False
        driver = self._drivers.get("qemu")
        if driver is None:
            return True
        with contextlib.suppress(Exception):
            return not any(dom.active for dom in driver.list_domains())
        return False
