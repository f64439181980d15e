"""One pool at run time: its definitions, its backend, what the last refresh found."""

from __future__ import annotations

from drivers.storage.backend import Backend, Scan
from drivers.storage.dir import DirBackend
from drivers.storage.disk import DiskBackend
from drivers.storage.fs import FsBackend, NetfsBackend
from drivers.storage.iscsi import IscsiBackend
from drivers.storage.logical import LogicalBackend
from drivers.storage.pool_xml import PoolDef, PoolSizes, format_pool, missing_backend
from drivers.storage.vol_xml import Volume

#: Pool types served today, by their XML name.
BACKENDS: dict[str, type[Backend]] = {
    "dir": DirBackend, "fs": FsBackend, "netfs": NetfsBackend, "logical": LogicalBackend,
    "disk": DiskBackend, "iscsi": IscsiBackend}


def backend_class(kind: str) -> type[Backend]:
    """The backend of a pool type, or libvirtd's error for a type it has none for."""
    try:
        return BACKENDS[kind]
    except KeyError:
        raise missing_backend(kind) from None


STATE_INACTIVE = 0
STATE_RUNNING = 2


class Pool:
    """``live`` is what runs (or would run next); ``config`` the persistent
    definition, which a redefinition of an active pool changes alone."""

    def __init__(self, d: PoolDef, persistent: bool) -> None:
        self.live = d
        self.config: PoolDef | None = d if persistent else None
        self.active = False
        self.autostart = False
        self.scan = Scan(PoolSizes(), d.target_perms)
        self.building: set[str] = set()  # names of volumes being created
        self.in_use: dict[str, int] = {}  # volumes being read or written by a job
        self.jobs = 0  # long operations under way (libvirt's asyncjobs)
        self.backend = backend_class(d.type)(d)

    @property
    def name(self) -> str:
        return self.live.name

    @property
    def uuid(self) -> bytes:
        return self.live.uuid

    @property
    def persistent(self) -> bool:
        return self.config is not None

    @property
    def volumes(self) -> dict[str, Volume]:
        return self.scan.volumes

    def use(self, d: PoolDef) -> None:
        """Make ``d`` the live definition (when the pool is not running). A new
        definition forgets what the last refresh found; the same one keeps it."""
        if d is not self.live:
            self.scan = Scan(PoolSizes(), d.target_perms)
        self.live = d
        self.backend = backend_class(d.type)(d)

    def xml(self, inactive: bool = False) -> str:
        """Like libvirtd, a pool stopped still shows the sizes and target
        permissions its last refresh found, until it is defined anew; a
        redefinition waiting for the pool to stop shows none."""
        d = self.config if inactive and self.config is not None else self.live
        if d is not self.live:
            return format_pool(d, PoolSizes())
        return format_pool(d, self.scan.sizes, self.scan.perms)
