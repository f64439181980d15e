"""Guests on storage volumes, and uploads that go wrong, with stock virsh and libvirt-python.

One daemon serves the module, with a ``dir`` pool ``sd`` under its root and a
firmware-only guest (no OS: KVM runs its BIOS) whose disks are volumes of it.
What libvirtd 9.0 shows and answers for the same steps is what is checked.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.daemon import DaemonProcess

pytestmark = pytest.mark.slow

libvirt = pytest.importorskip("libvirt")

POOL = "sd"
GUEST = "sd-guest"
MiB = 1 << 20


def _validate(tmp_path: Path, xml: str, schema: str) -> None:
    path = tmp_path / f"{schema}.xml"
    path.write_text(xml)
    res = subprocess.run(["virt-xml-validate", str(path), schema], capture_output=True,
                         text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def _disk(volume: str, target: str, fmt: str | None = None, pool: str = POOL) -> str:
    driver = f"<driver name='qemu' type='{fmt}'/>" if fmt else ""
    return (f"<disk type='volume' device='disk'>{driver}"
            f"<source pool='{pool}' volume='{volume}'/>"
            f"<target dev='{target}' bus='virtio'/></disk>")


def _guest_xml(*disks: str) -> str:
    return (f"<domain type='kvm'><name>{GUEST}</name><memory unit='MiB'>64</memory>"
            "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
            f"<features><acpi/></features><devices>{''.join(disks)}</devices></domain>")


def _fails(d: DaemonProcess, *args: str) -> str:
    res = d.virsh(*args, check=False)
    assert res.returncode != 0, res.stdout
    return res.stderr


def _error(fn: Any) -> tuple[int, int, str]:
    with pytest.raises(libvirt.libvirtError) as info:
        fn()
    e = info.value
    return e.get_error_code(), e.get_error_domain(), e.get_error_message()


@pytest.fixture(scope="module")
def pool(module_daemon: DaemonProcess) -> Iterator[Path]:
    d = module_daemon
    target = d.root / "sd-pool"
    d.virsh("pool-define-as", POOL, "dir", "--target", str(target))
    d.virsh("pool-build", POOL)
    d.virsh("pool-start", POOL)
    d.virsh("vol-create-as", POOL, "raw1", "8M", "--format", "raw")
    d.virsh("vol-create-as", POOL, "q1", "16M", "--format", "qcow2")
    yield target
    d.virsh("destroy", GUEST, check=False)
    d.virsh("undefine", GUEST, check=False)
    d.virsh("pool-destroy", POOL, check=False)
    d.virsh("pool-undefine", POOL, check=False)


@pytest.fixture
def guest(module_daemon: DaemonProcess, pool: Path, tmp_path: Path) -> Iterator[str]:
    """The guest defined with disks raw1 (vda) and q1 (vdb), no format given."""
    path = tmp_path / "guest.xml"
    path.write_text(_guest_xml(_disk("raw1", "vda"), _disk("q1", "vdb")))
    module_daemon.virsh("define", str(path))
    yield GUEST
    module_daemon.virsh("destroy", GUEST, check=False)
    module_daemon.virsh("undefine", GUEST, check=False)
    module_daemon.virsh("pool-start", POOL, check=False)


def _qemu_args(d: DaemonProcess, name: str) -> list[str]:
    pid = (d.root / f"run/libvirt/qemu/{name}.pid").read_text().strip()
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def test_volume_disks_start_and_show_as_libvirtd(module_daemon: DaemonProcess, pool: Path,
                                                 guest: str, tmp_path: Path) -> None:
    d = module_daemon
    inactive = d.virsh("dumpxml", guest).stdout
    _validate(tmp_path, inactive, "domain")
    assert ("<disk type='volume' device='disk'>\n      <driver name='qemu'/>\n"
            f"      <source pool='{POOL}' volume='raw1'/>\n"
            "      <target dev='vda' bus='virtio'/>") in inactive
    assert ("error: internal error: missing storage backend for 'volume' storage"
            in _fails(d, "domblkinfo", guest, "vda"))  # what libvirtd says of a guest off
    d.virsh("start", guest)
    live = d.virsh("dumpxml", guest).stdout
    _validate(tmp_path, live, "domain")
    # As libvirtd: raw unless given (not the volume's qcow2), names not paths.
    assert ("<disk type='volume' device='disk'>\n      <driver name='qemu' type='raw'/>\n"
            f"      <source pool='{POOL}' volume='q1' index='1'/>\n      <backingStore/>\n"
            "      <target dev='vdb' bus='virtio'/>\n      <alias name='virtio-disk1'/>") in live
    assert str(pool) not in live
    assert d.virsh("dumpxml", "--inactive", guest).stdout == inactive
    args = _qemu_args(d, guest)
    assert any(f'"filename":"{pool}/raw1"' in a for a in args), args
    details = d.virsh("domblklist", guest, "--details").stdout.split("\n")
    assert details[2].split() == ["volume", "disk", "vda", "raw1"]
    assert details[3].split() == ["volume", "disk", "vdb", "q1"]
    assert d.virsh("domblklist", guest).stdout.split("\n")[2].split() == ["vda", "raw1"]
    info = d.virsh("domblkinfo", guest, "vda").stdout
    assert re.search(r"^Capacity:\s+8388608$", info, re.M), info
    assert re.search(r"^Physical:\s+8388608$", info, re.M), info
    rows = d.virsh("domblkinfo", guest, "--all").stdout.split("\n")
    assert rows[2].split()[:2] == ["vda", "8388608"]


def test_start_errors_as_libvirtd(module_daemon: DaemonProcess, pool: Path) -> None:
    d = module_daemon
    conn = d.conn()
    d.virsh("vol-create-as", POOL, "gone", "1M")
    xml = _guest_xml(_disk("raw1", "vda"), _disk("gone", "vdb"))
    dom = conn.defineXML(xml)
    try:
        d.virsh("vol-delete", "--pool", POOL, "gone")
        assert _error(dom.create) == (
            libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_FROM_STORAGE,
            "Storage volume not found: no storage vol with matching name 'gone'")
        d.virsh("pool-destroy", POOL)
        # The last disk is looked at first, as libvirtd does.
        assert _error(dom.create) == (
            libvirt.VIR_ERR_CONFIG_UNSUPPORTED, libvirt.VIR_FROM_DOMAIN,
            f"unsupported configuration: storage pool '{POOL}' containing volume 'gone' "
            "is not active")
        d.virsh("pool-start", POOL)
        dom.undefine()
        dom = conn.defineXML(_guest_xml(_disk("raw1", "vda", pool="nopool")))
        assert _error(dom.create) == (
            libvirt.VIR_ERR_NO_STORAGE_POOL, libvirt.VIR_FROM_STORAGE,
            "Storage pool not found: no storage pool with matching name 'nopool'")
        assert not dom.isActive()
    finally:
        d.virsh("undefine", GUEST, check=False)
        d.virsh("pool-start", POOL, check=False)


def test_pool_with_volumes_in_use_is_not_destroyed(module_daemon: DaemonProcess,
                                                   pool: Path, guest: str) -> None:
    d = module_daemon
    d.virsh("start", guest)
    err = _fails(d, "pool-destroy", POOL)
    assert ("error: Requested operation is not valid: storage pool 'sd' has volume "
            f"'raw1' in use by running domain '{guest}'") in err
    assert d.virsh("pool-info", POOL).stdout.count("running") == 1
    d.virsh("destroy", guest)
    d.virsh("pool-destroy", POOL)
    d.virsh("pool-start", POOL)


def test_hotplug_volume_disk(module_daemon: DaemonProcess, pool: Path, guest: str,
                             tmp_path: Path) -> None:
    d = module_daemon
    d.virsh("vol-create-as", POOL, "h1", "4M", "--format", "qcow2")
    try:
        d.virsh("start", guest)
        dev = tmp_path / "disk.xml"
        dev.write_text(_disk("h1", "vdc", "qcow2"))
        d.virsh("attach-device", guest, str(dev), "--live", "--config")
        live = d.virsh("dumpxml", guest).stdout
        _validate(tmp_path, live, "domain")
        assert (f"<source pool='{POOL}' volume='h1' index='3'/>\n      <backingStore/>\n"
                "      <target dev='vdc' bus='virtio'/>\n      <alias name='virtio-disk2'/>"
                ) in live
        assert f"<source pool='{POOL}' volume='h1'/>" in d.virsh(
            "dumpxml", "--inactive", guest).stdout
        info = d.virsh("domblkinfo", guest, "vdc").stdout
        assert re.search(r"^Capacity:\s+4194304$", info, re.M), info  # the qcow2's size
        assert d.virsh("domblklist", guest, "--details").stdout.split("\n")[4].split() == [
            "volume", "disk", "vdc", "h1"]
        # Unplug needs the guest's consent (it has no OS); the config forgets at once.
        d.virsh("detach-device", guest, str(dev), "--config")
        assert "volume='h1'" not in d.virsh("dumpxml", "--inactive", guest).stdout
        d.virsh("destroy", guest)
        # A volume of a pool that does not exist fails as at start.
        d.virsh("start", guest)
        dev.write_text(_disk("h1", "vdd", pool="nopool"))
        assert ("error: Storage pool not found: no storage pool with matching name "
                "'nopool'") in _fails(d, "attach-device", guest, str(dev), "--live")
    finally:
        d.virsh("destroy", guest, check=False)
        d.virsh("vol-delete", "--pool", POOL, "h1", check=False)


def test_reattach_keeps_volume_disks(module_daemon: DaemonProcess, pool: Path,
                                     guest: str) -> None:
    d = module_daemon
    d.virsh("start", guest)
    before = d.virsh("dumpxml", guest).stdout
    d.restart()
    assert d.virsh("dumpxml", guest).stdout == before
    assert re.search(r"^Capacity:\s+8388608$", d.virsh("domblkinfo", guest, "vda").stdout,
                     re.M)
    assert "in use by running domain" in _fails(d, "pool-destroy", POOL)


# -- uploads -----------------------------------------------------------------------------


def _leftovers(pool: Path) -> list[str]:
    return sorted(p.name for p in pool.iterdir() if p.name.startswith("."))


def test_sparse_upload_into_preallocated_volume_punches_holes(
        module_daemon: DaemonProcess, pool: Path, tmp_path: Path) -> None:
    d = module_daemon
    d.virsh("vol-create-as", POOL, "pre", "16M", "--allocation", "16M", "--format", "raw")
    try:
        assert (pool / "pre").stat().st_blocks * 512 >= 16 * MiB
        src = tmp_path / "src.img"
        with open(src, "wb") as f:
            f.truncate(16 * MiB)
            f.write(os.urandom(MiB))
            f.seek(8 * MiB)
            f.write(os.urandom(MiB))
        d.virsh("vol-upload", "--pool", POOL, "pre", str(src), "--sparse")
        assert (pool / "pre").read_bytes() == src.read_bytes()
        alloc = int(d.conn().storagePoolLookupByName(POOL).storageVolLookupByName(
            "pre").info()[2])
        assert alloc <= 4 * MiB, alloc
        assert _leftovers(pool) == []
    finally:
        d.virsh("vol-delete", "--pool", POOL, "pre", check=False)


def test_upload_at_an_offset_keeps_the_rest(module_daemon: DaemonProcess, pool: Path,
                                            tmp_path: Path) -> None:
    d = module_daemon
    d.virsh("vol-create-as", POOL, "off", "4M", "--format", "raw")
    try:
        old = os.urandom(4 * MiB)
        (pool / "off").write_bytes(old)
        src = tmp_path / "part"
        src.write_bytes(b"x" * MiB)
        d.virsh("vol-upload", "--pool", POOL, "off", str(src), "--offset", str(MiB))
        assert (pool / "off").read_bytes() == old[:MiB] + b"x" * MiB + old[2 * MiB:]
        assert oct((pool / "off").stat().st_mode & 0o777) == "0o600"
    finally:
        d.virsh("vol-delete", "--pool", POOL, "off", check=False)


def test_upload_aborted_midway_leaves_volume_as_it_was(module_daemon: DaemonProcess,
                                                       pool: Path) -> None:
    d = module_daemon
    d.virsh("vol-create-as", POOL, "ab", "4M", "--format", "raw")
    try:
        old = os.urandom(4 * MiB)
        (pool / "ab").write_bytes(old)
        conn = d.conn()
        vol = conn.storagePoolLookupByName(POOL).storageVolLookupByName("ab")
        stream = conn.newStream()
        vol.upload(stream, 0, 0, 0)
        stream.send(b"\xff" * MiB)
        # The volume is in use while the upload goes on, as libvirtd counts it.
        assert _error(vol.delete) == (
            libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_FROM_STORAGE,
            "Requested operation is not valid: volume 'ab' is still in use.")
        stream.abort()
        _wait(lambda: not _leftovers(pool))
        assert (pool / "ab").read_bytes() == old
        vol.delete()
    finally:
        d.virsh("vol-delete", "--pool", POOL, "ab", check=False)


def test_upload_past_its_length_fails_as_libvirtd(module_daemon: DaemonProcess,
                                                  pool: Path) -> None:
    d = module_daemon
    d.virsh("vol-create-as", POOL, "len", "4M", "--format", "raw")
    try:
        old = os.urandom(4 * MiB)
        (pool / "len").write_bytes(old)
        conn = d.conn()
        vol = conn.storagePoolLookupByName(POOL).storageVolLookupByName("len")
        stream = conn.newStream()
        vol.upload(stream, 0, MiB, 0)

        def send() -> None:
            stream.send(b"x" * MiB)
            stream.send(b"y" * MiB)
            stream.finish()

        assert _error(send) == (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_STREAMS,
                                "cannot write to stream: No space left on device")
        _wait(lambda: not _leftovers(pool))
        assert (pool / "len").read_bytes() == old
    finally:
        d.virsh("vol-delete", "--pool", POOL, "len", check=False)


CLIENT = textwrap.dedent("""
    import sys, libvirt
    conn = libvirt.open(sys.argv[1])
    vol = conn.storagePoolLookupByName(sys.argv[2]).storageVolLookupByName(sys.argv[3])
    stream = conn.newStream()
    vol.upload(stream, 0, 0, 0)
    stream.send(b"\\xff" * (1 << 20))
    print("sent", flush=True)
    sys.stdin.read()
""")


def test_upload_cut_by_a_killed_client_leaves_volume_as_it_was(
        module_daemon: DaemonProcess, pool: Path) -> None:
    d = module_daemon
    d.virsh("vol-create-as", POOL, "kill", "4M", "--format", "raw")
    try:
        old = os.urandom(4 * MiB)
        (pool / "kill").write_bytes(old)
        proc = subprocess.Popen([sys.executable, "-c", CLIENT, d.uri, POOL, "kill"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "sent\n"
            _wait(lambda: bool(_leftovers(pool)))  # the new contents go aside
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        _wait(lambda: not _leftovers(pool))
        assert (pool / "kill").read_bytes() == old
        d.virsh("vol-delete", "--pool", POOL, "kill")  # no longer in use
        d.virsh("pool-refresh", POOL)
        assert "kill" not in d.virsh("vol-list", POOL).stdout
    finally:
        d.virsh("vol-delete", "--pool", POOL, "kill", check=False)


def test_volume_xml_validates(module_daemon: DaemonProcess, pool: Path,
                              tmp_path: Path) -> None:
    _validate(tmp_path, module_daemon.virsh("vol-dumpxml", "--pool", POOL, "q1").stdout,
              "storagevol")


def _wait(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
