"""Monitoring with stock virsh and libvirt-python: domstats and the per-device calls.

One Linux test guest (qcow2 disk, user and ethernet NICs, a balloon reporting
every second) runs for the whole module next to a shut-off guest with a raw
disk. The expected field names are those the reference libvirtd 9.0 gave for
the same guests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.daemon import DaemonProcess
from guest import ensure_guest

pytestmark = pytest.mark.slow

BOOT_TIMEOUT = 60.0
MIB = 1024 * 1024

# What libvirtd 9.0 reports of such guests, in its order.
RUNNING_FIELDS = [
    "state.state", "state.reason",
    "cpu.time", "cpu.user", "cpu.system", "cpu.cache.monitor.count",
    "cpu.haltpoll.success.time", "cpu.haltpoll.fail.time",
    "balloon.current", "balloon.maximum", "balloon.swap_in", "balloon.swap_out",
    "balloon.major_fault", "balloon.minor_fault", "balloon.unused", "balloon.available",
    "balloon.usable", "balloon.last-update", "balloon.disk_caches",
    "balloon.hugetlb_pgalloc", "balloon.hugetlb_pgfail", "balloon.rss",
    "vcpu.current", "vcpu.maximum",
    "vcpu.0.state", "vcpu.0.time", "vcpu.0.wait", "vcpu.0.delay",
    "net.count", "net.1.name", "net.1.rx.bytes", "net.1.rx.pkts", "net.1.rx.errs",
    "net.1.rx.drop", "net.1.tx.bytes", "net.1.tx.pkts", "net.1.tx.errs", "net.1.tx.drop",
    "block.count", "block.0.name", "block.0.path", "block.0.backingIndex",
    "block.0.rd.reqs", "block.0.rd.bytes", "block.0.rd.times",
    "block.0.wr.reqs", "block.0.wr.bytes", "block.0.wr.times",
    "block.0.fl.reqs", "block.0.fl.times",
    "block.0.allocation", "block.0.capacity", "block.0.physical",
    "dirtyrate.calc_status", "dirtyrate.calc_start_time", "dirtyrate.calc_period",
    "dirtyrate.calc_mode",
]
SHUTOFF_FIELDS = [
    "state.state", "state.reason", "cpu.time", "cpu.user", "cpu.system",
    "balloon.current", "balloon.maximum", "vcpu.current", "vcpu.maximum",
    "block.count", "block.0.name", "block.0.path",
    "block.0.allocation", "block.0.capacity", "block.0.physical",
]


def guest_xml(name: str, disk: Path, fmt: str, with_kernel: bool = True, virt: str = "qemu") -> str:
    g = ensure_guest()
    boot = (
        f"<kernel>{g.kernel}</kernel><initrd>{g.initrd}</initrd><cmdline>{g.cmdline}</cmdline>"
        if with_kernel
        else ""
    )
    return f"""<domain type='{virt}'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu current='1'>2</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>{boot}</os>
  <features><acpi/></features>
  <on_reboot>destroy</on_reboot>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='{fmt}'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'><mac address='52:54:00:5a:00:01'/><model type='virtio'/></interface>
    <interface type='ethernet'><mac address='52:54:00:5a:00:02'/><model type='virtio'/></interface>
    <serial type='pty'/>
    <console type='pty'/>
    <memballoon model='virtio'><stats period='1'/></memballoon>
  </devices>
