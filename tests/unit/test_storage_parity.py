"""dir pools and their volumes where libvirtd 9.0 differs from the obvious:
directories without size, a stopped pool's last refresh, a directory gone,
what a qemu-img probe becomes in the volume XML."""

from __future__ import annotations

import errno
import os
import stat
import struct
import uuid
from pathlib import Path

import pytest

from drivers.storage import transfer
from drivers.storage.dir import DirBackend, _apply_image_info
from drivers.storage.perms import Perms
from drivers.storage.pool import Pool
from drivers.storage.pool_xml import PoolDef, PoolSizes
from drivers.storage.vol_xml import Volume, format_vol, parse_vol
from protocol.errors import ErrorCode, ErrorDomain, VirError
from protocol.packet import error_body


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
    allocated = dense.stat().st_blocks * 512
    for path in (sparse, dense):
        vol = await backend.refresh_vol(Volume(path.name))
        await backend.wipe_vol(vol, 0)
        assert path.read_bytes() == bytes(path.stat().st_size)
        assert vol.format == "raw"
    # libvirt writes zeros over what was allocated: whole blocks
    assert sparse.stat().st_size == 1 << 20 and dense.stat().st_size == allocated


async def test_wiped_image_becomes_raw_data(tmp_path: Path) -> None:
    from drivers.storage.dir import qemu_img

    backend = DirBackend(_def(tmp_path))
    await qemu_img("create", "-q", "-f", "qcow2", str(tmp_path / "q"), "1M")
    vol = await backend.refresh_vol(Volume("q"))
    assert (vol.format, vol.features, vol.compat) == ("qcow2", (), "1.1")
    await backend.wipe_vol(vol, 0)
    assert (vol.format, vol.features, vol.compat) == ("raw", None, "1.1")


async def test_iso_images_are_named(tmp_path: Path) -> None:
    iso = tmp_path / "i"
    iso.write_bytes(bytes(32769) + b"CD001" + bytes(2000))
    (tmp_path / "r").write_bytes(bytes(40000))
    backend = DirBackend(_def(tmp_path))
    assert (await backend.refresh_vol(Volume("i"))).format == "iso"
    assert (await backend.refresh_vol(Volume("r"))).format == "raw"


@pytest.mark.parametrize(("fmt", "target", "flags", "message"), [
    ("vmdk", "", 1, "unsupported configuration: metadata preallocation only available with qcow2"),
    ("vmdk", "<compat>1.1</compat>", 0,
     "unsupported configuration: compatibility option only available with qcow2"),
    ("iso", "<features/>", 0,
     "unsupported configuration: compatibility option only available with qcow2"),
    ("raw", "", 1,
     "unsupported configuration: metadata preallocation is not supported for raw volumes"),
    ("dir", "", 1, "unsupported flags (0x1) in function createFileDir"),
    ("ploop", "", 1, "unsupported flags (0x1) in function storageBackendCreatePloop"),
    ("ploop", "", 0, "internal error: unable to find ploop, please install ploop tools"),
    ("qcow2", "<backingStore><path>nothere</path></backingStore>", 0,
     "inaccessible backing store volume nothere: No such file or directory"),
    ("qcow2", "<backingStore><path>/etc/hostname</path></backingStore>", 1,
     "unsupported configuration: metadata preallocation conflicts with backing store"),
    ("iso", "<backingStore><path>/etc/hostname</path></backingStore>", 0,
     "unsupported configuration: cannot set backing store for raw volume"),
])
async def test_volume_creation_refused(tmp_path: Path, fmt: str, target: str, flags: int,
                                       message: str) -> None:
    inner, _, backing = target.partition("<backingStore>")
    vol = parse_vol(f"<volume><name>v</name><capacity>1024</capacity><target>"
                    f"<format type='{fmt}'/>{inner}</target>"
                    + (f"<backingStore>{backing}" if backing else "") + "</volume>")
    with pytest.raises(VirError) as e:
        await DirBackend(_def(tmp_path)).create_vol(vol, flags)
    assert e.value.message == message
    assert not (tmp_path / "v").exists()


async def test_iso_made_as_raw_and_qemu_img_options(tmp_path: Path) -> None:
    backend = DirBackend(_def(tmp_path))
    await backend.create_vol(parse_vol("<volume><name>i</name><capacity>4096</capacity>"
                                       "<target><format type='iso'/></target></volume>"), 0)
    assert (tmp_path / "i").stat().st_size == 4096
    vol = parse_vol("<volume><name>q</name><capacity>1048576</capacity><allocation>1048576"
                    "</allocation><target><format type='qcow2'/><clusterSize unit='KiB'>4"
                    "</clusterSize><features><extended_l2/><lazy_refcounts/></features>"
                    "</target></volume>")
    assert vol.cluster_size == 4096
    assert backend._image_options(vol, 1) == [
        "preallocation=falloc", "compat=1.1", "cluster_size=4096", "lazy_refcounts",
        "extended_l2=on"]
    vol.allocation = 0
    assert backend._image_options(vol, 1)[0] == "preallocation=metadata"


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


