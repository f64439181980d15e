"""Disks that name a storage volume (``<disk type='volume'>``).

The persistent definition keeps the pool and volume names; when the guest
starts, or the disk is hotplugged, the storage driver turns them into the path
(and the kind of file) QEMU opens, as libvirtd does. The live XML still shows
the names. Which volumes running guests hold is what keeps the storage driver
from pulling a pool from under them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from drivers.qemu.domain_xml import DomainDef
from drivers.qemu.domain_xml.model import Disk
from protocol.errors import ErrorCode, ErrorDomain, VirError

#: What QEMU opens for each kind of volume (a ploop volume is a file to it).
_SOURCE_TYPES = {"file": "file", "block": "block", "dir": "dir", "ploop": "file"}

#: Pool types whose volumes cannot back a disk (libvirt refuses them too).
_UNUSABLE_POOLS = frozenset({"mpath", "rbd", "sheepdog", "gluster"})


def resolve(storage: Any, disk: Disk) -> None:
    """Give a volume disk its path, source kind and (raw unless given) format.

    ``storage`` is the storage driver; lookups raise its own errors for an
    unknown pool or volume, as libvirtd's do.
    """
    pool_name = disk.volume.get("pool", "")
    vol_name = disk.volume.get("volume", "")
    if storage is None:
        raise VirError(ErrorCode.NO_STORAGE_POOL,
                       f"Storage pool not found: no storage pool with matching name "
                       f"'{pool_name}'", ErrorDomain.STORAGE)
    pool = storage.lookup_by_name(pool_name)
    if not pool.active:
        raise VirError(ErrorCode.CONFIG_UNSUPPORTED,
                       f"unsupported configuration: storage pool '{pool_name}' containing "
                       f"volume '{vol_name}' is not active", ErrorDomain.DOMAIN)
    vol = storage.volume(pool, vol_name)
    pool_type = pool.live.type
    if disk.volume.get("mode") and pool_type != "iscsi":
        raise VirError(ErrorCode.XML_ERROR,
                       "XML error: disk source mode is only valid when storage pool is of "
                       "iscsi type", ErrorDomain.DOMAIN)
    if pool_type in _UNUSABLE_POOLS:
        raise VirError(ErrorCode.CONFIG_UNSUPPORTED,
                       f"unsupported configuration: using '{pool_type}' pools for backing "
                       "'volume' disks isn't yet supported", ErrorDomain.DOMAIN)
    kind = "block" if pool_type == "iscsi" else _SOURCE_TYPES.get(vol.type)
    if kind is None:
        raise VirError(ErrorCode.INTERNAL_ERROR,
                       f"internal error: unexpected storage volume type '{vol.type}' for "
                       f"storage pool type '{pool_type}'", ErrorDomain.DOMAIN)
    disk.source = vol.path
    disk.volume_type = kind
    disk.driver.setdefault("type", "raw")  # libvirt's default, not the volume's format


def resolve_all(storage: Any, d: DomainDef) -> None:
    """Every volume disk of ``d``, the last first (libvirtd's order, which decides
    which error a guest with several bad disks reports)."""
    for disk in reversed(d.devices.disks):
        if disk.type == "volume" and disk.volume:
            resolve(storage, disk)


def held(disks: Iterable[Disk], pool: str, paths: Mapping[str, str]) -> list[str]:
    """Names of the volumes of ``pool`` among ``disks``: named as volumes, or given
    by their path (``paths``: volume name by path), as virt-install gives them."""
    found = []
    for x in disks:
        if x.type == "volume" and x.volume.get("pool") == pool:
            found.append(x.volume.get("volume", ""))
        elif x.type in ("file", "block") and x.source in paths:
            found.append(paths[x.source])
    return found
