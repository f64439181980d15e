"""Storage pools and volumes with stock virsh and libvirt-python against aiovirtd.

Every pool lives under the test daemon's root; XML is checked with
virt-xml-validate against libvirt's own schemas.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from e2e.daemon import DaemonProcess

pytestmark = pytest.mark.slow


def _validate(tmp_path: Path, xml: str, schema: str) -> None:
    path = tmp_path / f"{schema}.xml"
    path.write_text(xml)
    res = subprocess.run(["virt-xml-validate", str(path), schema], capture_output=True,
                         text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_default_pool_exists_and_autostarts(module_daemon: DaemonProcess) -> None:
    out = module_daemon.virsh("pool-list", "--all").stdout
    assert out.split("\n")[2].split() == ["default", "active", "yes"]
    xml = module_daemon.virsh("pool-dumpxml", "default").stdout
    assert f"<path>{module_daemon.root}/var/lib/libvirt/images</path>" in xml
    assert (module_daemon.root / "etc/libvirt/storage/autostart/default.xml").is_symlink()


def test_pool_capabilities(module_daemon: DaemonProcess) -> None:
    out = module_daemon.virsh("pool-capabilities").stdout
    assert "<pool type='dir' supported='yes'>" in out
    assert "<value>qcow2</value>" in out


def test_find_pool_sources(module_daemon: DaemonProcess) -> None:
    res = module_daemon.virsh("find-storage-pool-sources", "dir", check=False)
    assert ("error: this function is not supported by the connection driver: pool type 'dir' "
            "does not support source discovery") in res.stderr
    res = module_daemon.virsh("find-storage-pool-sources", "bogus", check=False)
    assert "error: internal error: unknown storage pool type bogus" in res.stderr


def test_dir_pool_life_cycle(module_daemon: DaemonProcess, tmp_path: Path) -> None:
    d = module_daemon
    target = d.root / "pool1"
    d.virsh("pool-define-as", "pool1", "dir", "--target", str(target))
    try:
        inactive = d.virsh("pool-dumpxml", "pool1").stdout
        _validate(tmp_path, inactive, "storagepool")
        assert "<capacity unit='bytes'>0</capacity>" in inactive
        assert "Failed to start pool" in d.virsh("pool-start", "pool1", check=False).stderr
        res = d.virsh("pool-build", "pool1", "--overwrite", check=False)
        assert ("error: Requested operation is not valid: No source device specified when "
                "formatting pool 'pool1'") in res.stderr
        d.virsh("pool-build", "pool1")
        assert target.is_dir() and (target.stat().st_mode & 0o777) == 0o711
        d.virsh("pool-start", "pool1")
        info = d.virsh("pool-info", "pool1").stdout
        assert "State:          running" in info and "Persistent:     yes" in info
        xml = d.virsh("pool-dumpxml", "pool1").stdout
        _validate(tmp_path, xml, "storagepool")
        assert "<mode>0711</mode>" in xml
        assert "already active" in d.virsh("pool-build", "pool1", check=False).stderr
        assert "still active" in d.virsh("pool-undefine", "pool1", check=False).stderr
        d.virsh("pool-autostart", "pool1")
        assert (d.root / "etc/libvirt/storage/autostart/pool1.xml").exists()
        d.virsh("pool-autostart", "pool1", "--disable")
        d.virsh("pool-destroy", "pool1")
        assert "inactive" in d.virsh("pool-info", "pool1").stdout
        import libvirt

        with pytest.raises(libvirt.libvirtError) as e:
            d.conn().storagePoolLookupByName("pool1").delete(1)
        assert str(e.value) == ("unsupported flags (0x1) in function "
                                "virStorageBackendDeleteLocal")
        d.virsh("pool-delete", "pool1")
        assert not target.exists()
    finally:
        d.virsh("pool-destroy", "pool1", check=False)
        d.virsh("pool-undefine", "pool1", check=False)
    assert "pool1" not in d.virsh("pool-list", "--all").stdout
    assert not (d.root / "etc/libvirt/storage/pool1.xml").exists()


@pytest.fixture
def pool(module_daemon: DaemonProcess) -> Iterator[str]:
    target = module_daemon.root / "vols"
    module_daemon.virsh("pool-create-as", "vols", "dir", "--target", str(target), "--build")
    yield "vols"
    module_daemon.virsh("pool-destroy", "vols", check=False)
    for f in target.iterdir():
        f.unlink()
    target.rmdir()


def test_volumes_raw_and_qcow2(module_daemon: DaemonProcess, pool: str, tmp_path: Path) -> None:
    d = module_daemon
    d.virsh("vol-create-as", pool, "r.img", "10M")
    d.virsh("vol-create-as", pool, "q.qcow2", "20M", "--format", "qcow2")
    raw = d.root / "vols/r.img"
    qcow = d.root / "vols/q.qcow2"
    assert raw.stat().st_size == 10 << 20 and raw.stat().st_blocks * 512 >= 10 << 20
    img = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(qcow)],
                                    capture_output=True, text=True, check=True).stdout)
    assert (img["format"], img["virtual-size"]) == ("qcow2", 20 << 20)

    info = d.virsh("vol-info", "--pool", pool, "q.qcow2").stdout
    assert "Capacity:       20.00 MiB" in info
    assert f"Allocation:     {img['actual-size'] // 1024:.2f} KiB" in info
    assert d.virsh("vol-path", "--pool", pool, "r.img").stdout.strip() == str(raw)
    assert d.virsh("vol-key", "--pool", pool, "r.img").stdout.strip() == str(raw)
    assert d.virsh("vol-name", str(raw)).stdout.strip() == "r.img"
    assert d.virsh("vol-pool", str(qcow)).stdout.strip() == pool
    for name in ("r.img", "q.qcow2"):
        _validate(tmp_path, d.virsh("vol-dumpxml", "--pool", pool, name).stdout, "storagevol")
    assert "<format type='qcow2'/>" in d.virsh("vol-dumpxml", "--pool", pool, "q.qcow2").stdout
    rows = d.virsh("vol-list", "--details", pool).stdout.split("\n")[2:4]
    assert rows[0].split()[:3] == ["q.qcow2", str(qcow), "file"]
    assert rows[1].split() == ["r.img", str(raw), "file", "10.00", "MiB", "10.00", "MiB"]

    conn = d.conn()
    vol = conn.storageVolLookupByPath(str(qcow))
    assert vol.info() == [0, 20 << 20, img["actual-size"]]
    assert conn.storageVolLookupByKey(str(raw)).name() == "r.img"
    assert len(conn.storagePoolLookupByName(pool).listAllVolumes()) == 2

    err = d.virsh("vol-create-as", pool, "r.img", "1M", check=False).stderr
    assert "storage volume 'r.img' exists already" in err
    d.virsh("vol-delete", "--pool", pool, "r.img")
    d.virsh("vol-delete", "--pool", pool, "q.qcow2")
    assert not raw.exists() and not qcow.exists()
    assert d.virsh("vol-list", pool).stdout.split("\n")[2:] == ["", ""]


def test_a_volume_too_large_leaves_no_file(module_daemon: DaemonProcess, pool: str) -> None:
    res = module_daemon.virsh("vol-create-as", pool, "huge", "1000000000000000", check=False)
    # ext4 refuses the size ("cannot extend file"), others the allocation ("cannot fill file")
    assert res.returncode == 1 and "error: cannot " in res.stderr
    assert not list((module_daemon.root / "vols").iterdir())


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/b"])
def test_names_escaping_the_pool_are_refused(module_daemon: DaemonProcess, pool: str,
                                             name: str) -> None:
    before = set(os.listdir(module_daemon.root))
    res = module_daemon.virsh("vol-create-as", pool, name, "1M", check=False)
    assert res.returncode == 1
    assert (f"error: Requested operation is not valid: volume name '{name}' cannot contain '/'"
            in res.stderr)
    assert set(os.listdir(module_daemon.root)) == before
    assert not list((module_daemon.root / "vols").iterdir())


def test_lookup_errors(module_daemon: DaemonProcess, pool: str) -> None:
    import libvirt

    conn = module_daemon.conn()
    cases = [
        (lambda: conn.storagePoolLookupByName("nope"), libvirt.VIR_ERR_NO_STORAGE_POOL,
         "Storage pool not found: no storage pool with matching name 'nope'"),
        (lambda: conn.storageVolLookupByPath("/nope"), libvirt.VIR_ERR_NO_STORAGE_VOL,
         "Storage volume not found: no storage vol with matching path '/nope'"),
        (lambda: conn.storagePoolLookupByName(pool).storageVolLookupByName("nope"),
         libvirt.VIR_ERR_NO_STORAGE_VOL,
         "Storage volume not found: no storage vol with matching name 'nope'"),
    ]
    cases += [
        (lambda: conn.storagePoolLookupByTargetPath("/nope"), libvirt.VIR_ERR_NO_STORAGE_POOL,
         "Storage pool not found: no storage pool with matching target path '/nope'"),
        (lambda: conn.storagePoolLookupByName(pool).createXML(
            "<volume><name>z</name><capacity unit='E'>20</capacity></volume>"),
         libvirt.VIR_ERR_OVERFLOW, "numerical overflow: value too large: 20E"),
        (lambda: conn.storagePoolLookupByName(pool).createXML(
            "<volume><name>..</name><capacity>1</capacity></volume>"),
         libvirt.VIR_ERR_OPERATION_INVALID,
         (f"Requested operation is not valid: volume target path "
          f"'{module_daemon.root}/vols/..' already exists")),
    ]
    with pytest.raises(libvirt.libvirtError) as e:
        conn.storageVolLookupByPath("//x//y/")
    assert str(e.value) == ("Storage volume not found: no storage vol with matching path "
                            "'//x//y/' (//x/y)")
    assert conn.storagePoolLookupByTargetPath(
        f"{module_daemon.root}//vols/").name() == pool
    for call, code, message in cases:
        with pytest.raises(libvirt.libvirtError) as e:
            call()
        assert (e.value.get_error_code(), str(e.value)) == (code, message)


def test_pools_survive_a_restart(start_daemon: Callable[..., DaemonProcess]) -> None:
    d = start_daemon()
    target = d.root / "keep"
    d.virsh("pool-define-as", "keep", "dir", "--target", str(target))
    d.virsh("pool-build", "keep")
    d.virsh("pool-start", "keep")
    d.virsh("pool-autostart", "keep")
    d.virsh("vol-create-as", "keep", "v.img", "1M")
    d.restart()
    out = d.virsh("pool-list", "--all").stdout
    assert "keep" in out and "default" in out
    assert "v.img" in d.virsh("vol-list", "keep").stdout
    d.virsh("pool-destroy", "keep")
    d.restart()
    assert "keep      active" in d.virsh("pool-list", "--all").stdout  # autostarted


def test_pool_events(module_daemon: DaemonProcess) -> None:
    d = module_daemon
    watch = subprocess.Popen(["virsh", "-c", d.uri, "pool-event", "--loop", "--event",
                              "lifecycle", "--timeout", "20"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        assert watch.stdout is not None
        _wait_registered(d, watch.stdout)
        target = d.root / "ev"
        d.virsh("pool-define-as", "ev", "dir", "--target", str(target))
        for cmd in ("pool-build", "pool-start", "pool-destroy", "pool-delete", "pool-undefine"):
            d.virsh(cmd, "ev")
        lines: list[str] = []
        while len(lines) < 6:
            line = watch.stdout.readline()
            assert line, lines
            if "storage pool ev:" in line:  # late probe events may come first
                lines.append(line.strip())
    finally:
        watch.kill()
        watch.wait()
    assert lines == [f"event 'lifecycle' for storage pool ev: {e}" for e in
                     ("Defined", "Created", "Started", "Stopped", "Deleted", "Undefined")]


def _wait_registered(d: DaemonProcess, out: IO[str]) -> None:
    """Define and undefine a probe pool until the watcher reports it: then it listens."""
    os.set_blocking(out.fileno(), False)
    try:
        for _ in range(60):
            d.virsh("pool-define-as", "probe", "dir", "--target", str(d.root / "probe"))
            d.virsh("pool-undefine", "probe")
            time.sleep(0.5)
            if "probe: Undefined" in (out.read() or ""):
                return
        raise AssertionError("virsh pool-event never registered")
    finally:
        os.set_blocking(out.fileno(), True)


def test_transient_pool(module_daemon: DaemonProcess) -> None:
    d = module_daemon
    target = d.root / "tmp-pool"
    d.virsh("pool-create-as", "tp", "dir", "--target", str(target), "--build")
    assert "Persistent:     no" in d.virsh("pool-info", "tp").stdout
    res = d.virsh("pool-autostart", "tp", check=False)
    assert "error: internal error: pool has no config file" in res.stderr
    res = d.virsh("pool-create-as", "tp2", "dir", "--target", str(target), check=False)
    assert "error: operation failed: Storage source conflict with pool: 'tp'" in res.stderr
    d.virsh("pool-destroy", "tp")
    assert "tp" not in d.virsh("pool-list", "--all", "--name").stdout.split()
    target.rmdir()


def test_clone_and_preallocation(module_daemon: DaemonProcess, pool: str) -> None:
    d = module_daemon
    root = d.root / "vols"
    d.virsh("vol-create-as", pool, "q.qcow2", "20M", "--format", "qcow2")
    d.virsh("vol-create-as", pool, "r.img", "10M")
    d.virsh("vol-clone", "--pool", pool, "q.qcow2", "c.qcow2")
    assert "Capacity:       20.00 MiB" in d.virsh("vol-info", "--pool", pool, "c.qcow2").stdout
    res = d.virsh("vol-clone", "--pool", pool, "q.qcow2", "../c", check=False)
    assert "volume name '../c' cannot contain '/'" in res.stderr
    xml = "<volume><name>big.img</name><capacity unit='M'>30</capacity></volume>"
    spec = d.root / "big.xml"
    spec.write_text(xml)
    d.virsh("vol-create-from", pool, str(spec), "--inputpool", pool, "r.img")
    big = root / "big.img"
    assert big.stat().st_size == 30 << 20 and big.stat().st_blocks * 512 >= 30 << 20
    res = d.virsh("vol-create-as", pool, "pm.img", "1M", "--prealloc-metadata", check=False)
    assert ("unsupported configuration: metadata preallocation is not supported for raw "
            "volumes") in res.stderr
    assert not (root / "pm.img").exists()
    d.virsh("vol-create-as", pool, "pm.qcow2", "1M", "--format", "qcow2", "--prealloc-metadata")
    assert (root / "pm.qcow2").stat().st_blocks * 512 >= 1 << 20  # falloc: data too
    assert sorted(os.listdir(root)) == ["big.img", "c.qcow2", "pm.qcow2", "q.qcow2", "r.img"]


def test_resize_and_wipe(module_daemon: DaemonProcess, pool: str) -> None:
    import libvirt

    d = module_daemon
    d.virsh("vol-create-as", pool, "r.img", "10M")
    d.virsh("vol-create-as", pool, "q.qcow2", "20M", "--format", "qcow2")
    res = d.virsh("vol-resize", "--pool", pool, "r.img", "5M", check=False)
    assert "can't shrink capacity below existing allocation" in res.stderr
    d.virsh("vol-resize", "--pool", pool, "r.img", "20M")
    d.virsh("vol-resize", "--pool", pool, "r.img", "--delta", "5M")
    assert (d.root / "vols/r.img").stat().st_size == 25 << 20
    res = d.virsh("vol-resize", "--pool", pool, "r.img", "21M", check=False)
    assert "unless shrink flag explicitly specified" in res.stderr
    d.virsh("vol-resize", "--pool", pool, "q.qcow2", "30M")
    assert "Capacity:       30.00 MiB" in d.virsh("vol-info", "--pool", pool, "q.qcow2").stdout
    res = d.virsh("vol-resize", "--pool", pool, "q.qcow2", "40M", "--allocate", check=False)
    assert "preallocate is only supported for raw type volume" in res.stderr

    raw = d.root / "vols/r.img"
    with open(raw, "r+b") as f:
        f.write(b"secret")
    d.virsh("vol-wipe", "--pool", pool, "r.img")
    with open(raw, "rb") as f:
        assert f.read(6) == bytes(6)
    res = d.virsh("vol-wipe", "--pool", pool, "r.img", "--algorithm", "trim", check=False)
    assert "'trim' algorithm not supported" in res.stderr
    vol = d.conn().storageVolLookupByPath(str(raw))
    with pytest.raises(libvirt.libvirtError) as e:
        vol.wipePattern(99, 0)
    assert e.value.get_error_code() == libvirt.VIR_ERR_INVALID_ARG


def test_upload_and_download_sparse(module_daemon: DaemonProcess, pool: str) -> None:
    d = module_daemon
    src = d.root / "src.img"
    with open(src, "wb") as f:
        f.truncate(32 << 20)
        f.seek(8 << 20)
        f.write(os.urandom(3 << 20))
    d.virsh("vol-create-as", pool, "up.img", "32M", "--allocation", "0")
    d.virsh("vol-upload", "--pool", pool, "up.img", str(src), "--sparse")
    vol = d.root / "vols/up.img"
    assert vol.read_bytes() == src.read_bytes()
    assert vol.stat().st_blocks * 512 < 8 << 20  # holes stayed holes
    for extra in (["--sparse"], []):
        out = d.root / "down.img"
        d.virsh("vol-download", "--pool", pool, "up.img", str(out), *extra)
        assert out.read_bytes() == src.read_bytes()
        assert (out.stat().st_blocks * 512 < 8 << 20) == bool(extra)
        out.unlink()
    part = d.root / "part.img"
    d.virsh("vol-download", "--pool", pool, "up.img", str(part), "--offset", str(8 << 20),
            "--length", "4096")
    assert part.read_bytes() == src.read_bytes()[8 << 20:(8 << 20) + 4096]


def test_backing_stores(module_daemon: DaemonProcess, pool: str, tmp_path: Path) -> None:
    d = module_daemon
    base = d.root / "vols/base.qcow2"
    d.virsh("vol-create-as", pool, "base.qcow2", "20M", "--format", "qcow2")
    d.virsh("vol-create-as", pool, "top.qcow2", "20M", "--format", "qcow2", "--backing-vol",
            "base.qcow2", "--backing-vol-format", "qcow2")
    img = json.loads(subprocess.run(
        ["qemu-img", "info", "--output=json", str(d.root / "vols/top.qcow2")],
        capture_output=True, text=True, check=True).stdout)
    assert (img["backing-filename"], img["backing-filename-format"]) == (str(base), "qcow2")
    d.virsh("pool-refresh", pool)
    xml = d.virsh("vol-dumpxml", "--pool", pool, "top.qcow2").stdout
    assert f"<backingStore>\n    <path>{base}</path>\n    <format type='qcow2'/>" in xml
    _validate(tmp_path, xml, "storagevol")
    res = d.virsh("vol-create-as", pool, "r.img", "1M", "--backing-vol", "base.qcow2",
                  check=False)
    assert "backing storage not supported for raw volumes" in res.stderr
    assert not (d.root / "vols/r.img").exists()


def test_validate_flags(module_daemon: DaemonProcess, pool: str) -> None:
    d = module_daemon
    bad_vol = d.root / "bad-vol.xml"
    bad_vol.write_text("<volume><name>v</name><capacity>1</capacity><bogus/></volume>")
    res = d.virsh("vol-create", pool, str(bad_vol), "--validate", check=False)
    assert ("error: XML document failed to validate against schema: Unable to validate doc "
            "against /usr/share/libvirt/schemas/storagevol.rng\n"
            "Expecting an element target, got nothing\n") in res.stderr
    bad_pool = d.root / "bad-pool.xml"
    bad_pool.write_text("<pool type='dir'><name>v</name><bogus/>"
                        "<target><path>/var/tmp/v</path></target></pool>")
    res = d.virsh("pool-define", str(bad_pool), "--validate", check=False)
    assert "storagepool.rng\nExpecting an element target, got nothing\n" in res.stderr
    assert " v " not in d.virsh("pool-list", "--all").stdout
    good = d.root / "good-vol.xml"
    good.write_text("<volume><name>v</name><capacity>1</capacity><target/></volume>")
    d.virsh("vol-create", pool, str(good), "--validate")


def test_qcow2_compat_as_virt_install_asks(module_daemon: DaemonProcess, pool: str,
                                           tmp_path: Path) -> None:
    d = module_daemon
    spec = d.root / "c11.xml"
    spec.write_text("<volume type='file'><name>c11.qcow2</name><capacity unit='M'>20</capacity>"
                    "<allocation>0</allocation><target><format type='qcow2'/><compat>1.1</compat>"
                    "<features><lazy_refcounts/></features></target></volume>")
    d.virsh("vol-create", pool, str(spec))
    img = json.loads(subprocess.run(
        ["qemu-img", "info", "--output=json", str(d.root / "vols/c11.qcow2")],
        capture_output=True, text=True, check=True).stdout)
    assert img["format-specific"]["data"]["compat"] == "1.1"
    assert img["format-specific"]["data"]["lazy-refcounts"] is True
    d.virsh("pool-refresh", pool)
    xml = d.virsh("vol-dumpxml", "--pool", pool, "c11.qcow2").stdout
    assert ("    <compat>1.1</compat>\n    <clusterSize unit='B'>65536</clusterSize>\n"
            "    <features>\n      <lazy_refcounts/>\n    </features>\n") in xml
    _validate(tmp_path, xml, "storagevol")
