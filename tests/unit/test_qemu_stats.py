"""Guest statistics: image sizes, QEMU's answers turned into libvirt's fields,
and the monitor batch that never makes a caller wait on a stuck guest."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import pytest
from qemu_fakes import CAPS

from drivers.qemu import stats
from drivers.qemu.domain import Domain
from drivers.qemu.domain_xml import parse
from protocol.errors import ErrorCode, VirError
from protocol.typed import BOOLEAN, INT, UINT, ULLONG


def domain(disk: Path, fmt: str = "raw") -> Domain:
    xml = f"""<domain type='qemu'><name>s</name><memory unit='MiB'>128</memory>
      <currentMemory unit='MiB'>96</currentMemory><vcpu current='1'>2</vcpu>
      <os><type arch='x86_64' machine='pc'>hvm</type></os>
      <devices>
        <disk type='file' device='disk'><driver name='qemu' type='{fmt}'/>
          <source file='{disk}'/><target dev='vda' bus='virtio'/></disk>
        <interface type='user'><mac address='52:54:00:AB:00:01'/></interface>
      </devices></domain>"""
    return Domain(parse(xml, CAPS), persistent=True)


def qcow2_header(size: int) -> bytes:
    return b"QFI\xfb" + struct.pack(">I", 3) + bytes(16) + struct.pack(">Q", size) + bytes(4064)


def test_image_sizes_of_raw_and_qcow2_files(tmp_path: Path) -> None:
    raw = tmp_path / "a.raw"
    raw.write_bytes(b"x" * 8192)
    with open(raw, "r+b") as f:
        f.truncate(1 << 20)  # sparse past the first 8 KiB
    blocks = raw.stat().st_blocks * 512
    assert stats.image_sizes(str(raw), "raw") == (1 << 20, blocks, 1 << 20)
    img = tmp_path / "a.qcow2"
    img.write_bytes(qcow2_header(64 << 20))
    size = img.stat().st_size
    assert stats.image_sizes(str(img), "qcow2") == (64 << 20, img.stat().st_blocks * 512, size)
    # A file said to be qcow2 that is not: its length stands.
    assert stats.image_sizes(str(raw), "qcow2")[0] == 1 << 20


def test_shut_off_domain_record(tmp_path: Path) -> None:
    disk = tmp_path / "d.qcow2"
    disk.write_bytes(qcow2_header(32 << 20))
    dom = domain(disk, "qcow2")
    record = asyncio.run(stats.domain_stats(dom, stats.SUPPORTED))
    fields = {name: (kind, value) for name, kind, value in record}
    assert [name for name, _k, _v in record] == [
        "state.state", "state.reason", "cpu.time", "cpu.user", "cpu.system",
        "balloon.current", "balloon.maximum", "vcpu.current", "vcpu.maximum",
        "block.count", "block.0.name", "block.0.path",
        "block.0.allocation", "block.0.capacity", "block.0.physical",
    ]
    assert fields["state.state"] == (INT, 5)
    assert fields["balloon.current"] == (ULLONG, 96 * 1024)  # the default balloon
    assert fields["balloon.maximum"] == (ULLONG, 128 * 1024)
    assert fields["vcpu.current"] == (UINT, 1) and fields["vcpu.maximum"] == (UINT, 2)
    assert fields["block.0.capacity"] == (ULLONG, 32 << 20)


def test_blockstats_matched_by_device_alias() -> None:
    answer = [
        {"device": "", "qdev": "/machine/peripheral/virtio-disk0/virtio-backend", "stats": {"a": 1}},
        {"device": "", "qdev": "/machine/peripheral/ide0-0-0", "stats": {"a": 2}},
        {"device": "drive-ide0-0-1", "stats": {"a": 3}},
        {"device": "", "qdev": "sata0-0-0", "stats": {"a": 4}},
    ]
    found = stats.blockstats_by_alias(answer)
    assert {k: v["stats"]["a"] for k, v in found.items()} == {
        "virtio-disk0": 1, "ide0-0-0": 2, "ide0-0-1": 3, "sata0-0-0": 4,
    }


def test_guest_memory_stats_skip_what_the_guest_does_not_give() -> None:
    answer = {
        "last-update": 1700000000,
        "stats": {
            "stat-swap-in": 4096,
            "stat-major-faults": 7,
            "stat-free-memory": stats._NOT_COLLECTED,
            "stat-total-memory": 2048 * 1024,
            "stat-htlb-pgfail": 0,
        },
    }
    assert stats.guest_memory_stats(answer) == [
        (stats.MEM_SWAP_IN, 4),
        (stats.MEM_MAJOR_FAULT, 7),
        (stats.MEM_AVAILABLE, 2048),
        (stats.MEM_LAST_UPDATE, 1700000000),
        (stats.MEM_HUGETLB_PGFAIL, 0),
    ]
    assert stats.guest_memory_stats(None) == []


def test_haltpoll_sums_over_vcpus() -> None:
    entry = {"stats": [{"name": "halt_poll_success_ns", "value": 5},
                       {"name": "halt_poll_fail_ns", "value": 2}]}
    assert stats._haltpoll([entry, entry]) == (10, 4)
    assert stats._haltpoll([]) == (0, 0)  # TCG: no KVM vCPU statistics, libvirtd says 0
    assert stats._haltpoll(None) is None


def test_interfaces_found_by_mac_or_host_name(tmp_path: Path) -> None:
    d = domain(tmp_path / "x").definition
    net = d.devices.interfaces[0]
    assert stats.find_interface(d, "52:54:00:ab:0:1") is net
    net.target_dev = "vnet7"
    assert stats.find_interface(d, "vnet7") is net
    with pytest.raises(VirError) as e:
        stats.find_interface(d, "net0")
    assert e.value.code == ErrorCode.INVALID_ARG
    assert str(e.value) == "invalid argument: 'net0' is not a known interface"


class StuckMonitor:
    """A monitor whose QEMU answers only when told to."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.release = asyncio.Event()

    async def execute(self, cmd: str, args: Any = None) -> Any:
        self.asked.append(cmd)
        await self.release.wait()
        return {"cmd": cmd}


