"""A pool on a mount that hangs fails its own calls after the storage timeout;
everything else the daemon serves answers at once, and the daemon starts.

The mount is tests/hangfs.py, a passthrough FUSE file system whose process is
stopped with SIGSTOP: every system call on it then blocks in the kernel, as on
an NFS server gone away. The daemon runs with AIOVIRTD_STORAGE_TIMEOUT set low
(drivers/offload.py) so the hung calls fail fast. Teardown always
continues the FUSE process and unmounts it, also when a test fails.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.daemon import DaemonProcess
from e2e.hang import (
    AT_ONCE,
    NEEDS_FUSE,
    TIMEOUT,
    HangFS,
    timed,
    virsh_at_once,
    virsh_times_out,
)

pytestmark = NEEDS_FUSE


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, HangFS]]:
    """A daemon with pool ``hang`` on the FUSE mount (volume a.img) and pool
    ``calm`` on a plain directory (volume c.img), both running."""
    fs = HangFS(tmp_path_factory.mktemp("hang"))
    d = DaemonProcess()
    old = os.environ.get("AIOVIRTD_STORAGE_TIMEOUT")
    os.environ["AIOVIRTD_STORAGE_TIMEOUT"] = str(TIMEOUT)
    try:
        fs.start()
        (fs.src / "a.img").write_bytes(bytes(1 << 16))
        d.start()
        d.virsh("pool-create-as", "hang", "dir", "--target", str(fs.mnt))
        calm = d.root / "calm"
        d.virsh("pool-create-as", "calm", "dir", "--target", str(calm), "--build")
        d.virsh("vol-create-as", "calm", "c.img", "1M")
        assert "a.img" in d.virsh("vol-list", "hang").stdout
        yield d, fs
    finally:
        if old is None:
            os.environ.pop("AIOVIRTD_STORAGE_TIMEOUT", None)
        else:
            os.environ["AIOVIRTD_STORAGE_TIMEOUT"] = old
        fs.close()  # before the daemon's root goes, and whatever failed
        d.cleanup()


@pytest.fixture
def frozen(setup: tuple[DaemonProcess, HangFS]) -> Iterator[DaemonProcess]:
    """The FUSE process stopped for the test, continued after it."""
    d, fs = setup
    fs.freeze()
    try:
        yield d
    finally:
        fs.thaw()
        # the calls left hanging end now; let their threads drain
        _wait_for(lambda: d.virsh("pool-refresh", "hang", check=False).returncode == 0)


def _wait_for(ok: Any, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not ok():
        assert time.monotonic() < deadline, "the pool did not come back"
        time.sleep(0.1)




def test_others_answer_while_a_refresh_hangs(frozen: DaemonProcess) -> None:
    """A refresh of the hung pool is under way (libvirt-python, another thread);
    meanwhile lists and calls about other pools answer at once."""
    import libvirt

    d = frozen
    outcome: dict[str, Any] = {}

    def refresh() -> None:
        conn = libvirt.open(d.uri)
        start = time.monotonic()
        try:
            conn.storagePoolLookupByName("hang").refresh(0)
        except libvirt.libvirtError as e:
            outcome["error"] = e
        outcome["took"] = time.monotonic() - start
        conn.close()

    worker = threading.Thread(target=refresh)
    worker.start()
    try:
        time.sleep(0.3)  # the refresh is waiting on the mount now
        assert "hang" in virsh_at_once(d, "pool-list", "--all")
        virsh_at_once(d, "list", "--all")
        virsh_at_once(d, "net-list", "--all")
        assert "c.img" in virsh_at_once(d, "vol-list", "calm", "--details")
        virsh_at_once(d, "vol-info", "--pool", "calm", "c.img")
        virsh_at_once(d, "pool-refresh", "calm")
        # what a pool's last refresh found answers at once too, as in libvirtd
        assert "running" in virsh_at_once(d, "pool-info", "hang")
        assert "a.img" in virsh_at_once(d, "vol-list", "hang")
        conn = d.conn()
        for call in (lambda: conn.listAllStoragePools(0), lambda: conn.listAllDomains(0),
                     lambda: conn.listAllNetworks(0), lambda: conn.getStoragePoolCapabilities(0),
                     lambda: conn.storagePoolLookupByName("calm").listAllVolumes(0)):
            took, _ = timed(call)
            assert took < AT_ONCE, f"a call took {took:.2f}s"
        assert worker.is_alive(), "the hung refresh did not wait for the mount"
    finally:
        worker.join(TIMEOUT + 10)
    err = outcome.get("error")
    assert err is not None, "the refresh of the hung pool succeeded"
    assert err.get_error_code() == libvirt.VIR_ERR_OPERATION_TIMEOUT, err
    assert TIMEOUT - 0.5 < outcome["took"] < TIMEOUT + 4, outcome["took"]


def test_hung_pool_calls_fail_after_the_timeout(frozen: DaemonProcess) -> None:
    """What must read the mount fails with libvirt's timeout error; the pool
    stays running (its mount may answer again)."""
    d = frozen
    virsh_times_out(d, "pool-refresh", "hang")
    virsh_times_out(d, "vol-info", "--pool", "hang", "a.img")
    virsh_times_out(d, "vol-dumpxml", "--pool", "hang", "a.img")
    virsh_times_out(d, "vol-create-as", "hang", "b.img", "1M")
    assert "running" in virsh_at_once(d, "pool-info", "hang")
    virsh_at_once(d, "vol-info", "--pool", "calm", "c.img")


def test_pool_answers_again_once_the_mount_does(setup: tuple[DaemonProcess, HangFS]) -> None:
    d, fs = setup
    fs.freeze()
    try:
        virsh_times_out(d, "pool-refresh", "hang")
    finally:
        fs.thaw()
    _wait_for(lambda: d.virsh("pool-refresh", "hang", check=False).returncode == 0)
    assert "a.img" in d.virsh("vol-list", "hang", "--details").stdout


def test_daemon_starts_with_a_hung_pool(setup: tuple[DaemonProcess, HangFS]) -> None:
    """A restart with the mount hung: the daemon stops though a thread of it is
    stuck on the mount; at start the running pool that does not answer is kept
    running and logged, one to autostart on it fails and is logged, the rest is
    up, all within about two timeouts."""
    d, fs = setup
    d.virsh("pool-define-as", "hang-auto", "dir", "--target", str(fs.mnt / "sub"))
    d.virsh("pool-autostart", "hang-auto")
    try:
        fs.freeze()
        try:
            virsh_times_out(d, "pool-refresh", "hang")  # its thread still waits
            took, _ = timed(d.stop)
            assert took < 5, f"the daemon took {took:.1f}s to stop"
            took, _ = timed(d.start)
            assert took < 2 * TIMEOUT + 8, f"the daemon took {took:.1f}s to start"
            log = d.log_path.read_text()
            assert "storage pool hang does not answer" in log, log
            assert "cannot autostart storage pool hang-auto" in log, log
            assert "running" in virsh_at_once(d, "pool-info", "hang")
            assert "c.img" in virsh_at_once(d, "vol-list", "calm")
            virsh_times_out(d, "pool-refresh", "hang")
        finally:
            fs.thaw()
        _wait_for(lambda: d.virsh("pool-refresh", "hang", check=False).returncode == 0)
        assert "a.img" in d.virsh("vol-list", "hang").stdout
    finally:
        d.virsh("pool-undefine", "hang-auto", check=False)