</domain>"""


def define(daemon: DaemonProcess, name: str, xml: str) -> None:
    path = daemon.root / f"{name}.xml"
    path.write_text(xml)
    daemon.virsh("define", str(path))


def domstats(daemon: DaemonProcess, *args: str) -> dict[str, dict[str, str]]:
    """``virsh domstats`` output as {domain: {field: value}}, fields in order."""
    out: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in daemon.virsh("domstats", *args).stdout.splitlines():
        if line.startswith("Domain: "):
            current = out.setdefault(line.split("'")[1], {})
        elif "=" in line:
            key, value = line.strip().split("=", 1)
            current[key] = value
    return out


def table(text: str) -> dict[str, str]:
    """``name value`` lines (dommemstat, domblkstat, domifstat) as a dict."""
    return {
        parts[-2]: parts[-1] for line in text.splitlines() if len(parts := line.split()) >= 2
    }


@pytest.fixture(scope="module")
def guests(module_netns_daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    d = module_netns_daemon  # its guest's tap stays off the host's network
    qcow2, raw = d.root / "run.qcow2", d.root / "off.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "64M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), "32M"], check=True)
    define(d, "st-run", guest_xml("st-run", qcow2, "qcow2"))
    define(d, "st-off", guest_xml("st-off", raw, "raw"))
    d.virsh("start", "st-run")
    try:
        # The balloon driver reports once the guest's kernel has loaded it.
        deadline = time.monotonic() + BOOT_TIMEOUT
        while "unused" not in table(d.virsh("dommemstat", "st-run").stdout):
            assert time.monotonic() < deadline, "the guest's balloon never reported"
            time.sleep(0.5)
        yield d
    finally:
        for name in ("st-run", "st-off"):
            d.virsh("destroy", name, check=False)
            d.virsh("undefine", name, check=False)


def test_domstats_running_guest(guests: DaemonProcess) -> None:
    s = domstats(guests, "st-run")["st-run"]
    assert list(s) == RUNNING_FIELDS
    assert (s["state.state"], s["state.reason"]) == ("1", "1")
    assert s["vcpu.current"] == "1" and s["vcpu.maximum"] == "2"
    assert s["balloon.current"] == s["balloon.maximum"] == str(128 * 1024)
    assert int(s["cpu.time"]) > 0 and int(s["vcpu.0.time"]) > 0
    assert s["net.count"] == "2" and s["net.1.name"].startswith("vnet")
    assert s["block.0.path"] == str(guests.root / "run.qcow2")
    assert s["block.0.capacity"] == str(64 * MIB)
    assert int(s["block.0.rd.reqs"]) > 0  # the kernel read the partition table


def test_domstats_shut_off_guest(guests: DaemonProcess) -> None:
    s = domstats(guests, "st-off")["st-off"]
    assert list(s) == SHUTOFF_FIELDS
    assert s["state.state"] == "5"
    raw = guests.root / "off.raw"
    assert s["block.0.capacity"] == s["block.0.physical"] == str(32 * MIB)
    assert s["block.0.allocation"] == str(raw.stat().st_blocks * 512)


def test_domstats_groups_and_list_flags(guests: DaemonProcess) -> None:
    both = domstats(guests, "--state")
    assert {k: list(v) for k, v in both.items()} == {
        "st-run": ["state.state", "state.reason"],
        "st-off": ["state.state", "state.reason"],
    }
    assert list(domstats(guests, "--list-running", "--state")) == ["st-run"]
    assert list(domstats(guests, "--list-shutoff", "--state")) == ["st-off"]
    assert list(domstats(guests, "--list-transient", "--state")) == []
    s = domstats(guests, "--vcpu", "--balloon", "--nowait", "st-run")["st-run"]
    assert [k for k in s if k.startswith("vcpu.")] == [
        "vcpu.current", "vcpu.maximum", "vcpu.0.state", "vcpu.0.time", "vcpu.0.wait",
        "vcpu.0.delay",
    ]
    assert list(domstats(guests, "--interface", "st-off")["st-off"]) == []
    assert list(domstats(guests, "--vm", "--enforce", "st-run")["st-run"]) == []  # TCG: none


def test_unknown_groups(guests: DaemonProcess) -> None:
    import libvirt

    conn = guests.conn(readonly=True)
    assert [params for _dom, params in conn.getAllDomainStats(1 << 11)] == [{}, {}]
    with pytest.raises(libvirt.libvirtError) as e:
        conn.getAllDomainStats(1 << 11, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ENFORCE_STATS)
    assert "Stats types bits 0x800 are not supported by this daemon or QEMU" in str(e.value)


def test_stats_through_libvirt_python(guests: DaemonProcess) -> None:
    import libvirt

    conn = guests.conn(readonly=True)
    records = dict(
        (dom.name(), params) for dom, params in conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_BLOCK)
    )
    assert records["st-run"]["block.0.name"] == "vda"
    assert isinstance(records["st-run"]["block.0.rd.bytes"], int)
    dom = conn.lookupByName("st-off")
    [(got, params)] = conn.domainListGetStats([dom], libvirt.VIR_DOMAIN_STATS_STATE)
    assert got.name() == "st-off" and params == {"state.state": 5, "state.reason": 0}


def test_dommemstat(guests: DaemonProcess) -> None:
    mem = table(guests.virsh("dommemstat", "st-run").stdout)
    assert list(mem) == [
        "actual", "swap_in", "swap_out", "major_fault", "minor_fault", "unused", "available",
        "usable", "last_update", "disk_caches", "hugetlb_pgalloc", "hugetlb_pgfail", "rss",
    ]
    assert mem["actual"] == str(128 * 1024)
    res = guests.virsh("dommemstat", "st-off", check=False)
    assert "Requested operation is not valid: domain is not running" in res.stderr


def test_domblkstat(guests: DaemonProcess) -> None:
    one = table(guests.virsh("domblkstat", "st-run", "vda").stdout)
    assert list(one) == [
        "rd_req", "rd_bytes", "wr_req", "wr_bytes", "flush_operations",
        "rd_total_times", "wr_total_times", "flush_total_times",
    ]
    assert int(one["rd_req"]) > 0
    total = table(guests.virsh("domblkstat", "st-run").stdout)
    assert list(total) == list(one)
    res = guests.virsh("domblkstat", "st-run", "vdz", check=False)
    assert "invalid argument: invalid path: vdz" in res.stderr
    res = guests.virsh("domblkstat", "st-off", "vda", check=False)
    assert "domain is not running" in res.stderr


def test_domblkinfo(guests: DaemonProcess) -> None:
    def info(*args: str) -> dict[str, str]:
        text = guests.virsh("domblkinfo", *args).stdout
        return {k: v.strip() for k, v in (line.split(":") for line in text.splitlines() if line)}

    qcow2 = guests.root / "run.qcow2"
    running = info("st-run", "vda")
    assert running["Capacity"] == str(64 * MIB)
    assert running["Physical"] == str(qcow2.stat().st_size)
    assert int(running["Allocation"]) > 0
    assert info("st-run", str(qcow2)) == info("st-run", "vda")
    raw = guests.root / "off.raw"
    assert info("st-off", "vda") == {
        "Capacity": str(32 * MIB),
        "Allocation": str(raw.stat().st_blocks * 512),
        "Physical": str(32 * MIB),
    }
    assert "vda" in guests.virsh("domblkinfo", "st-off", "--all").stdout
    res = guests.virsh("domblkinfo", "st-off", "vdz", check=False)
    assert "invalid argument: invalid path vdz not assigned to domain" in res.stderr


def test_domblklist_and_domiflist(guests: DaemonProcess) -> None:
    blk = guests.virsh("domblklist", "st-run", "--details").stdout
    assert f" file   disk     vda      {guests.root / 'run.qcow2'}" in blk
    ifs = guests.virsh("domiflist", "st-run").stdout.splitlines()
    user = next(line for line in ifs if "52:54:00:5a:00:01" in line)
    tap = next(line for line in ifs if "52:54:00:5a:00:02" in line)
    assert user.split()[:2] == ["-", "user"]
    assert tap.split()[0].startswith("vnet") and tap.split()[1] == "ethernet"
    off = guests.virsh("domiflist", "st-off").stdout
    assert "52:54:00:5a:00:02" in off


def test_domifstat(guests: DaemonProcess) -> None:
    ifs = guests.virsh("domiflist", "st-run").stdout.splitlines()
    tap = next(line for line in ifs if "52:54:00:5a:00:02" in line).split()[0]
    counters = table(guests.virsh("domifstat", "st-run", tap).stdout)
    assert list(counters) == [
        "rx_bytes", "rx_packets", "rx_errs", "rx_drop",
        "tx_bytes", "tx_packets", "tx_errs", "tx_drop",
    ]
    by_mac = table(guests.virsh("domifstat", "st-run", "52:54:00:5a:00:02").stdout)
    assert list(by_mac) == list(counters)
    res = guests.virsh("domifstat", "st-run", "52:54:00:5a:00:01", check=False)
    assert "internal error: Interface name not provided" in res.stderr
    res = guests.virsh("domifstat", "st-run", "net0", check=False)
    assert "invalid argument: 'net0' is not a known interface" in res.stderr


def test_domblkerror_and_domjobinfo(guests: DaemonProcess) -> None:
    assert guests.virsh("domblkerror", "st-run").stdout.strip() == "No errors found"
    assert guests.virsh("domjobinfo", "st-run").stdout.split() == ["Job", "type:", "None"]
    completed = guests.virsh("domjobinfo", "st-run", "--completed").stdout
    assert completed.split() == ["Job", "type:", "None"]
    for cmd in ("domblkerror", "domjobinfo"):
        res = guests.virsh(cmd, "st-off", check=False)
        assert "Requested operation is not valid: domain is not running" in res.stderr


def _qemu_pid(daemon: DaemonProcess, name: str) -> int:
    return int((daemon.root / f"run/libvirt/qemu/{name}.pid").read_text().strip())


def test_frozen_guest_does_not_hold_up_the_others(guests: DaemonProcess) -> None:
    """A QEMU that answers nothing: the others' statistics still come, it gives
    what the host knows of it, and asking again does not pile up questions."""
    d = guests
    kvm = os.access("/dev/kvm", os.R_OK | os.W_OK)
    xml = guest_xml("st-frozen", d.root / "off.raw", "raw", False, "kvm" if kvm else "qemu")
    define(d, "st-frozen", xml)
    d.virsh("start", "st-frozen", "--paused")
    if kvm:  # KVM's own figures, named as libvirtd names them
        s = domstats(d, "--vcpu", "--vm", "st-frozen")["st-frozen"]
        assert "vcpu.0.exits.sum" in s and s["vcpu.0.guest_mode.cur"] in ("yes", "no")
        assert "vm.pages_4k.cur" in s
    pid = _qemu_pid(d, "st-frozen")
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(2):
            s = domstats(d, "--list-active")
            assert "block.0.rd.reqs" in s["st-run"]
            frozen = s["st-frozen"]
            assert frozen["state.state"] == "3"
            assert "block.0.name" in frozen and "block.0.rd.reqs" not in frozen
            assert "vcpu.0.time" not in frozen
    finally:
        os.kill(pid, signal.SIGCONT)
        d.virsh("destroy", "st-frozen", check=False)
        d.virsh("undefine", "st-frozen", check=False)


def test_stats_after_the_daemon_is_killed_and_back(guests: DaemonProcess) -> None:
    """Last here: the re-attached guest reports the same fields."""
    before = domstats(guests, "st-run")["st-run"]
    guests.kill()
    guests.start()
    after = domstats(guests, "st-run")["st-run"]
    assert list(after) == list(before) == RUNNING_FIELDS
    assert after["net.1.name"] == before["net.1.name"]
    assert int(after["block.0.rd.reqs"]) >= int(before["block.0.rd.reqs"])