class FakeProcess:
    def __init__(self) -> None:
        self.monitor = StuckMonitor()


def test_a_stuck_monitor_costs_one_short_wait_then_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats, "STATS_TIMEOUT", 0.05)

    async def scenario() -> None:
        proc: Any = FakeProcess()
        q = {"a": ("query-a", None), "b": ("query-b", None)}
        assert await stats.ask_briefly(proc, q) == {}
        assert proc.monitor.asked == ["query-a", "query-b"]
        # Still waiting for the first batch: nothing more is sent, no wait.
        assert await asyncio.wait_for(stats.ask_briefly(proc, q), 0.01) == {}
        assert proc.monitor.asked == ["query-a", "query-b"]
        proc.monitor.release.set()
        await stats._inflight[proc][1]  # the late batch ends; the next is asked anew
        assert await stats.ask_briefly(proc, q) == {
            "a": {"cmd": "query-a"}, "b": {"cmd": "query-b"}
        }

    asyncio.run(scenario())


def test_callers_at_once_all_get_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two pollers of a healthy guest: the second waits for the first's batch,
    then asks its own, instead of taking the guest for stuck."""
    monkeypatch.setattr(stats, "STATS_TIMEOUT", 5.0)

    async def scenario() -> None:
        proc: Any = FakeProcess()
        proc.monitor.release.set()
        first, second = await asyncio.gather(
            stats.ask_briefly(proc, {"a": ("query-a", None)}),
            stats.ask_briefly(proc, {"b": ("query-b", None)}),
        )
        assert first == {"a": {"cmd": "query-a"}} and second == {"b": {"cmd": "query-b"}}

    asyncio.run(scenario())


def test_failed_commands_leave_no_answer() -> None:
    class Failing:
        async def execute(self, cmd: str, args: Any = None) -> Any:
            if cmd == "bad":
                raise VirError(ErrorCode.INTERNAL_ERROR, "no")
            return 1

    proc: Any = type("P", (), {"monitor": Failing()})()
    answers = asyncio.run(stats.ask_briefly(proc, {"x": ("good", None), "y": ("bad", None)}))
    assert answers == {"x": 1}


def test_kvm_figures_named_by_their_kind() -> None:
    schema = stats.read_schemas([
        {"provider": "kvm", "target": "vcpu", "stats": [
            {"name": "exits", "type": "cumulative", "unit": "count"},
            {"name": "guest_mode", "type": "instant", "unit": "boolean"},
            {"name": "max_mmu_rmap_size", "type": "peak"},
            {"name": "halt_wait_hist", "type": "log2-histogram"},
        ]},
    ])
    entry = {"qom-path": "/machine/unattached/device[0]", "stats": [
        {"name": "exits", "value": 42},
        {"name": "guest_mode", "value": False},
        {"name": "max_mmu_rmap_size", "value": 3},
        {"name": "halt_wait_hist", "value": [1, 2]},
        {"name": "unknown", "value": 1},
    ]}
    out: list[Any] = []
    stats._custom(entry, schema, "vcpu.0", out)
    assert out == [
        ("vcpu.0.exits.sum", ULLONG, 42),
        ("vcpu.0.guest_mode.cur", BOOLEAN, False),
        ("vcpu.0.max_mmu_rmap_size.max", ULLONG, 3),
    ]
