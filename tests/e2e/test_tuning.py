"""Resource tuning with stock virsh: each setting read back, errors as libvirtd gives them.

One Linux test guest (TCG, two vCPU slots with one plugged, a balloon) serves
the whole module; the balloon and vCPU hotplug need its cooperation. An
inactive copy of the definition checks the config-only paths.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.daemon import DaemonProcess

pytestmark = pytest.mark.slow

NAME = "tune"
BOOT_TIMEOUT = 60.0


def guest_xml(name: str, kernel: Path, initrd: Path, cmdline: str) -> str:
    return (
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>256</memory>"
        "<vcpu current='1'>2</vcpu>"
        "<os><type arch='x86_64' machine='pc'>hvm</type>"
        f"<kernel>{kernel}</kernel><initrd>{initrd}</initrd><cmdline>{cmdline}</cmdline></os>"
        "<features><acpi/></features><on_reboot>destroy</on_reboot>"
        "<devices><serial type='pty'/><memballoon model='virtio'/></devices></domain>"
    )


@pytest.fixture(scope="module")
def guest(module_daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    from guest import BANNER, ensure_guest

    g = ensure_guest()
    d = module_daemon
    for name in (NAME, "tune-off"):
        path = d.root / f"{name}.xml"
        path.write_text(guest_xml(name, g.kernel, g.initrd, g.cmdline))
        d.virsh("define", str(path))
    d.virsh("start", NAME)
    log = d.root / "var/log/libvirt/qemu" / f"{NAME}.log"
    pty = re.search(r"<source path='(/dev/pts/\d+)'/>", out(d, "dumpxml", NAME))
    assert pty is not None
    fd = os.open(pty.group(1), os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    seen = b""
    deadline = time.monotonic() + BOOT_TIMEOUT
    try:  # the balloon and CPU hotplug need the guest's drivers up
        while BANNER.encode() not in seen:
            assert time.monotonic() < deadline, f"guest did not boot: {seen[-300:]!r} {log}"
            try:
                seen += os.read(fd, 4096)
            except BlockingIOError:
                time.sleep(0.1)
    finally:
        os.close(fd)
    yield d
    for name in (NAME, "tune-off"):
        d.virsh("destroy", name, check=False)
        d.virsh("undefine", name, check=False)


def out(d: DaemonProcess, *args: str) -> str:
    return d.virsh(*args).stdout.strip()


def fails(d: DaemonProcess, *args: str) -> str:
    res = d.virsh(*args, check=False)
    assert res.returncode != 0, res.stdout
    return res.stderr.strip()


def fields(text: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def wait_until(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


def qemu_pid(d: DaemonProcess) -> int:
    return int((d.root / f"run/libvirt/qemu/{NAME}.pid").read_text())


def test_setmem_balloons_the_guest(guest: DaemonProcess) -> None:
    guest.virsh("setmem", NAME, "200M")
    wait_until(lambda: fields(out(guest, "dominfo", NAME))["Used memory"] == "204800 KiB")
    assert "<currentMemory unit='KiB'>204800</currentMemory>" in out(guest, "dumpxml", NAME)
    assert out(guest, "dommemstat", NAME).splitlines()[0] == "actual 204800"
    assert fails(guest, "setmem", NAME, "400M") == (
        "error: invalid argument: cannot set memory higher than max memory"
    )
    guest.virsh("setmem", NAME, "256M")
    wait_until(lambda: fields(out(guest, "dominfo", NAME))["Used memory"] == "262144 KiB")


def test_setmaxmem_config_only(guest: DaemonProcess) -> None:
    assert fails(guest, "setmaxmem", NAME, "300M") == (
        "error: Unable to change MaxMemorySize\nerror: Requested operation is not valid:"
        " cannot resize the maximum memory on an active domain"
    )
    guest.virsh("setmaxmem", NAME, "300M", "--config")
    inactive = out(guest, "dumpxml", NAME, "--inactive")
    assert "<memory unit='KiB'>307200</memory>" in inactive
    assert "<memory unit='KiB'>262144</memory>" in out(guest, "dumpxml", NAME)
    guest.virsh("setmaxmem", NAME, "256M", "--config")


def test_setvcpus_hotplugs_a_vcpu(guest: DaemonProcess) -> None:
    guest.virsh("setvcpus", NAME, "2")
    counts = out(guest, "vcpucount", NAME).split("\n")
    assert [line.split() for line in counts] == [
        ["maximum", "config", "2"], ["maximum", "live", "2"],
        ["current", "config", "1"], ["current", "live", "2"],
    ]
    assert out(guest, "vcpuinfo", NAME).count("VCPU:") == 2
    assert "<vcpu id='1' enabled='yes' hotpluggable='yes' order='2'/>" in out(
        guest, "dumpxml", NAME
    )
    assert fails(guest, "setvcpus", NAME, "3") == (
        "error: invalid argument: requested vcpus is greater than max allowable vcpus"
        " for the live domain: 3 > 2"
    )
    guest.virsh("setvcpus", NAME, "1")  # the guest lets it go
    assert out(guest, "vcpuinfo", NAME).count("VCPU:") == 1
    assert guest.conn().lookupByName(NAME).vcpusFlags(0) == 1


def test_vcpuinfo_has_thread_times(guest: DaemonProcess) -> None:
    info = fields(out(guest, "vcpuinfo", NAME))
    assert info["VCPU"] == "0" and info["State"] == "running"
    assert float(info["CPU time"].rstrip("s")) > 0.1  # booting Linux under TCG
    assert info["CPU Affinity"] == "y" * os.cpu_count()  # type: ignore[operator]


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="pinning needs two host CPUs")
def test_vcpupin_and_emulatorpin(guest: DaemonProcess) -> None:
    guest.virsh("vcpupin", NAME, "0", "1")
    assert out(guest, "vcpupin", NAME).splitlines()[2].split() == ["0", "1"]
    assert fields(out(guest, "vcpuinfo", NAME))["CPU Affinity"].startswith("-y")
    guest.virsh("emulatorpin", NAME, "0")
    assert out(guest, "emulatorpin", NAME).splitlines()[-1].split() == ["*:", "0"]
    assert os.sched_getaffinity(qemu_pid(guest)) == {0}
    live = out(guest, "dumpxml", NAME)
    assert "<vcpupin vcpu='0' cpuset='1'/>" in live and "<emulatorpin cpuset='0'/>" in live
    guest.virsh("vcpupin", NAME, "1", "0", "--config")
    assert "<vcpupin vcpu='1' cpuset='0'/>" in out(guest, "dumpxml", NAME, "--inactive")
    ncpus = os.cpu_count() or 1
    guest.virsh("vcpupin", NAME, "0", f"0-{ncpus - 1}")
    guest.virsh("emulatorpin", NAME, f"0-{ncpus - 1}")
    assert os.sched_getaffinity(qemu_pid(guest)) == set(range(ncpus))


def test_cpu_stats(guest: DaemonProcess) -> None:
    total = out(guest, "cpu-stats", NAME, "--total")
    values = dict(re.findall(r"(\w+_time)\s+([\d.]+) seconds", total))
    assert set(values) == {"cpu_time", "user_time", "system_time"}
    assert float(values["cpu_time"]) > 0.1
    assert float(values["cpu_time"]) >= float(values["user_time"])
    uuid = out(guest, "domuuid", NAME)
    if not Path(f"/sys/fs/cgroup/cpuacct/machine/qemu-{uuid}.aiovirtd").exists():
        # Per host CPU needs v1 cpuacct: libvirtd says the same on cgroup v2.
        assert fails(guest, "cpu-stats", NAME).endswith(
            "error: Operation not supported: operation 'getCpuacctPercpuUsage' not supported"
            " for backend 'cgroup V2'"
        )
        return
    per_cpu = out(guest, "cpu-stats", NAME, "--start", "0", "--count", "1")
    lines = [line.split() for line in per_cpu.splitlines()]
    assert lines[0] == ["CPU0:"]
    assert [line[0] for line in lines[1:3]] == ["cpu_time", "vcpu_time"]
    everything = out(guest, "cpu-stats", NAME)
    assert everything.count("vcpu_time") == os.cpu_count() and "Total:" in everything
    used = re.findall(r"cpu_time\s+([\d.]+)", everything)
    assert sum(float(v) for v in used[:-1]) > 0.1  # booting Linux under TCG


def test_schedinfo(guest: DaemonProcess) -> None:
    info = fields(out(guest, "schedinfo", NAME))
    assert info["Scheduler"] == "posix"
    assert list(info)[1:] == [
        "cpu_shares", "vcpu_period", "vcpu_quota", "emulator_period", "emulator_quota",
        "global_period", "global_quota", "iothread_period", "iothread_quota",
    ]
    assert (info["vcpu_period"], info["vcpu_quota"]) == ("100000", "-1")
    info = fields(out(guest, "schedinfo", NAME, "--set", "cpu_shares=2048"))
    assert info["cpu_shares"] == "2048"
    info = fields(out(guest, "schedinfo", NAME, "--set", "global_quota=50000"))
    assert (info["global_period"], info["global_quota"]) == ("100000", "50000")
    assert "<global_quota>50000</global_quota>" in out(guest, "dumpxml", NAME)
    guest.virsh("schedinfo", NAME, "--set", "global_quota=-1")
    assert "vcpu_period' is out of range [1000, 1000000]" in fails(
        guest, "schedinfo", NAME, "--config", "--set", "vcpu_period=10"
    )
    guest.virsh("schedinfo", NAME, "--config", "--set", "vcpu_quota=20000")
    assert fields(out(guest, "schedinfo", NAME, "--config"))["vcpu_quota"] == "20000"
    assert "<quota>20000</quota>" in out(guest, "dumpxml", NAME, "--inactive")


def test_memtune(guest: DaemonProcess) -> None:
    assert fields(out(guest, "memtune", NAME)) == {
        "hard_limit": "unlimited", "soft_limit": "unlimited", "swap_hard_limit": "unlimited",
    }
    guest.virsh("memtune", NAME, "--hard-limit", "1048576", "--soft-limit", "524288")
    assert fields(out(guest, "memtune", NAME)) == {
        "hard_limit": "1048576", "soft_limit": "524288", "swap_hard_limit": "unlimited",
    }
    assert "<hard_limit unit='KiB'>1048576</hard_limit>" in out(guest, "dumpxml", NAME)
    guest.virsh("memtune", NAME, "--config", "--hard-limit", "2000000")
    assert fields(out(guest, "memtune", NAME, "--config"))["hard_limit"] == "2000000"


def test_blkiotune(guest: DaemonProcess) -> None:
    assert fields(out(guest, "blkiotune", NAME))["weight"] == "100"
    guest.virsh("blkiotune", NAME, "--weight", "500")
    assert fields(out(guest, "blkiotune", NAME))["weight"] == "500"
    guest.virsh("blkiotune", NAME, "--config", "--weight", "300")
    assert fields(out(guest, "blkiotune", NAME, "--config"))["weight"] == "300"
    assert "<weight>300</weight>" in out(guest, "dumpxml", NAME, "--inactive")


def test_inactive_guest(guest: DaemonProcess) -> None:
    off = "tune-off"
    not_running = "error: Requested operation is not valid: domain is not running"
    assert fails(guest, "setmem", off, "100M") == not_running
    assert fails(guest, "setvcpus", off, "2", "--live") == not_running
    assert fails(guest, "cpu-stats", off, "--total").endswith(not_running)
    assert fails(guest, "setvcpus", off, "3", "--config") == (
        "error: invalid argument: requested vcpus is greater than max allowable vcpus"
        " for the persistent domain: 3 > 2"
    )
    guest.virsh("setvcpus", off, "2", "--config")
    guest.virsh("setmem", off, "128M", "--config")
    inactive = out(guest, "dumpxml", off)
    assert "<vcpu placement='static'>2</vcpu>" in inactive
    assert "<currentMemory unit='KiB'>131072</currentMemory>" in inactive
    # virsh falls back to the pinning of the definition when vcpuinfo fails.
    info = fields(out(guest, "vcpuinfo", off))
    assert (info["CPU"], info["State"]) == ("N/A", "N/A")
    assert fields(out(guest, "schedinfo", off))["cpu_shares"] == "0"


def test_thread_bandwidth_live(guest: DaemonProcess) -> None:
    uuid = out(guest, "domuuid", NAME)
    group = Path(f"/sys/fs/cgroup/cpu/machine/qemu-{uuid}.aiovirtd")
    if not (group / "cpu.cfs_quota_us").exists():
        pytest.skip("per-thread bandwidth needs the cgroup v1 cpu controller")
    info = fields(out(guest, "schedinfo", NAME, "--set", "vcpu_quota=50000",
                      "--set", "emulator_period=200000"))
    assert (info["vcpu_quota"], info["emulator_period"]) == ("50000", "200000")
    assert (group / "vcpu0/cpu.cfs_quota_us").read_text().strip() == "50000"
    assert (group / "emulator/cpu.cfs_period_us").read_text().strip() == "200000"
    assert str(qemu_pid(guest)) in (group / "emulator/tasks").read_text().split()
    live = out(guest, "dumpxml", NAME)
    assert "<quota>50000</quota>" in live and "<emulator_period>200000</emulator_period>" in live
    guest.virsh("schedinfo", NAME, "--set", "vcpu_quota=-1")
    assert (group / "vcpu0/cpu.cfs_quota_us").read_text().strip() == "-1"


def test_config_tuning_applies_at_start(guest: DaemonProcess) -> None:
    """A firmware-only guest whose definition pins and limits it."""
    virt = "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "qemu"
    path = guest.root / "tune-start.xml"
    path.write_text(
        f"<domain type='{virt}'><name>tune-start</name><memory unit='MiB'>64</memory>"
        "<memtune><hard_limit unit='MiB'>512</hard_limit></memtune><vcpu>1</vcpu>"
        "<cputune><shares>512</shares><vcpupin vcpu='0' cpuset='0'/>"
        "<emulatorpin cpuset='0'/></cputune>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"
    )
    guest.virsh("define", str(path))
    try:
        guest.virsh("start", "tune-start")
        assert fields(out(guest, "schedinfo", "tune-start"))["cpu_shares"] == "512"
        assert fields(out(guest, "memtune", "tune-start"))["hard_limit"] == "524288"
        assert fields(out(guest, "vcpuinfo", "tune-start"))["CPU Affinity"].startswith("y")
        pid = int((guest.root / "run/libvirt/qemu/tune-start.pid").read_text())
        assert os.sched_getaffinity(pid) == {0}
        uuid = out(guest, "domuuid", "tune-start")
        memory = Path(f"/sys/fs/cgroup/memory/machine/qemu-{uuid}.aiovirtd")
        if memory.exists():
            assert (memory / "memory.limit_in_bytes").read_text().strip() == str(512 << 20)
        guest.virsh("destroy", "tune-start")
        assert not memory.exists()  # the groups go with the guest
    finally:
        guest.virsh("destroy", "tune-start", check=False)
        guest.virsh("undefine", "tune-start", check=False)


def test_shares_out_of_the_kernels_range(guest: DaemonProcess) -> None:
    err = fails(guest, "schedinfo", NAME, "--set", "cpu_shares=1")
    assert re.search(r"invalid argument: shares '1' must be in range \[\d+, \d+\]", err), err


def test_libvirt_python(guest: DaemonProcess) -> None:
    dom = guest.conn().lookupByName(NAME)
    info, maps = dom.vcpus()
    assert [i[0] for i in info] == [0] and info[0][1] == 1  # VIR_VCPU_RUNNING
    assert len(maps[0]) == os.cpu_count()
    assert dom.maxVcpus() == 2
    assert len(dom.vcpuPinInfo(0)) == 1
    assert len(dom.emulatorPinInfo(0)) == os.cpu_count()
    (total,) = dom.getCPUStats(True)
    assert set(total) == {"cpu_time", "user_time", "system_time"}
    assert dom.schedulerType() == ("posix", 9)
    assert set(dom.memoryParameters(0)) == {"hard_limit", "soft_limit", "swap_hard_limit"}
    assert "device_weight" in dom.blkioParameters(0)
    dom.setMemoryStatsPeriod(2, 0)
    assert "<stats period='2'/>" in dom.XMLDesc(0)


def test_live_tuning_survives_a_daemon_restart(guest: DaemonProcess) -> None:
    # No second plug of vCPU 1: QEMU 7.2 under TCG dies plugging a vCPU that
    # was unplugged before (plain QEMU does the same, without any daemon).
    guest.virsh("schedinfo", NAME, "--set", "cpu_shares=3000")
    guest.virsh("memtune", NAME, "--hard-limit", "900000")
    guest.virsh("vcpupin", NAME, "1", "0")
    before = out(guest, "dumpxml", NAME)
    guest.restart()
    assert out(guest, "dumpxml", NAME) == before
    assert fields(out(guest, "schedinfo", NAME))["cpu_shares"] == "3000"
    assert fields(out(guest, "memtune", NAME))["hard_limit"] == "900000"
    assert out(guest, "vcpucount", NAME, "--live", "--current") == "1"
    assert "<vcpu id='1' enabled='no' hotpluggable='yes'/>" in before


@pytest.mark.skipif(not Path("/dev/loop0").exists(), reason="needs a block device node")
def test_blkiotune_device_limits_live(guest: DaemonProcess) -> None:
    guest.virsh("blkiotune", NAME, "--device-read-iops-sec", "/dev/loop0,100")
    assert fields(out(guest, "blkiotune", NAME))["device_read_iops_sec"] == "/dev/loop0,100"
    uuid = out(guest, "domuuid", NAME)
    group = Path(f"/sys/fs/cgroup/blkio/machine/qemu-{uuid}.aiovirtd")
    if group.exists():
        assert (group / "blkio.throttle.read_iops_device").read_text().split() == ["7:0", "100"]
    assert "<read_iops_sec>100</read_iops_sec>" in out(guest, "dumpxml", NAME)
    guest.virsh("blkiotune", NAME, "--device-read-iops-sec", "/dev/loop0,0")
    assert fields(out(guest, "blkiotune", NAME))["device_read_iops_sec"] == ""
    assert "<device>" not in out(guest, "dumpxml", NAME)
