"""``logical`` and ``disk`` pools with stock virsh against aiovirtd, on loop devices
made from sparse files in the test's own directory.

This kernel has no device-mapper: a volume group can be made, started (no LV
to activate), refreshed and removed, but no logical volume can be activated,
so lvcreate fails (as libvirtd's would) and LVs made aside stay inactive and
are not volumes. Partitions of loop devices do appear (partition scanning).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.daemon import DaemonProcess

pytestmark = pytest.mark.slow


def _has_device_mapper() -> bool:
    with open("/proc/misc") as f:  # lvm makes /dev/mapper/control even without the driver
        return "device-mapper" in f.read()


NO_DM = not _has_device_mapper()
PARTHELPER = "/usr/lib/libvirt/libvirt_parthelper"
LVM_ENV = dict(os.environ, LVM_SUPPRESS_FD_WARNINGS="1", LC_ALL="C")


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, env=LVM_ENV,
                          stdin=subprocess.DEVNULL)


def _validate(tmp_path: Path, xml: str, schema: str) -> None:
    path = tmp_path / f"{schema}.xml"
    path.write_text(xml)
    res = subprocess.run(["virt-xml-validate", str(path), schema], capture_output=True,
                         text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.fixture
def loopdev(tmp_path: Path) -> Iterator[str]:
    """A 64 MiB loop device over a sparse file, partitions scanned; its volume
    group (if any) and the device itself are gone at teardown."""
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    dev = _run("losetup", "--find", "--show", "--partscan", str(image)).stdout.strip()
    try:
        yield dev
    finally:
        vgs = _run("pvs", "--noheadings", "-o", "vg_name", dev, check=False).stdout.split()
        for vg in vgs:
            _run("vgremove", "-f", vg, check=False)
        _run("pvremove", "-ff", "-y", dev, check=False)
        _run("losetup", "-d", dev, check=False)


def _vg_name(dev: str) -> str:
    return f"avdtest{os.path.basename(dev)}"


def _undefine(d: DaemonProcess, name: str) -> None:
    d.virsh("pool-destroy", name, check=False)
    d.virsh("pool-undefine", name, check=False)


def test_pool_capabilities_list_logical_and_disk(module_daemon: DaemonProcess) -> None:
    out = module_daemon.virsh("pool-capabilities").stdout
    assert "<pool type='logical' supported='yes'>" in out
    assert "<pool type='disk' supported='yes'>" in out


def test_logical_pool_xml_as_libvirtd(module_daemon: DaemonProcess, tmp_path: Path) -> None:
    d = module_daemon
    (tmp_path / "p.xml").write_text(
        "<pool type='logical'><name>lx</name><source><device path='/dev/avd-a'/>"
        "<device path='/dev/avd-b'/><name>vgx</name></source>"
        "<target><path>/ignored</path><permissions><mode>0700</mode></permissions>"
        "</target></pool>")
    d.virsh("pool-define", str(tmp_path / "p.xml"))
    try:
        xml = d.virsh("pool-dumpxml", "lx").stdout
        _validate(tmp_path, xml, "storagepool")
        assert ("  <source>\n    <device path='/dev/avd-a'/>\n    <device path='/dev/avd-b'/>\n"
                "    <name>vgx</name>\n    <format type='lvm2'/>\n  </source>\n  <target>\n"
                "    <path>/dev/vgx</path>\n    <permissions>\n      <mode>0700</mode>\n"
                "    </permissions>\n  </target>\n") in xml
        (tmp_path / "q.xml").write_text(
            "<pool type='disk'><name>dx</name><source><device path='/dev/avd-a'/></source>"
            "<target><path>/dev</path></target></pool>")
        res = d.virsh("pool-define", str(tmp_path / "q.xml"), check=False)
        assert "error: operation failed: Storage source conflict with pool: 'lx'" in res.stderr
    finally:
        _undefine(d, "lx")


def test_logical_pool_life_cycle(module_daemon: DaemonProcess, loopdev: str,
                                 tmp_path: Path) -> None:
    d, vg = module_daemon, _vg_name(loopdev)
    d.virsh("pool-define-as", "lv1", "logical", "--source-dev", loopdev, "--source-name", vg)
    try:
        res = d.virsh("pool-start", "lv1", check=False)
        assert (f"error: unsupported configuration: cannot find logical volume group name "
                f"'{vg}'") in res.stderr
        d.virsh("pool-build", "lv1")
        assert _run("vgs", "--noheadings", "-o", "vg_name", vg).stdout.strip() == vg
        res = d.virsh("pool-build", "lv1", check=False)
        assert (f"error: Storage pool already built: Device '{loopdev}' already formatted "
                "using 'LVM2_member'") in res.stderr

        sources = d.virsh("find-storage-pool-sources", "logical").stdout
        assert (f"  <source>\n    <device path='{loopdev}'/>\n    <name>{vg}</name>\n"
                "    <format type='lvm2'/>\n  </source>\n") in sources

        d.virsh("pool-start", "lv1")
        size, free = _run("vgs", "--noheadings", "--units", "b", "--nosuffix", "-o",
                          "vg_size,vg_free", vg).stdout.split()
        xml = d.virsh("pool-dumpxml", "lv1").stdout
        _validate(tmp_path, xml, "storagepool")
        assert f"<capacity unit='bytes'>{size}</capacity>" in xml
        assert f"<available unit='bytes'>{free}</available>" in xml
        assert f"<path>/dev/{vg}</path>" in xml

        res = d.virsh("vol-create-as", "lv1", "v1", "4M", check=False)
        if NO_DM:  # libvirtd's lvcreate fails alike on this kernel
            assert (f"error: internal error: Child process (/sbin/lvcreate --name v1 -L 4096K "
                    f"{vg}) unexpected exit status") in res.stderr
            # An LV made aside cannot be activated: libvirtd lists inactive LVs as nothing.
            _run("lvcreate", "--driverloaded", "n", "--activate", "n", "-Zn", "-n", "aside",
                 "-L", "4M", vg)
            d.virsh("pool-refresh", "lv1")
            assert d.virsh("vol-list", "lv1").stdout.split("\n")[2].strip() == ""
            assert f"<allocation unit='bytes'>{4 << 20}</allocation>" in \
                d.virsh("pool-dumpxml", "lv1").stdout
        else:
            assert res.returncode == 0, res.stderr
            _validate(tmp_path, d.virsh("vol-dumpxml", "--pool", "lv1", "v1").stdout,
                      "storagevol")
            d.virsh("vol-delete", "--pool", "lv1", "v1")

        d.virsh("pool-destroy", "lv1")
        d.virsh("pool-delete", "lv1")
        assert _run("vgs", vg, check=False).returncode != 0
        assert "LVM2_member" not in _run("blkid", "-p", loopdev, check=False).stdout
    finally:
        _undefine(d, "lv1")


@pytest.mark.skipif(NO_DM, reason="no device-mapper in this kernel")
def test_logical_volumes(module_daemon: DaemonProcess, loopdev: str, tmp_path: Path) -> None:
    d, vg = module_daemon, _vg_name(loopdev)
    d.virsh("pool-define-as", "lv2", "logical", "--source-dev", loopdev, "--source-name", vg)
    try:
        d.virsh("pool-build", "lv2")
        d.virsh("pool-start", "lv2")
        d.virsh("vol-create-as", "lv2", "full", "8M")
        d.virsh("vol-create-as", "lv2", "thin", "16M", "--allocation", "4M")
        uuid = _run("lvs", "--noheadings", "-o", "uuid", f"{vg}/full").stdout.strip()
        assert d.virsh("vol-key", "--pool", "lv2", "full").stdout.strip() == uuid
        xml = d.virsh("vol-dumpxml", "--pool", "lv2", "full").stdout
        _validate(tmp_path, xml, "storagevol")
        assert f"<path>/dev/{vg}/full</path>" in xml and "<format" not in xml
        d.virsh("vol-wipe", "--pool", "lv2", "full")
        res = d.virsh("vol-wipe", "--pool", "lv2", "thin", check=False)
        assert "is sparse, volume wipe not supported" in res.stderr
        for vol in ("thin", "full"):
            d.virsh("vol-delete", "--pool", "lv2", vol)
        d.virsh("pool-destroy", "lv2")
        d.virsh("pool-delete", "lv2")
    finally:
        _undefine(d, "lv2")


def _parthelper(dev: str) -> list[list[str]]:
    """libvirt's own listing of the device, for comparison."""
    out = subprocess.run([PARTHELPER, dev], capture_output=True, check=True).stdout
    fields = out.decode().split("\0")[:-1]
    return [fields[i:i + 6] for i in range(0, len(fields), 6)]


