"""fs, netfs and iscsi pools with stock virsh against aiovirtd.

fs pools live on a loop device over a sparse image in the test's tmp dir (or
on the image file itself); every mount and loop device made is undone at
teardown, also when a test fails. This kernel has no NFS and no iscsi_tcp, so
netfs and iscsi pools are defined, shown and validated, and fail to start with
libvirtd's errors.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.daemon import DaemonProcess

pytestmark = pytest.mark.slow

EXT4 = shutil.which("mkfs.ext4")


def _validate(tmp_path: Path, xml: str) -> None:
    path = tmp_path / "pool.xml"
    path.write_text(xml)
    res = subprocess.run(["virt-xml-validate", str(path), "storagepool"], capture_output=True,
                         text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def _mounts() -> list[tuple[str, str, str]]:
    """(source, mount point, options) of this namespace's mounts."""
    with open("/proc/self/mounts") as f:
        return [(fields[0], fields[1].replace("\\040", " "), fields[3])
                for fields in (line.split() for line in f)]


def _unmount_under(path: Path) -> None:
    for _, point, _ in reversed(_mounts()):
        inside = point == str(path) or point.startswith(f"{path}/")
        if inside and subprocess.run(["umount", point], capture_output=True,
                                     check=False).returncode:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """The test's tmp dir; whatever got mounted under it is unmounted at the end."""
    yield tmp_path
    _unmount_under(tmp_path)


@pytest.fixture
def loop(workdir: Path) -> Iterator[str]:
    """A loop device over a sparse 64 MiB image, detached at teardown."""
    if os.geteuid() != 0 or not os.path.exists("/dev/loop-control"):
        pytest.skip("loop devices need root and /dev/loop-control")
    if EXT4 is None:
        pytest.skip("mkfs.ext4 is not installed")
    image = workdir / "disk.img"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    res = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True,
                         text=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"no loop device to be had: {res.stderr.strip()}")
    device = res.stdout.strip()
    try:
        yield device
    finally:
        for source, point, _ in _mounts():
            if source == device:
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        # A mount copied into another mount namespace keeps the device busy: detach
        # then only marks it to go away once released.
        subprocess.run(["losetup", "-d", device], capture_output=True, check=False)


@pytest.fixture
def pools(module_daemon: DaemonProcess) -> Iterator[list[str]]:
    """Names of pools a test makes: stopped and undefined at teardown."""
    names: list[str] = []
    yield names
    for name in names:
        module_daemon.virsh("pool-destroy", name, check=False)
        module_daemon.virsh("pool-undefine", name, check=False)


def test_fs_pool_on_a_loop_device(module_daemon: DaemonProcess, workdir: Path, loop: str,
                                  pools: list[str]) -> None:
    d, target = module_daemon, workdir / "mnt"
    pools.append("fs1")
    d.virsh("pool-define-as", "fs1", "fs", "--source-dev", loop, "--source-format", "ext4",
            "--target", str(target))
    xml = d.virsh("pool-dumpxml", "fs1").stdout
    _validate(workdir, xml)
    assert (f"  <source>\n    <device path='{loop}'/>\n    <format type='ext4'/>\n"
            "  </source>\n") in xml
    assert ("error: this function is not supported by the connection driver: pool type 'fs' "
            "does not support source discovery") in d.virsh(
                "find-storage-pool-sources", "fs", check=False).stderr

    d.virsh("pool-build", "fs1")  # the directory alone
    assert target.is_dir()
    assert subprocess.run(["blkid", "-p", loop], capture_output=True, check=False).returncode == 2
    d.virsh("pool-build", "fs1", "--no-overwrite")  # an empty device: formatted
    res = d.virsh("pool-build", "fs1", "--no-overwrite", check=False)
    assert (f"error: Storage pool already built: Device '{loop}' already formatted using "
            "'ext4'") in res.stderr
    res = d.virsh("pool-build", "fs1", "--overwrite", "--no-overwrite", check=False)
    assert res.returncode != 0
    d.virsh("pool-build", "fs1", "--overwrite")

    d.virsh("pool-start", "fs1")
    mount = [m for m in _mounts() if m[1] == str(target)]
    assert len(mount) == 1 and mount[0][0] == loop
    assert {"nodev", "nosuid", "noexec"} <= set(mount[0][2].split(","))
    xml = d.virsh("pool-dumpxml", "fs1").stdout
    _validate(workdir, xml)
    fs = os.statvfs(target)
    capacity, available = fs.f_frsize * fs.f_blocks, fs.f_frsize * fs.f_bfree
    assert f"<capacity unit='bytes'>{capacity}</capacity>" in xml
    assert f"<available unit='bytes'>{available}</available>" in xml
    assert "<mode>0755</mode>" in xml  # the mounted file system's root

    d.virsh("vol-create-as", "fs1", "v1", "8M")
    names = d.virsh("vol-list", "fs1").stdout
    assert "v1" in names and "lost+found" in names
    assert (target / "v1").stat().st_size == 8 << 20
    assert "Allocation:     8.00 MiB" in d.virsh("vol-info", "--pool", "fs1", "v1").stdout

    d.virsh("pool-destroy", "fs1")
    assert not [m for m in _mounts() if m[1] == str(target)]
    assert not (target / "v1").exists()
    d.virsh("pool-start", "fs1")
    assert "v1" in d.virsh("vol-list", "fs1").stdout
    d.virsh("vol-delete", "--pool", "fs1", "v1")
    d.virsh("pool-destroy", "fs1")
    d.virsh("pool-delete", "fs1")
    assert not target.exists()
    d.virsh("pool-undefine", "fs1")


