"""dir pools and their volumes where libvirtd 9.0 differs from the obvious:
directories without size, a stopped pool's last refresh, a directory gone,
what a qemu-img probe becomes in the volume XML."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from drivers.storage.dir import DirBackend, _apply_image_info
from drivers.storage.perms import Perms
from drivers.storage.pool import Pool
from drivers.storage.pool_xml import PoolDef, PoolSizes
from drivers.storage.vol_xml import Volume, format_vol, parse_vol
from protocol.errors import ErrorCode, ErrorDomain, VirError


def _def(path: Path | str, mode: int | None = None) -> PoolDef:
    return PoolDef("dir", "p", uuid.UUID(int=1).bytes, str(path), Perms(mode))


# -- a pool's XML after it stops ---------------------------------------------------


def _ran(pool: Pool) -> None:
    """What create, refresh and destroy leave in the pool."""
    pool.scan.sizes = PoolSizes(300, 100, 200)
    pool.scan.perms = Perms(0o750, 0, 0)


def test_stopped_pool_shows_its_last_refresh() -> None:
    pool = Pool(_def("/p"), persistent=True)
    assert "<capacity unit='bytes'>0</capacity>" in pool.xml()
    _ran(pool)
    pool.use(pool.config)  # what destroy does: the same definition
    for xml in (pool.xml(), pool.xml(inactive=True)):
        assert "<capacity unit='bytes'>300</capacity>" in xml
        assert "<available unit='bytes'>200</available>" in xml
        assert "<mode>0750</mode>" in xml


def test_new_definition_forgets_the_refresh() -> None:
    pool = Pool(_def("/p"), persistent=True)
    _ran(pool)
    waiting = _def("/p", 0o700)
    pool.config = waiting  # redefined while it runs
    xml = pool.xml(inactive=True)
    assert "<capacity unit='bytes'>0</capacity>" in xml and "<mode>0700</mode>" in xml
    assert "<capacity unit='bytes'>300</capacity>" in pool.xml()
    pool.use(waiting)  # stopped: the waiting definition takes over
    xml = pool.xml()
    assert "<capacity unit='bytes'>0</capacity>" in xml and "<mode>0700</mode>" in xml
    assert pool.xml(inactive=True) == xml


def test_never_run_pool_shows_its_configured_permissions() -> None:
    xml = Pool(_def("/p", 0o711), persistent=True).xml()
    assert "<mode>0711</mode>" in xml and "<owner>" not in xml


# -- the dir backend on real files ---------------------------------------------------


async def test_directory_volume_has_no_size(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/big").write_bytes(b"x" * 100_000)
    vol = await DirBackend(_def(tmp_path)).refresh_vol(Volume("sub"))
    assert (vol.type, vol.format, vol.capacity, vol.allocation, vol.physical) == (
        "dir", "dir", 0, 0, None)
    xml = format_vol(vol)
    assert "<capacity unit='bytes'>0</capacity>\n  <allocation unit='bytes'>0</allocation>\n" \
        "  <target>" in xml
    assert "<format type='dir'/>" in xml


async def test_delete_of_a_directory_gone(tmp_path: Path) -> None:
    backend = DirBackend(_def(tmp_path / "gone"))
    with pytest.raises(VirError) as e:
        await backend.delete(0)
    assert (e.value.code, e.value.domain) == (ErrorCode.SYSTEM_ERROR, ErrorDomain.STORAGE)
    assert e.value.message == (f"failed to remove pool '{tmp_path}/gone': "
                               "No such file or directory")
    with pytest.raises(VirError) as e:
        await backend.start()
    assert (e.value.code, e.value.domain) == (ErrorCode.SYSTEM_ERROR, ErrorDomain.NONE)


async def test_directory_volumes_made_wiped_deleted(tmp_path: Path) -> None:
    backend = DirBackend(_def(tmp_path))
    vol = parse_vol("<volume><name>d</name><capacity>0</capacity>"
                    "<target><format type='dir'/></target></volume>")
    await backend.create_vol(vol, 0)
    path = tmp_path / "d"
    assert path.is_dir() and path.stat().st_mode & 0o777 == 0o600
    found = await backend.refresh_vol(Volume("d"))
    for algorithm in (0, 1):
        with pytest.raises(VirError) as e:
            await backend.wipe_vol(found, algorithm)
        assert e.value.message == (f"Failed to open storage volume with path '{path}': "
                                   "Is a directory")
    (path / "f").touch()
    with pytest.raises(VirError) as e:
        await backend.delete_vol(found, 0)
    assert e.value.message == f"cannot remove directory '{path}': Directory not empty"
    os.unlink(path / "f")
    await backend.delete_vol(found, 0)
    assert not path.exists()
    backed = parse_vol("<volume><name>e</name><capacity>0</capacity><target>"
                       "<format type='dir'/></target><backingStore><path>/x</path>"
                       "</backingStore></volume>")
    with pytest.raises(VirError, match="backing storage not supported for directories"):
        await backend.create_vol(backed, 0)


async def test_wipe_zero_of_sparse_and_dense_files(tmp_path: Path) -> None:
    backend = DirBackend(_def(tmp_path))
    sparse, dense = tmp_path / "s", tmp_path / "d"
    sparse.write_bytes(b"data")
    os.truncate(sparse, 1 << 20)
    dense.write_bytes(b"\xff" * 10_000)
    for path in (sparse, dense):
        await backend.wipe_vol(Volume(path.name, path=str(path)), 0)
        assert path.read_bytes() == bytes(path.stat().st_size)
    assert sparse.stat().st_size == 1 << 20 and dense.stat().st_size == 10_000


# -- what qemu-img's probe becomes -------------------------------------------------------


def _probed(info: dict[str, object], size: int = 1000) -> Volume:
    vol = Volume("v", capacity=size)
    _apply_image_info(vol, info)
    return vol


def test_qcow2_probe_features_and_levels() -> None:
    v3 = _probed({"format": "qcow2", "virtual-size": 4096, "cluster-size": 65536,
                  "format-specific": {"data": {"compat": "1.1", "lazy-refcounts": False}}})
    assert (v3.compat, v3.features, v3.cluster_size, v3.capacity) == ("1.1", (), 65536, 4096)
    assert "    <features/>\n" in format_vol(v3)
    both = _probed({"format": "qcow2", "format-specific": {"data": {
        "compat": "1.1", "lazy-refcounts": True, "extended-l2": True}}})
    assert both.features == ("lazy_refcounts", "extended_l2")
    v2 = _probed({"format": "qcow2", "cluster-size": 512,
                  "format-specific": {"data": {"compat": "0.10"}}})
    assert (v2.compat, v2.features, v2.cluster_size) == (None, None, 512)
    assert "<features" not in format_vol(v2) and "<compat>" not in format_vol(v2)


def test_other_formats_have_no_cluster_size() -> None:
    for fmt in ("vmdk", "vdi", "vpc", "qed", "qcow"):
        vol = _probed({"format": fmt, "virtual-size": 2048, "cluster-size": 65536})
        assert (vol.format, vol.capacity, vol.cluster_size) == (fmt, 2048, None)


def test_raw_probe_keeps_the_byte_size_and_luks_is_raw_encrypted() -> None:
    assert _probed({"format": "raw", "virtual-size": 512}, size=135).capacity == 135
    luks = _probed({"format": "luks", "virtual-size": 1 << 20}, size=3 << 20)
    assert (luks.format, luks.capacity, luks.encryption) == ("raw", 1 << 20, "luks")
    assert "    <encryption format='luks'>\n    </encryption>\n" in format_vol(luks)


# -- volume XML ----------------------------------------------------------------------------


def test_physical_shown_only_when_not_zero() -> None:
    assert "<physical" not in format_vol(Volume("e", path="/e", physical=0))
    assert "<physical unit='bytes'>5</physical>" in format_vol(Volume("e", path="/e", physical=5))


def test_features_asked_for() -> None:
    def features(target: str) -> tuple[str | None, tuple[str, ...] | None]:
        vol = parse_vol(f"<volume><name>v</name><capacity>1</capacity><target>"
                        f"<format type='qcow2'/>{target}</target></volume>")
        return vol.compat, vol.features

    assert features("<compat>1.1</compat>") == ("1.1", None)
    assert features("<features/>") == ("1.1", ())
    assert features("<features><extended_l2/><lazy_refcounts/></features>") == (
        "1.1", ("lazy_refcounts", "extended_l2"))
    with pytest.raises(VirError) as e:
        features("<features><lazy_refcounts/><bogus/></features>")
    assert (e.value.code, e.value.message) == (
        ErrorCode.CONFIG_UNSUPPORTED, "unsupported configuration: unsupported feature bogus")