def test_disk_pool_life_cycle(module_daemon: DaemonProcess, loopdev: str,
                              tmp_path: Path) -> None:
    d = module_daemon
    name = os.path.basename(loopdev)
    d.virsh("pool-define-as", "dk1", "disk", "--source-dev", loopdev, "--source-format", "dos",
            "--target", "/dev")
    try:
        res = d.virsh("pool-start", "dk1", check=False)
        assert (f"error: Storage pool probe failed: Device '{loopdev}' is unrecognized, "
                "requires build") in res.stderr
        d.virsh("pool-build", "dk1")
        assert "PTTYPE=\"dos\"" in _run("blkid", "-p", loopdev, check=False).stdout
        res = d.virsh("pool-build", "dk1", check=False)
        assert (f"error: Storage pool already built: Device '{loopdev}' already formatted "
                "using 'dos'") in res.stderr
        d.virsh("pool-start", "dk1")

        d.virsh("vol-create-as", "dk1", f"{name}p1", "10M")
        res = d.virsh("vol-create-as", "dk1", "wrong", "5M", check=False)
        assert (f"error: invalid argument: invalid partition name 'wrong', expected "
                f"'{name}p2'") in res.stderr
        d.virsh("pool-refresh", "dk1")
        assert os.path.exists(f"{loopdev}p1") and os.path.exists(f"{loopdev}p2")

        xml = d.virsh("pool-dumpxml", "dk1").stdout
        _validate(tmp_path, xml, "storagepool")
        if os.path.exists(PARTHELPER):
            rows = _parthelper(loopdev)
            free = [r for r in rows if r[2] == "free"]
            for row in free:
                start = max(int(row[3]), 512)
                assert f"<freeExtent start='{start}' end='{row[4]}'/>" in xml
            capacity = max(int(r[4]) for r in rows if r[2] != "metadata" or r[1] == "extended")
            assert f"<capacity unit='bytes'>{capacity}</capacity>" in xml
            data = [r for r in rows if r[2] == "data"]
            assert [r[0] for r in data] == [f"{loopdev}p1", f"{loopdev}p2"]
            vol = d.virsh("vol-dumpxml", "--pool", "dk1", f"{name}p1").stdout
            _validate(tmp_path, vol, "storagevol")
            assert (f"  <source>\n    <device path='{loopdev}'>\n      <extent "
                    f"start='{data[0][3]}' end='{data[0][4]}'/>\n    </device>\n"
                    "  </source>\n") in vol
            assert f"<capacity unit='bytes'>{data[0][5]}</capacity>" in vol
            assert "<format type='none'/>" in vol

        rows = d.virsh("vol-list", "dk1").stdout.split("\n")[2:4]
        assert [r.split() for r in rows] == [[f"{name}p1", f"{loopdev}p1"],
                                              [f"{name}p2", f"{loopdev}p2"]]
        assert d.virsh("vol-key", "--pool", "dk1", f"{name}p1").stdout.strip() == \
            f"{loopdev}p1"
        res = d.virsh("vol-resize", "--pool", "dk1", f"{name}p1", "20M", check=False)
        assert ("error: this function is not supported by the connection driver: storage "
                "pool does not support changing of volume capacity") in res.stderr

        data = os.urandom(1 << 20)
        (tmp_path / "in.bin").write_bytes(data)
        d.virsh("vol-upload", "--pool", "dk1", f"{name}p1", str(tmp_path / "in.bin"))
        with open(f"{loopdev}p1", "rb") as f:
            assert f.read(len(data)) == data
        for sparse in ((), ("--sparse",)):  # a block device has no holes to send
            d.virsh("vol-download", "--pool", "dk1", f"{name}p1", str(tmp_path / "out.bin"),
                    *sparse)
            out = (tmp_path / "out.bin").read_bytes()
            with open(f"{loopdev}p1", "rb") as f:
                assert out == f.read()
        d.virsh("vol-clone", "--pool", "dk1", f"{name}p1", f"{name}p3")
        with open(f"{loopdev}p3", "rb") as f:
            assert f.read(len(data)) == data
        d.virsh("vol-wipe", "--pool", "dk1", f"{name}p1")
        with open(f"{loopdev}p1", "rb") as f:
            assert f.read(len(data)) == bytes(len(data))

        # libvirtd takes the partition number as what follows the device's name in
        # the node's name: "p1" for loop devices, which parted refuses.
        res = d.virsh("vol-delete", "--pool", "dk1", f"{name}p1", check=False)
        assert (f"error: internal error: Child process (parted {loopdev} rm --script p1) "
                "unexpected exit status 1: Error: Partition doesn't exist.") in res.stderr

        d.virsh("pool-destroy", "dk1")
        d.virsh("pool-delete", "dk1")
        assert "PTTYPE" not in _run("blkid", "-p", loopdev, check=False).stdout
    finally:
        _undefine(d, "dk1")


