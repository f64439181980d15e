"""Volume disks resolved through a stand-in storage driver (drivers/qemu/volumes.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from drivers.qemu import volumes
from drivers.qemu.domain_xml.model import Disk
from protocol.errors import ErrorCode, ErrorDomain, VirError


@dataclass
class _Def:
    type: str


@dataclass
class _Vol:
    path: str
    type: str = "file"


@dataclass
class _Pool:
    name: str
    type: str = "dir"
    active: bool = True
    vols: dict[str, _Vol] = field(default_factory=dict)

    @property
    def live(self) -> _Def:
        return _Def(self.type)


class _Storage:
    """The two lookups of StorageDriver the QEMU driver uses, with its errors."""

    def __init__(self, *pools: _Pool) -> None:
        self.pools = {p.name: p for p in pools}

    def lookup_by_name(self, name: str) -> _Pool:
        if name not in self.pools:
            raise VirError(ErrorCode.NO_STORAGE_POOL, f"no pool {name}", ErrorDomain.STORAGE)
        return self.pools[name]

    def volume(self, pool: _Pool, name: str) -> _Vol:
        if name not in pool.vols:
            raise VirError(ErrorCode.NO_STORAGE_VOL, f"no vol {name}", ErrorDomain.STORAGE)
        return pool.vols[name]


def _disk(pool: str, volume: str, target: str = "vda", **extra: str) -> Disk:
    return Disk(type="volume", device="disk", target=target, bus="virtio",
                volume={"pool": pool, "volume": volume, **extra}, driver={"name": "qemu"})


def _storage() -> _Storage:
    return _Storage(
        _Pool("p", vols={"a": _Vol("/p/a"), "b": _Vol("/dev/vg/b", "block"),
                         "n": _Vol("x", "network")}),
        _Pool("off", active=False, vols={"a": _Vol("/off/a")}),
        _Pool("rbd", type="rbd", vols={"a": _Vol("a")}),
    )


def test_a_file_volume_becomes_its_path_raw_unless_given() -> None:
    disk = _disk("p", "a")
    volumes.resolve(_storage(), disk)
    assert (disk.source, disk.source_type, disk.driver["type"]) == ("/p/a", "file", "raw")
    disk = _disk("p", "b")
    disk.driver["type"] = "qcow2"
    volumes.resolve(_storage(), disk)
    assert (disk.source, disk.source_type, disk.driver["type"]) == ("/dev/vg/b", "block", "qcow2")


@pytest.mark.parametrize("disk, code, message", [
    (_disk("nope", "a"), ErrorCode.NO_STORAGE_POOL, "no pool nope"),
    (_disk("p", "zz"), ErrorCode.NO_STORAGE_VOL, "no vol zz"),
    (_disk("off", "a"), ErrorCode.CONFIG_UNSUPPORTED,
     "unsupported configuration: storage pool 'off' containing volume 'a' is not active"),
    (_disk("p", "a", mode="host"), ErrorCode.XML_ERROR,
     "XML error: disk source mode is only valid when storage pool is of iscsi type"),
    (_disk("rbd", "a"), ErrorCode.CONFIG_UNSUPPORTED,
     "unsupported configuration: using 'rbd' pools for backing 'volume' disks isn't yet "
     "supported"),
    (_disk("p", "n"), ErrorCode.INTERNAL_ERROR,
     "internal error: unexpected storage volume type 'network' for storage pool type 'dir'"),
])
def test_libvirtds_errors(disk: Disk, code: ErrorCode, message: str) -> None:
    with pytest.raises(VirError) as info:
        volumes.resolve(_storage(), disk)
    assert (info.value.code, info.value.message) == (code, message)
    assert disk.source is None


def test_the_last_disk_is_resolved_first() -> None:
    class D:
        class devices:  # noqa: N801 - stands for DomainDef.devices
            disks = [_disk("off", "a", "vda"), _disk("p", "zz", "vdb")]

    with pytest.raises(VirError) as info:
        volumes.resolve_all(_storage(), D)  # type: ignore[arg-type]
    assert info.value.code == ErrorCode.NO_STORAGE_VOL


def test_held_names_the_volumes_of_one_pool() -> None:
    disks = [_disk("p", "a"), _disk("q", "b"), Disk("file", "disk", "vdc", "virtio", "/x"),
             _disk("p", "c"), Disk("file", "disk", "vde", "virtio", "/p/d")]
    assert volumes.held(disks, "p", {"/p/d": "d", "/p/a": "a"}) == ["a", "c", "d"]