def test_fs_pool_on_an_image_file(module_daemon: DaemonProcess, workdir: Path,
                                  pools: list[str]) -> None:
    """mount puts an image file on a loop device of its own; stopping the pool
    unmounts it (libvirtd 9.0 loses track of such a mount and leaves it)."""
    if os.geteuid() != 0 or not os.path.exists("/dev/loop-control") or EXT4 is None:
        pytest.skip("needs root, loop devices and mkfs.ext4")
    d, image, target = module_daemon, workdir / "fs.img", workdir / "mnt"
    with open(image, "wb") as f:
        f.truncate(32 << 20)
    pools.append("fs2")
    d.virsh("pool-define-as", "fs2", "fs", "--source-dev", str(image), "--source-format",
            "ext4", "--target", str(target))
    d.virsh("pool-build", "fs2", "--overwrite")
    d.virsh("pool-start", "fs2")
    assert [m for m in _mounts() if m[1] == str(target)]
    d.virsh("vol-create-as", "fs2", "q", "4M", "--format", "qcow2")
    assert "qcow2" in d.virsh("vol-dumpxml", "--pool", "fs2", "q").stdout
    d.virsh("pool-destroy", "fs2")
    assert not [m for m in _mounts() if m[1] == str(target)]
    d.virsh("pool-undefine", "fs2")


def test_fs_pool_start_without_its_device(module_daemon: DaemonProcess, workdir: Path,
                                          pools: list[str]) -> None:
    d, target = module_daemon, workdir / "mnt"
    pools.append("fs3")
    d.virsh("pool-define-as", "fs3", "fs", "--source-dev", str(workdir / "nodev"),
            "--source-format", "ext4", "--target", str(target))
    d.virsh("pool-build", "fs3")
    res = d.virsh("pool-start", "fs3", check=False)
    assert (f"error: internal error: Child process (/bin/mount -o nodev,nosuid,noexec -t ext4 "
            f"{workdir}/nodev {target}) unexpected exit status 32: mount: {target}: special "
            f"device {workdir}/nodev does not exist.") in res.stderr
    res = d.virsh("pool-build", "fs3", "--overwrite", check=False)
    assert ("error: Requested operation is not valid: Source device does not exist when "
            "formatting pool 'fs3'") in res.stderr
    assert "State:          inactive" in d.virsh("pool-info", "fs3").stdout


def test_fs_pool_across_daemon_restarts(daemon: DaemonProcess, workdir: Path,
                                        loop: str) -> None:
    """A pool still mounted stays active; one unmounted meanwhile comes back inactive."""
    target = workdir / "mnt"
    daemon.virsh("pool-define-as", "fs4", "fs", "--source-dev", loop, "--source-format", "ext4",
                 "--target", str(target))
    daemon.virsh("pool-build", "fs4", "--overwrite")
    daemon.virsh("pool-start", "fs4")
    daemon.virsh("vol-create-as", "fs4", "kept", "1M")
    daemon.restart()
    info = daemon.virsh("pool-info", "fs4").stdout
    assert "State:          running" in info
    assert "kept" in daemon.virsh("vol-list", "fs4").stdout
    daemon.stop()
    subprocess.run(["umount", str(target)], check=True)
    daemon.start()
    assert "State:          inactive" in daemon.virsh("pool-info", "fs4").stdout
    daemon.virsh("pool-start", "fs4")
    assert "kept" in daemon.virsh("vol-list", "fs4").stdout
    daemon.virsh("pool-destroy", "fs4")
    daemon.virsh("pool-undefine", "fs4")


