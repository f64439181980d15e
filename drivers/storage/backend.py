"""What every pool type implements; the driver knows pools only through this."""

from __future__ import annotations

from dataclasses import dataclass, field

from drivers.storage.perms import Perms
from drivers.storage.pool_xml import PoolDef, PoolSizes
from drivers.storage.vol_xml import FILE_FORMATS, Volume
from protocol.errors import ErrorCode, ErrorDomain, VirError


def check_flags(flags: int, allowed: int, function: str) -> None:
    """libvirt's refusal of flags a backend function does not know."""
    if flags & ~allowed:
        raise VirError(ErrorCode.INVALID_ARG,
                       f"unsupported flags (0x{flags & ~allowed:x}) in function {function}",
                       ErrorDomain.STORAGE)


@dataclass
class Scan:
    """What a refresh finds: sizes, the target's permissions, the volumes by name."""

    sizes: PoolSizes
    perms: Perms
    volumes: dict[str, Volume] = field(default_factory=dict)


class Backend:
    """One pool type. Subclasses override what their type supports; the rest is
    libvirt's "not supported" answer."""

    type = ""
    #: Whether a volume created or deleted changes the others (partitions are
    #: renumbered): the driver then reads the whole pool again, as libvirt does.
    rescan_on_vol_change = False
    #: Volume formats of the type (default, known), None where it has none (logical).
    vol_formats: tuple[str, frozenset[str]] | None = ("raw", FILE_FORMATS)

    def __init__(self, d: PoolDef) -> None:
        self.d = d

    @staticmethod
    def _unsupported(what: str) -> VirError:
        """libvirt's answer for an operation the pool type lacks (its own words)."""
        return VirError(ErrorCode.NO_SUPPORT,
                        f"this function is not supported by the connection driver: {what}",
                        ErrorDomain.STORAGE)

    @classmethod
    async def find_sources(cls, spec: str | None) -> str:
        """``<sources>`` XML of the pools of this type the host could have."""
        raise VirError(ErrorCode.NO_SUPPORT,
                       f"this function is not supported by the connection driver: pool type "
                       f"'{cls.type}' does not support source discovery", ErrorDomain.STORAGE)

    async def build(self, flags: int) -> None:
        """Nothing to build: libvirt succeeds without a word for such types."""

    async def start(self) -> None:
        """Make the pool usable (mount, activate); nothing for plain directories."""

    async def stop(self) -> None:
        """Undo start."""

    async def is_active(self) -> bool:
        """Whether a pool the last daemon left running still is (libvirt's checkPool:
        still mounted, volume group still active); asked at daemon start."""
        return True

    async def delete(self, flags: int) -> None:
        raise self._unsupported("pool does not support pool deletion")

    async def refresh(self) -> Scan:
        raise NotImplementedError

    async def sizes(self) -> PoolSizes:
        """Capacity, allocation and free space alone, cheaper than a refresh."""
        return (await self.refresh()).sizes

    async def create_vol(self, vol: Volume, flags: int) -> None:
        raise self._unsupported("storage pool does not support volume creation")

    async def create_vol_from(self, vol: Volume, source: Volume, flags: int) -> None:
        raise self._unsupported(
            "storage pool does not support volume creation from an existing volume")

    async def delete_vol(self, vol: Volume, flags: int) -> None:
        raise self._unsupported("storage pool does not support vol deletion")

    async def resize_vol(self, vol: Volume, capacity: int, allocate: bool, shrink: bool) -> None:
        raise self._unsupported("storage pool does not support changing of volume capacity")

    async def wipe_vol(self, vol: Volume, algorithm: int) -> None:
        """Overwrite the volume's data (virStorageVolWipeAlgorithm, zero = 0)."""
        raise self._unsupported("storage pool doesn't support volume wiping")

    async def refresh_vol(self, vol: Volume) -> Volume:
        """The volume as it is on disk now."""
        raise NotImplementedError

    def vol_path(self, name: str) -> str:
        """Where a new volume of this name lives."""
        raise NotImplementedError