async def test_raw_volume_in_a_directory_gone(tmp_path: Path) -> None:
    backend = DirBackend(_def(tmp_path / "gone"))
    vol = parse_vol("<volume><name>r</name><capacity>1024</capacity></volume>")
    with pytest.raises(VirError) as e:
        await backend.create_vol(vol, 0)
    assert e.value.message == (f"Failed to create file '{tmp_path}/gone/r': "
                               "No such file or directory")


def test_names_escaped_as_libvirt_does() -> None:
    xml = format_vol(Volume("a'b\"c&d<e>", path="/p/a'b\"c&d<e>"))
    assert "  <name>a&apos;b&quot;c&amp;d&lt;e&gt;</name>\n" in xml
    assert "    <path>/p/a&apos;b&quot;c&amp;d&lt;e&gt;</path>\n" in xml


async def test_raw_allocation_beyond_capacity_grows_the_file(tmp_path: Path) -> None:
    vol = parse_vol("<volume><name>r</name><capacity unit='K'>64</capacity>"
                    "<allocation unit='K'>128</allocation></volume>")
    await DirBackend(_def(tmp_path)).create_vol(vol, 0)
    st = (tmp_path / "r").stat()
    assert (st.st_size, st.st_blocks * 512) == (128 << 10, 128 << 10)


async def test_errno_of_system_errors_goes_in_int1(tmp_path: Path) -> None:
    with pytest.raises(VirError) as e:
        await DirBackend(_def(tmp_path / "gone")).delete(0)
    assert e.value.int1 == errno.ENOENT
    body = error_body(e.value.code, e.value.domain, e.value.message, e.value.level,
                      e.value.int1)
    assert body[-16:] == struct.pack(">Iii I", 0, errno.ENOENT, -1, 0)  # str3, int1, int2, net
    assert VirError(ErrorCode.INTERNAL_ERROR, "internal error: x").int1 == -1
    assert error_body(1, 0, "internal error: x")[-12:-4] == struct.pack(">ii", -1, -1)


# -- directory volumes cloned, an upload's new file in the pool ----------------------


async def test_clone_of_a_directory_is_an_empty_file(tmp_path: Path) -> None:
    """libvirtd copies a directory's no bytes into a plain file of the clone's
    capacity; a clone in format dir is such a file too, a dir volume until a
    pool refresh; a clone into an image format is qemu-img's refusal."""
    backend = DirBackend(_def(tmp_path))
    (tmp_path / "sub").mkdir()
    source = await backend.refresh_vol(Volume("sub", path=str(tmp_path / "sub")))
    raw = parse_vol("<volume><name>c</name></volume>", need_capacity=False)
    raw.allocation = 0
    await backend.create_vol_from(raw, source, 0)
    st = (tmp_path / "c").stat()
    assert (stat.S_ISREG(st.st_mode), st.st_size, st.st_mode & 0o777) == (True, 0, 0o600)
    as_dir = parse_vol("<volume><name>d</name><capacity>65536</capacity>"
                       "<target><format type='dir'/></target></volume>")
    as_dir.allocation = as_dir.capacity
    await backend.create_vol_from(as_dir, source, 0)
    st = (tmp_path / "d").stat()
    assert (stat.S_ISREG(st.st_mode), st.st_size, st.st_blocks * 512) == (True, 65536, 65536)
    found = await backend.refresh_vol(as_dir)
    assert (found.type, found.format, found.capacity, found.physical) == (
        "dir", "dir", 65536, 65536)
    assert (await backend.refresh()).volumes["d"].type == "file"
    await backend.delete_vol(found, 0)  # a file, whatever its volume type says
    assert not (tmp_path / "d").exists()
    image = parse_vol("<volume><name>q</name><target><format type='qcow2'/></target>"
                      "</volume>", need_capacity=False)
    with pytest.raises(VirError, match="convert -f dir -O qcow2 .*Unknown driver 'dir'"):
        await backend.create_vol_from(image, source, 0)
    assert not (tmp_path / "q").exists()


async def test_refresh_skips_uploads_and_removes_stale_ones(tmp_path: Path) -> None:
    backend = DirBackend(_def(tmp_path))
    (tmp_path / "v.img").write_bytes(b"x")
    stale = tmp_path / ".v.img.abcd_123.upload"
    stale.write_bytes(b"y")
    running = tmp_path / ".v.img.zz99xx00.upload"
    running.write_bytes(b"z")
    (tmp_path / ".hidden").write_bytes(b"h")  # other dot files are volumes, as in libvirt
    transfer._writing.add(str(running))
    try:
        scan = await backend.refresh()
    finally:
        transfer._writing.discard(str(running))
    assert sorted(scan.volumes) == [".hidden", "v.img"]
    assert not stale.exists() and running.exists()
