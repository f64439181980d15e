"""Resource tuning in the QEMU driver, without QEMU: a recording monitor stands in.

What is checked: which definition each flag combination touches, libvirt's
errors, the <cputune>/<memtune>/<blkiotune> sections written in libvirt's
order, and the QMP commands a live change sends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from qemu_fakes import CAPS, FakeMonitor, make_driver, run

from drivers.qemu import cgroup, domain_xml, tuning
from drivers.qemu.domain import Domain
from drivers.qemu.driver import QemuDriver
from protocol.errors import ErrorCode, ErrorDomain, VirError

XML = (
    "<domain type='qemu'><name>t</name><memory unit='MiB'>256</memory>"
    "<vcpu current='1'>2</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
    "<devices><memballoon model='virtio'/></devices></domain>"
)


@pytest.fixture
def driver(tmp_path: Path) -> QemuDriver:
    return make_driver(tmp_path)


async def defined(driver: QemuDriver, xml: str = XML) -> Domain:
    return await driver.define_xml(xml)


def saved_xml(driver: QemuDriver) -> str:
    return (driver.dirs.config_dir / "t.xml").read_text()


# -- memory ----------------------------------------------------------------------------------


async def test_setmem_live_balloons_and_config_persists(driver: QemuDriver) -> None:
    dom = await defined(driver)
    mon = run(dom, FakeMonitor())
    await tuning.set_memory(driver, dom, 200 * 1024, tuning.AFFECT_LIVE | tuning.AFFECT_CONFIG)
    assert mon.calls == [("balloon", {"value": 200 * 1024 * 1024})]
    assert dom.live is not None and dom.live.current_memory == 262144  # until the guest acts
    assert dom.config is not None and dom.config.current_memory == 204800
    assert "<currentMemory unit='KiB'>204800</currentMemory>" in saved_xml(driver)
    with pytest.raises(VirError, match="cannot set memory higher than max memory"):
        await tuning.set_memory(driver, dom, 10**7, 0)


async def test_setmaxmem_is_config_only(driver: QemuDriver) -> None:
    dom = await defined(driver)
    run(dom, FakeMonitor())
    with pytest.raises(VirError) as e:
        await tuning.set_memory(driver, dom, 100 * 1024, tuning.MEM_MAXIMUM)
    assert e.value.message == (
        "Requested operation is not valid: cannot resize the maximum memory on an active domain"
    )
    await tuning.set_memory(driver, dom, 100 * 1024, tuning.MEM_MAXIMUM | tuning.AFFECT_CONFIG)
    assert dom.config is not None
    assert (dom.config.memory, dom.config.current_memory) == (102400, 102400)
    assert dom.live is not None and dom.live.memory == 262144


async def test_setmem_without_balloon(driver: QemuDriver) -> None:
    dom = await defined(driver, XML.replace("virtio", "none"))
    run(dom, FakeMonitor())
    with pytest.raises(VirError, match="without the balloon device"):
        await tuning.set_memory(driver, dom, 1024, 0)


async def test_stats_period_goes_to_the_balloon(driver: QemuDriver) -> None:
    dom = await defined(driver)
    mon = run(dom, FakeMonitor())
    await tuning.set_memory_stats_period(driver, dom, 5, 0)
    assert mon.calls == [("qom-set", {"path": "/machine/peripheral/balloon0",
                                      "property": "guest-stats-polling-interval", "value": 5})]
    assert "<stats period='5'/>" in driver.get_xml_desc(dom)


# -- vCPUs ---------------------------------------------------------------------------------------


def hotpluggable(plugged: int) -> list[dict[str, Any]]:
    """query-hotpluggable-cpus of a 2-socket guest, newest slot first as QEMU lists them."""
    slots = []
    for socket in (1, 0):
        slot: dict[str, Any] = {"type": "qemu64-x86_64-cpu", "vcpus-count": 1,
                                "props": {"socket-id": socket, "core-id": 0, "thread-id": 0}}
        if socket < plugged:
            booted = "/machine/unattached/device[0]"
            slot["qom-path"] = booted if socket == 0 else f"/machine/peripheral/vcpu{socket}"
        slots.append(slot)
    return slots


async def test_setvcpus_live_hotplugs(driver: QemuDriver) -> None:
    dom = await defined(driver)
    state = {"plugged": 1}

    def query(_args: Any) -> Any:
        return hotpluggable(state["plugged"])

    def add(_args: Any) -> None:
        state["plugged"] = 2

    def delete(_args: Any) -> None:
        state["plugged"] = 1

    mon = FakeMonitor({"query-hotpluggable-cpus": query, "device_add": add, "device_del": delete})
    run(dom, mon)
    await tuning.set_vcpus(driver, dom, 2, 0)
    assert ("device_add", {"driver": "qemu64-x86_64-cpu", "id": "vcpu1", "socket-id": 1,
                           "core-id": 0, "thread-id": 0}) in mon.calls
    assert tuning.get_vcpus_flags(dom, 0) == 2
    assert tuning.get_vcpus_flags(dom, tuning.AFFECT_CONFIG) == 1
    xml = driver.get_xml_desc(dom)
    assert "<vcpu placement='static'>2</vcpu>" in xml
    assert "<vcpu id='1' enabled='yes' hotpluggable='yes' order='2'/>" in xml
    await tuning.set_vcpus(driver, dom, 1, 0)
    assert ("device_del", {"id": "/machine/peripheral/vcpu1"}) in mon.calls
    assert tuning.get_vcpus_flags(dom, 0) == 1
    with pytest.raises(VirError) as e:
        await tuning.set_vcpus(driver, dom, 3, 0)
    assert e.value.message == ("invalid argument: requested vcpus is greater than max"
                               " allowable vcpus for the live domain: 3 > 2")


async def test_setvcpus_maximum_needs_config(driver: QemuDriver) -> None:
    dom = await defined(driver)
    with pytest.raises(VirError, match="is required by flag 'VIR_DOMAIN_VCPU_MAXIMUM'"):
        await tuning.set_vcpus(driver, dom, 4, tuning.VCPU_MAXIMUM | tuning.AFFECT_LIVE)
    await tuning.set_vcpus(driver, dom, 4, tuning.VCPU_MAXIMUM | tuning.AFFECT_CONFIG)
    assert "<vcpu placement='static' current='1'>4</vcpu>" in saved_xml(driver)
    await tuning.set_vcpus(driver, dom, 4, tuning.AFFECT_CONFIG)
    assert "<vcpu placement='static'>4</vcpu>" in saved_xml(driver)


# -- pinning --------------------------------------------------------------------------------------


def test_cpumaps_round_trip() -> None:
    assert tuning.cpumap_to_set(b"\x05\x01") == {0, 2, 8}
    assert tuning.set_to_cpumap({0, 2, 8}, 2) == b"\x05\x01"
    assert tuning.set_to_cpumap({0, 9}, 1) == b"\x01"


async def test_pins_in_config_in_libvirts_order(driver: QemuDriver) -> None:
    dom = await defined(driver)
    await tuning.pin_vcpu(driver, dom, 1, b"\x01", tuning.AFFECT_CONFIG)
    await tuning.pin_emulator(driver, dom, b"\x02", tuning.AFFECT_CONFIG)
    await tuning.pin_vcpu(driver, dom, 0, b"\x02", tuning.AFFECT_CONFIG)
    await tuning.set_scheduler_params(driver, dom, {"cpu_shares": 100}, tuning.AFFECT_CONFIG)
    assert (
        "  <cputune>\n    <shares>100</shares>\n    <vcpupin vcpu='0' cpuset='1'/>\n"
        "    <vcpupin vcpu='1' cpuset='0'/>\n    <emulatorpin cpuset='1'/>\n  </cputune>\n"
    ) in saved_xml(driver)
    maps, num = tuning.get_vcpu_pin_info(dom, 2, 1, tuning.AFFECT_CONFIG)
    assert (maps, num) == (b"\x02\x01", 2)
    assert tuning.get_emulator_pin_info(dom, 1, 0) == b"\x02"
    with pytest.raises(VirError, match="Empty cpu list for pinning"):
        await tuning.pin_vcpu(driver, dom, 0, b"\x00", 0)
    with pytest.raises(VirError) as e:
        await tuning.pin_vcpu(driver, dom, 5, b"\x01", 0)
    assert e.value.message == "invalid argument: vcpu 5 is out of range of persistent cpu count 1"


async def test_vcpuinfo_of_an_inactive_domain(driver: QemuDriver) -> None:
    dom = await defined(driver)
    with pytest.raises(VirError, match="cannot retrieve vcpu information for inactive domain"):
        await tuning.get_vcpus(dom, 2, 1)


# -- scheduler, memtune, blkiotune ---------------------------------------------------------------


async def test_scheduler_ranges_and_config_values(driver: QemuDriver) -> None:
    dom = await defined(driver)
    with pytest.raises(VirError) as e:
        await tuning.set_scheduler_params(driver, dom, {"vcpu_period": 10}, 0)
    assert e.value.message == (
        "invalid argument: value of 'vcpu_period' is out of range [1000, 1000000]"
    )
    with pytest.raises(VirError, match=r"'vcpu_quota' is out of range \[1000, 17592186044415\]"):
        await tuning.set_scheduler_params(driver, dom, {"vcpu_quota": 10}, 0)
    await tuning.set_scheduler_params(driver, dom, {"vcpu_quota": 50000, "cpu_shares": 7}, 0)
    values = dict(tuning.get_scheduler_params(driver, dom, 0))
    assert values["vcpu_quota"] == 50000 and values["cpu_shares"] == 7
    assert values["global_period"] == 0


async def test_memtune_config(driver: QemuDriver) -> None:
    dom = await defined(driver)
    assert tuning.memtune_values(dom.definition) == dict.fromkeys(tuning.MEMTUNE, tuning.UNLIMITED)
    with pytest.raises(VirError) as e:
        await tuning.set_memory_params(
            driver, dom, {"hard_limit": 1000, "swap_hard_limit": 500}, 0
        )
    assert e.value.code == ErrorCode.INVALID_ARG
    await tuning.set_memory_params(driver, dom, {"soft_limit": 2048, "hard_limit": 4096}, 0)
    assert (
        "  <memtune>\n    <hard_limit unit='KiB'>4096</hard_limit>\n"
        "    <soft_limit unit='KiB'>2048</soft_limit>\n  </memtune>\n"
    ) in saved_xml(driver)
    await tuning.set_memory_params(driver, dom, {"hard_limit": tuning.UNLIMITED}, 0)
    assert tuning.memtune_values(dom.definition)["hard_limit"] == tuning.UNLIMITED


async def test_memtune_units_are_read() -> None:
    d = domain_xml.parse(
        XML.replace("<vcpu", "<memtune><hard_limit unit='MiB'>2</hard_limit></memtune><vcpu"), CAPS
    )
    assert tuning.memtune_values(d)["hard_limit"] == 2048


async def test_blkiotune_config(driver: QemuDriver) -> None:
    dom = await defined(driver)
    await tuning.set_blkio_params(
        driver, dom, {"weight": 300, "device_read_iops_sec": "/dev/null,100"}, 0
    )
    values = dict(tuning.blkio_values(driver, dom, 0))
    assert values["weight"] == 300
    assert values["device_read_iops_sec"] == "/dev/null,100"
    assert values["device_weight"] == ""
    assert (
        "  <blkiotune>\n    <weight>300</weight>\n    <device>\n      <path>/dev/null</path>\n"
        "      <read_iops_sec>100</read_iops_sec>\n    </device>\n  </blkiotune>\n"
    ) in saved_xml(driver)
    with pytest.raises(VirError, match="unable to parse blkio device"):
        await tuning.set_blkio_params(driver, dom, {"device_weight": "/dev/null"}, 0)


async def test_boot_vcpus_cannot_be_unplugged(driver: QemuDriver) -> None:
    dom = await defined(driver, XML.replace("<vcpu current='1'>2</vcpu>", "<vcpu>2</vcpu>"))
    slots = hotpluggable(2)
    slots[0]["qom-path"] = "/machine/unattached/device[1]"
    run(dom, FakeMonitor({"query-hotpluggable-cpus": slots}))
    with pytest.raises(VirError) as e:
        await tuning.set_vcpus(driver, dom, 1, 0)
    assert e.value.code == ErrorCode.CONFIG_UNSUPPORTED
    assert e.value.message == (
        "unsupported configuration: failed to find appropriate hotpluggable vcpus to reach"
        " the desired target vcpu count"
    )


# -- cgroup v2, on a fake tree --------------------------------------------------------------


@pytest.fixture
def v2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, driver: QemuDriver) -> Path:
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    monkeypatch.setattr(cgroup, "ROOT", root)
    driver._cgroup_root = root
    return root


def guest_group(root: Path, dom: Domain) -> Path:
    group = root / "machine" / f"qemu-{dom.uuid_str}.aiovirtd"
    group.mkdir(parents=True)
    for name, text in {"cpu.weight": "100", "cpu.max": "max 100000", "memory.max": "max",
                       "memory.high": "max", "memory.swap.max": "max",
                       "io.weight": "default 100",
                       "cpu.stat": "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n"}.items():
        (group / name).write_text(text)
    return group


async def test_v2_scheduler(driver: QemuDriver, v2: Path) -> None:
    dom = await defined(driver)
    run(dom, FakeMonitor())
    group = guest_group(v2, dom)
    await tuning.set_scheduler_params(
        driver, dom, {"cpu_shares": 500, "global_quota": 50000}, tuning.AFFECT_LIVE
    )
    assert (group / "cpu.weight").read_text() == "500"
    assert (group / "cpu.max").read_text() == "50000 100000"
    values = dict(tuning.get_scheduler_params(driver, dom, 0))
    assert (values["cpu_shares"], values["global_period"], values["global_quota"]) == (
        500, 100000, 50000
    )
    assert (values["vcpu_period"], values["vcpu_quota"]) == (100000, -1)
    with pytest.raises(VirError) as e:
        await tuning.set_scheduler_params(driver, dom, {"cpu_shares": 20000}, 0)
    assert e.value.message == "invalid argument: shares '20000' must be in range [1, 10000]"
    with pytest.raises(VirError) as e:
        await tuning.set_scheduler_params(driver, dom, {"vcpu_quota": 5000}, 0)
    assert e.value.code == ErrorCode.OPERATION_UNSUPPORTED


async def test_v2_memtune_blkio_and_cpu_stats(driver: QemuDriver, v2: Path) -> None:
    dom = await defined(driver)
    run(dom, FakeMonitor())
    group = guest_group(v2, dom)
    await tuning.set_memory_params(driver, dom, {"hard_limit": 1024, "soft_limit": 512}, 0)
    assert (group / "memory.max").read_text() == str(1024 * 1024)
    assert (group / "memory.high").read_text() == str(512 * 1024)
    assert "+memory" in (v2 / "machine" / "cgroup.subtree_control").read_text()
    await tuning.set_memory_params(driver, dom, {"hard_limit": tuning.UNLIMITED}, 0)
    assert (group / "memory.max").read_text() == "max"
    await tuning.set_blkio_params(driver, dom, {"weight": 500}, 0)
    assert (group / "io.weight").read_text() == "500"
    assert dict(tuning.blkio_values(driver, dom, 0))["weight"] == 500
    assert tuning.cpu_stats_total(driver, dom) == [
        ("cpu_time", 2500000), ("user_time", 2000000), ("system_time", 500000)
    ]
    with pytest.raises(VirError) as e:
        tuning.cpu_stats_percpu(dom, 0, 2)
    assert (e.value.code, e.value.domain) == (ErrorCode.OPERATION_UNSUPPORTED, ErrorDomain.CGROUP)
    assert "'getCpuacctPercpuUsage' not supported for backend 'cgroup V2'" in e.value.message


async def test_v1_cpuacct_per_cpu(driver: QemuDriver, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "v1"
    monkeypatch.setattr(cgroup, "ROOT", root)
    dom = await defined(driver)
    run(dom, FakeMonitor())
    group = root / "cpuacct" / "machine" / f"qemu-{dom.uuid_str}.aiovirtd"
    (group / "vcpu0").mkdir(parents=True)
    (root / "cpuacct" / "cgroup.procs").write_text("")
    (group / "cpuacct.usage_percpu").write_text("100 200 \n")
    (group / "vcpu0" / "cpuacct.usage_percpu").write_text("50 150 \n")
    assert tuning.cpu_stats_percpu(dom, 0, 128) == [
        [("cpu_time", 100), ("vcpu_time", 50)], [("cpu_time", 200), ("vcpu_time", 150)]
    ]
    assert tuning.cpu_stats_percpu(dom, 1, 1) == [[("cpu_time", 200), ("vcpu_time", 150)]]
    with pytest.raises(VirError, match="start_cpu 2 larger than maximum of 1"):
        tuning.cpu_stats_percpu(dom, 2, 1)
    assert cgroup.extra_dirs(dom.uuid_str)[0] == group / "vcpu0"
