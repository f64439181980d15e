"""A guest's disk image on a mount that hangs fails that disk's own calls after
the timeout; the list, all-domain statistics and calls about other guests
answer at once, with stock virsh and libvirt-python.

The mount is tests/hangfs.py, stopped with SIGSTOP (as in test_storage_hang.py).
The daemon reads images off the loop (drivers/offload.py) with
AIOVIRTD_STORAGE_TIMEOUT set low; domstats waits on an image no longer than
on a guest's monitor (drivers/qemu/stats.py STATS_TIMEOUT) and then leaves
that disk's size fields out. Teardown always continues the FUSE process,
stops the guests and unmounts, also when a test fails.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.access import KVM
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
from e2e.test_stats import define, domstats

pytestmark = NEEDS_FUSE

#: How long domstats waits on one guest (its monitor or its images) at most.
STATS_WAIT = 1.0
GUESTS = ("hq-hung", "hq-calm", "hq-off")


def _xml(name: str, image: Path) -> str:
    """A firmware-only guest (it boots nothing) with one raw disk."""
    return (
        f"<domain type='{KVM}'><name>{name}</name><memory unit='MiB'>64</memory>"
        "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
        "<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
        f"<source file='{image}'/><target dev='vda' bus='virtio'/></disk>"
        "</devices></domain>"
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, HangFS]]:
    """Running guests ``hq-hung`` (image on the FUSE mount) and ``hq-calm``
    (image on a plain directory), and ``hq-off``, shut off, image on the mount."""
    fs = HangFS(tmp_path_factory.mktemp("qhang"))
    d = DaemonProcess()
    old = os.environ.get("AIOVIRTD_STORAGE_TIMEOUT")
    os.environ["AIOVIRTD_STORAGE_TIMEOUT"] = str(TIMEOUT)
    try:
        fs.start()
        for name in ("hung.raw", "off.raw"):
            (fs.src / name).write_bytes(bytes(1 << 20))
        d.start()
        (d.root / "calm.raw").write_bytes(bytes(1 << 20))
        define(d, "hq-hung", _xml("hq-hung", fs.mnt / "hung.raw"))
        define(d, "hq-calm", _xml("hq-calm", d.root / "calm.raw"))
        define(d, "hq-off", _xml("hq-off", fs.mnt / "off.raw"))
        d.virsh("start", "hq-hung")
        d.virsh("start", "hq-calm")
        yield d, fs
    finally:
        if old is None:
            os.environ.pop("AIOVIRTD_STORAGE_TIMEOUT", None)
        else:
            os.environ["AIOVIRTD_STORAGE_TIMEOUT"] = old
        fs.thaw()
        if d.proc is not None:
            for name in GUESTS:  # QEMU lets go of the mount before it goes
                d.virsh("destroy", name, check=False)
                d.virsh("undefine", name, check=False)
        fs.close()
        d.cleanup()


@pytest.fixture
def frozen(setup: tuple[DaemonProcess, HangFS]) -> Iterator[DaemonProcess]:
    """The FUSE process stopped for the test, continued after it; the image
    reads left hanging have ended by the next test."""
    d, fs = setup
    fs.freeze()
    try:
        yield d
    finally:
        fs.thaw()
        _wait_for(lambda: "block.0.capacity" in domstats(d, "--block", "hq-hung")["hq-hung"])


def _wait_for(ok: Callable[[], bool], limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not ok():
        assert time.monotonic() < deadline, "the image did not answer again"
        time.sleep(0.1)




def test_sizes_of_all_guests_while_the_mount_answers(setup: tuple[DaemonProcess, HangFS]) -> None:
    d, _fs = setup
    s = domstats(d, "--block")
    for name in GUESTS:
        assert s[name]["block.0.capacity"] == str(1 << 20), (name, s[name])
        assert s[name]["block.0.physical"] == str(1 << 20), (name, s[name])
    assert virsh_at_once(d, "domblkinfo", "hq-hung", "vda").split()[1] == str(1 << 20)


def test_others_answer_while_a_disk_hangs(frozen: DaemonProcess) -> None:
    """domblkinfo of the hung disk is under way (libvirt-python, another
    thread); meanwhile all-domain domstats gives every guest's record within
    one stats wait, without the hung images' sizes, then at once; the list, the
    other guest's suspend, resume and domblkinfo answer at once."""
    import libvirt

    d = frozen
    outcome: dict[str, Any] = {}

    def blockinfo() -> None:
        conn = libvirt.open(d.uri)
        start = time.monotonic()
        try:
            conn.lookupByName("hq-hung").blockInfo("vda", 0)
        except libvirt.libvirtError as e:
            outcome["error"] = e
        outcome["took"] = time.monotonic() - start
        conn.close()

    worker = threading.Thread(target=blockinfo)
    worker.start()
    try:
        time.sleep(0.3)  # domblkinfo is waiting on the mount now
        took, s = timed(lambda: domstats(d))
        assert took < STATS_WAIT + AT_ONCE, f"domstats took {took:.2f}s"
        for name in GUESTS:
            assert s[name]["block.0.name"] == "vda", (name, s[name])
        assert s["hq-calm"]["block.0.capacity"] == str(1 << 20)
        assert "block.0.capacity" not in s["hq-hung"] and "block.0.rd.reqs" in s["hq-hung"]
        assert "block.0.capacity" not in s["hq-off"] and "block.0.path" in s["hq-off"]
        assert s["hq-hung"]["state.state"] == "1" and "cpu.time" in s["hq-hung"]
        for _ in range(2):  # the hung images are known now: not waited for again
            virsh_at_once(d, "domstats")
        assert "hq-off" in virsh_at_once(d, "list", "--all")
        virsh_at_once(d, "suspend", "hq-calm")
        virsh_at_once(d, "resume", "hq-calm")
        assert virsh_at_once(d, "domblkinfo", "hq-calm", "vda").split()[1] == str(1 << 20)
        conn = d.conn()
        for call in (lambda: conn.listAllDomains(0),
                     lambda: conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_BLOCK, 0),
                     lambda: conn.lookupByName("hq-calm").blockInfo("vda", 0),
                     lambda: conn.lookupByName("hq-hung").info()):
            took, _ = timed(call)
            assert took < AT_ONCE, f"a call took {took:.2f}s"
        assert worker.is_alive(), "domblkinfo of the hung disk did not wait for the mount"
    finally:
        worker.join(TIMEOUT + 10)
    err = outcome.get("error")
    assert err is not None, "domblkinfo of the hung disk succeeded"
    assert err.get_error_code() == libvirt.VIR_ERR_OPERATION_TIMEOUT, err
    assert "Timed out during operation" in err.get_error_message()
    assert TIMEOUT - 0.5 < outcome["took"] < TIMEOUT + 4, outcome["took"]


def test_hung_disks_fail_after_the_timeout(frozen: DaemonProcess) -> None:
    """domblkinfo of a hung image fails with libvirt's timeout error, the
    guest running or not; the other guest's answers at once."""
    d = frozen
    virsh_times_out(d, "domblkinfo", "hq-hung", "vda")
    virsh_times_out(d, "domblkinfo", "hq-off", "vda")
    virsh_at_once(d, "domblkinfo", "hq-calm", "vda")


def test_sizes_come_back_once_the_mount_answers(setup: tuple[DaemonProcess, HangFS]) -> None:
    d, fs = setup
    fs.freeze()
    try:
        assert "block.0.capacity" not in domstats(d, "--block", "hq-off")["hq-off"]
    finally:
        fs.thaw()
    _wait_for(lambda: "block.0.capacity" in domstats(d, "--block", "hq-off")["hq-off"])
    assert virsh_at_once(d, "domblkinfo", "hq-off", "vda").split()[1] == str(1 << 20)