def test_netfs_pool(module_daemon: DaemonProcess, workdir: Path, pools: list[str]) -> None:
    """Defined and shown as libvirtd; this kernel has no NFS, so mount fails."""
    d, target = module_daemon, workdir / "nfs"
    pools.append("nfs1")
    d.virsh("pool-define-as", "nfs1", "netfs", "--source-host", "127.0.0.1", "--source-path",
            "/stfs-export", "--source-format", "nfs", "--target", str(target))
    xml = d.virsh("pool-dumpxml", "nfs1").stdout
    _validate(workdir, xml)
    assert ("  <source>\n    <host name='127.0.0.1'/>\n    <dir path='/stfs-export'/>\n"
            "    <format type='nfs'/>\n  </source>\n") in xml
    res = d.virsh("pool-define-as", "nfs2", "netfs", "--source-host", "127.0.0.1",
                  "--source-path", "/stfs-export", "--target", str(workdir / "other"),
                  check=False)
    assert "error: operation failed: Storage source conflict with pool: 'nfs1'" in res.stderr
    d.virsh("pool-build", "nfs1")
    assert target.is_dir()
    res = d.virsh("pool-start", "nfs1", check=False)
    assert (f"error: internal error: Child process (/bin/mount -o nodev,nosuid,noexec -t nfs "
            f"127.0.0.1:/stfs-export {target}) unexpected exit status 32: ") in res.stderr
    assert "State:          inactive" in d.virsh("pool-info", "nfs1").stdout
    res = d.virsh("pool-build", "nfs1", "--overwrite", check=False)
    assert ("error: Requested operation is not valid: No source device specified when "
            "formatting pool 'nfs1'") in res.stderr
    res = d.virsh("find-storage-pool-sources", "netfs", check=False)
    assert "error: invalid argument: hostname must be specified for netfs sources" in res.stderr
    d.virsh("pool-delete", "nfs1")
    assert not target.exists()
    d.virsh("pool-undefine", "nfs1")


def test_netfs_discovery_finds_nothing(module_daemon: DaemonProcess) -> None:
    started = time.monotonic()
    res = module_daemon.virsh("find-storage-pool-sources-as", "netfs", "127.0.0.1",
                              check=False)
    assert ("error: operation failed: no storage pools were found on host '127.0.0.1'"
            in res.stderr), res.stderr
    assert time.monotonic() - started < 60


def test_iscsi_pools(module_daemon: DaemonProcess, workdir: Path, pools: list[str]) -> None:
    """No target and no iscsi_tcp here: the pool is defined, and start fails as
    libvirtd's does (without iscsiadm: its node record cannot be made)."""
    d = module_daemon
    pools.append("iscsi1")
    d.virsh("pool-define-as", "iscsi1", "iscsi", "--source-host", "127.0.0.1", "--source-dev",
            "iqn.2026-01.org.example:stfs", "--target", "/dev/disk/by-path")
    xml = d.virsh("pool-dumpxml", "iscsi1").stdout
    _validate(workdir, xml)
    assert ("    <host name='127.0.0.1'/>\n"
            "    <device path='iqn.2026-01.org.example:stfs'/>\n  </source>") in xml
    res = d.virsh("pool-start", "iscsi1", check=False)
    assert "error: Failed to start pool iscsi1" in res.stderr
    if not os.path.exists("/usr/bin/iscsiadm"):
        assert ("error: internal error: /usr/bin/iscsiadm failed new mode for target "
                "'iqn.2026-01.org.example:stfs' with status '127'") in res.stderr
        res = d.virsh("find-storage-pool-sources-as", "iscsi", "127.0.0.1", check=False)
        assert ("error: internal error: Child process (/usr/bin/iscsiadm --mode discovery "
                "--type sendtargets --portal 127.0.0.1:3260,1 --op nonpersistent) unexpected "
                "exit status 127: libvirt:  error : cannot execute binary /usr/bin/iscsiadm: "
                "No such file or directory") in res.stderr
    # as libvirtd, start names the default port in the definition
    assert "<host name='127.0.0.1' port='3260'/>" in d.virsh("pool-dumpxml", "iscsi1").stdout
    d.virsh("pool-build", "iscsi1")  # nothing to build: quietly done
    res = d.virsh("pool-delete", "iscsi1", check=False)
    assert ("error: this function is not supported by the connection driver: pool does not "
            "support pool deletion") in res.stderr
    d.virsh("pool-undefine", "iscsi1")

    direct = workdir / "direct.xml"
    direct.write_text("<pool type='iscsi-direct'><name>iscsi2</name><source>"
                      "<host name='127.0.0.1'/><device path='iqn.2026-01.org.example:stfs'/>"
                      "<initiator><iqn name='iqn.2026-01.org.example:init'/></initiator>"
                      "</source></pool>")
    _validate(workdir, direct.read_text())
    res = d.virsh("pool-define", str(direct), check=False)
    assert ("error: internal error: missing backend for pool type 6 (iscsi-direct)"
            in res.stderr)


def test_pool_capabilities_list_the_new_types(module_daemon: DaemonProcess) -> None:
    out = module_daemon.virsh("pool-capabilities").stdout
    for kind in ("fs", "netfs", "iscsi"):
        assert f"<pool type='{kind}' supported='yes'>" in out
    assert "<pool type='iscsi-direct' supported='no'>" in out