def test_disk_pool_gpt_defaults(module_daemon: DaemonProcess, loopdev: str) -> None:
    d = module_daemon
    d.virsh("pool-define-as", "dk2", "disk", "--source-dev", loopdev, "--source-format", "gpt",
            "--target", "/dev")
    try:
        d.virsh("pool-build", "dk2")
        d.virsh("pool-start", "dk2")
        name = os.path.basename(loopdev)
        d.virsh("vol-create-as", "dk2", f"{name}p1", "8M")
        out = _run("parted", "-m", "-s", loopdev, "unit", "B", "print").stdout
        assert ":primary:" in out  # on gpt, "primary" is the partition's name
        d.virsh("pool-destroy", "dk2")
        res = d.virsh("pool-build", "dk2", "--no-overwrite", check=False)
        assert (f"Device '{loopdev}' already formatted using 'gpt'") in res.stderr
        d.virsh("pool-build", "dk2", "--overwrite")
    finally:
        _undefine(d, "dk2")


def test_disk_pool_extended_and_logical_partitions(module_daemon: DaemonProcess,
                                                   loopdev: str) -> None:
    d, name = module_daemon, os.path.basename(loopdev)
    d.virsh("pool-create-as", "dk3", "disk", "--source-dev", loopdev, "--target", "/dev",
            "--build")
    try:
        assert "<format type='dos'/>" in d.virsh("pool-dumpxml", "dk3").stdout
        d.virsh("vol-create-as", "dk3", f"{name}p1", "4M")
        d.virsh("vol-create-as", "dk3", f"{name}p2", "30M", "--format", "extended")
        res = d.virsh("vol-create-as", "dk3", "x", "1M", "--format", "extended", check=False)
        assert "error: internal error: extended partition already exists" in res.stderr
        d.virsh("vol-create-as", "dk3", f"{name}p3", "4M", "--format", "linux-swap")
        d.virsh("vol-create-as", "dk3", f"{name}p4", "4M")
        d.virsh("vol-create-as", "dk3", f"{name}p5", "5M")  # no primary left: a logical one
        d.virsh("vol-create-as", "dk3", f"{name}p6", "6M")
        table = _run("parted", "-s", loopdev, "unit", "B", "print").stdout
        kinds = {line.split()[0]: line.split()[4] for line in table.splitlines()
                 if line.strip()[:1].isdigit()}
        assert kinds == {"1": "primary", "2": "extended", "3": "primary", "4": "primary",
                         "5": "logical", "6": "logical"}
        vols = d.virsh("vol-list", "dk3").stdout.split()
        assert [v for v in vols if v.startswith(name)] == [
            f"{name}p{i}" for i in (1, 2, 3, 4, 5, 6)]
        ext = d.conn().storagePoolLookupByName("dk3").storageVolLookupByName(f"{name}p2")
        with open(f"{loopdev}p5", "rb") as f5, open(f"{loopdev}p6", "rb") as f6:
            sizes = [f5.seek(0, 2), f6.seek(0, 2)]
        assert ext.info()[2] == sum(sizes)  # the extended one carries its logical ones
        assert "<format type='linux-swap'/>" in d.virsh(
            "vol-dumpxml", "--pool", "dk3", f"{name}p3").stdout
        res = d.virsh("vol-wipe", "--pool", "dk3", f"{name}p2", check=False)
        assert (f"error: this function is not supported by the connection driver: cannot "
                f"wipe extended partition '{loopdev}p2'") in res.stderr
        if os.path.exists(PARTHELPER):
            xml = d.virsh("pool-dumpxml", "dk3").stdout
            rows = _parthelper(loopdev)
            allocation = sum(int(r[5]) for r in rows if r[2] == "data")
            assert f"<allocation unit='bytes'>{allocation}</allocation>" in xml
    finally:
        d.virsh("pool-destroy", "dk3", check=False)
