"""The QEMU driver's registry: definitions, lookups, lists and their errors.

Nothing here starts QEMU; the capabilities are made up.
"""

from __future__ import annotations

import asyncio
import copy
import os
import signal
from pathlib import Path

import pytest

from daemon.paths import Paths
from drivers import host
from drivers.events import EventBus
from drivers.qemu import driver as driver_mod
from drivers.qemu.capabilities import MachineInfo, QemuCaps
from drivers.qemu.domain import Domain, State
from drivers.qemu.driver import QemuDriver
from protocol.errors import ErrorCode, ErrorDomain, VirError

UUID = "11111111-2222-3333-4444-555555555555"
XML = (
    "<domain type='qemu'><name>{name}</name>{uuid}<memory unit='MiB'>64</memory>"
    "<os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"
)


def xml(name: str, uuid: str | None = None) -> str:
    return XML.format(name=name, uuid=f"<uuid>{uuid}</uuid>" if uuid else "")


CAPS = QemuCaps(
    emulator="/usr/bin/qemu-system-x86_64",
    arch="x86_64",
    version=7002022,
    kvm_usable=False,
    machines={
        "pc-i440fx-7.2": MachineInfo("pc-i440fx-7.2", "pc", 255, True),
        "pc-q35-7.2": MachineInfo("pc-q35-7.2", "q35", 288),
    },
    cpu_models=["qemu64"],
)


def make_driver(root: Path, events: list | None = None) -> QemuDriver:
    bus = EventBus()
    if events is not None:
        bus.subscribe(
            lambda kind, dom, **data: events.append((dom.name, data["event"], data["detail"]))
        )
    drv = QemuDriver(Paths(root), bus)
    drv.all_caps = {host.host_arch(): CAPS}
    for d in (drv.dirs.config_dir, drv.dirs.state_dir):
        d.mkdir(parents=True, exist_ok=True)
    return drv


def error(fn, *args) -> VirError:
    with pytest.raises(VirError) as info:
        fn(*args)
    return info.value


async def aerror(coro) -> VirError:
    with pytest.raises(VirError) as info:
        await coro
    return info.value


async def test_define_persists_and_emits(tmp_path: Path) -> None:
    events: list = []
    drv = make_driver(tmp_path, events)
    dom = await drv.define_xml(xml("a", UUID))
    assert (dom.name, dom.id, dom.persistent, dom.active) == ("a", -1, True, False)
    assert drv.get_state(dom) == (State.SHUTOFF, 0)
    config = drv.dirs.config_dir / "a.xml"
    assert "<name>a</name>" in config.read_text()
    await drv.define_xml(xml("a", UUID))
    assert events == [("a", 0, 0), ("a", 0, 1)]  # DEFINED ADDED, then UPDATED
    # A new daemon finds it again.
    again = make_driver(tmp_path)
    again._load_configs()
    assert again.lookup_by_name("a").uuid_str == UUID


async def test_lookup_errors(tmp_path: Path) -> None:
    drv = make_driver(tmp_path)
    e = error(drv.lookup_by_name, "x")
    assert (e.code, e.domain) == (ErrorCode.NO_DOMAIN, ErrorDomain.QEMU)
    assert e.message == "Domain not found: no domain with matching name 'x'"
    assert error(drv.lookup_by_id, 3).message == "Domain not found: no domain with matching id 3"
    raw = bytes.fromhex(UUID.replace("-", ""))
    assert error(drv.lookup_by_uuid, raw).message == (
        f"Domain not found: no domain with matching uuid '{UUID}'"
    )
    assert error(drv.lookup_by_uuid, raw, "a").message == (
        f"Domain not found: no domain with matching uuid '{UUID}' (a)"
    )


async def test_define_clashes(tmp_path: Path) -> None:
    drv = make_driver(tmp_path)
    await drv.define_xml(xml("a", UUID))
    e = await aerror(drv.define_xml(xml("b", UUID)))
    assert (e.code, e.domain) == (ErrorCode.OPERATION_FAILED, ErrorDomain.DOMAIN)
    assert e.message == f"operation failed: domain 'a' is already defined with uuid {UUID}"
    other = "99999999-2222-3333-4444-555555555555"
    e = await aerror(drv.define_xml(xml("a", other)))
    assert e.message == f"operation failed: domain 'a' already exists with uuid {UUID}"


async def test_undefine(tmp_path: Path) -> None:
    events: list = []
    drv = make_driver(tmp_path, events)
    dom = await drv.define_xml(xml("a", UUID))
    await drv.undefine(dom)
    assert not (drv.dirs.config_dir / "a.xml").exists()
    assert events[-1] == ("a", 1, 0)
    assert error(drv.lookup_by_name, "a").code == ErrorCode.NO_DOMAIN
    # The client's handle is now stale.
    e = await aerror(drv.undefine(dom))
    assert e.message == f"Domain not found: no domain with matching uuid '{UUID}' (a)"


async def test_undefine_with_nvram(tmp_path: Path) -> None:
    drv = make_driver(tmp_path)
    nvram = tmp_path / "a_VARS.fd"
    dom = await drv.define_xml(xml("a"))
    dom.config.os.nvram = str(nvram)  # as a UEFI guest's definition has it
    await drv.undefine(dom)  # no varstore yet: nothing to lose
    dom = await drv.define_xml(xml("a"))
    dom.config.os.nvram = str(nvram)
    nvram.write_bytes(b"vars")
    e = await aerror(drv.undefine(dom))
    assert e.message == "Requested operation is not valid: cannot undefine domain with nvram"
    await drv.undefine(dom, driver_mod.UNDEFINE_NVRAM)
    assert not nvram.exists()


async def test_inactive_operations_refused(tmp_path: Path) -> None:
    drv = make_driver(tmp_path)
    dom = await drv.define_xml(xml("a", UUID))
    for call in (drv.destroy(dom), drv.suspend(dom), drv.resume(dom)):
        e = await aerror(call)
        assert (e.code, e.message) == (
            ErrorCode.OPERATION_INVALID, "Requested operation is not valid: domain is not running"
        )


async def test_info_and_xml_cache(tmp_path: Path) -> None:
    drv = make_driver(tmp_path)
    dom = await drv.define_xml(xml("a", UUID))
    info = drv.get_info(dom)
    assert info == (5, 65536, 65536, 1, 0)
    first = drv.get_xml_desc(dom)
    assert first is drv.get_xml_desc(dom)  # cached
    await drv.define_xml(xml("a", UUID).replace(">64<", ">128<"))
    assert "131072" in drv.get_xml_desc(dom)


async def test_list_filters(tmp_path: Path) -> None:
    drv = make_driver(tmp_path)
    a = await drv.define_xml(xml("a"))
    b = await drv.define_xml(xml("b"))
    # Pretend b runs, paused, and is transient; the filters only read state.
    b.id, b.state = 4, State.PAUSED
    b.set_config(None)
    names = lambda flags: sorted(d.name for d in drv.list_domains(flags))  # noqa: E731
    assert names(0) == ["a", "b"]
    assert names(driver_mod.LIST_ACTIVE) == ["b"]
    assert names(driver_mod.LIST_INACTIVE) == ["a"]
    assert names(driver_mod.LIST_ACTIVE | driver_mod.LIST_INACTIVE) == ["a", "b"]
    assert names(driver_mod.LIST_TRANSIENT) == ["b"]
    assert names(driver_mod.LIST_PERSISTENT) == ["a"]
    assert names(driver_mod.LIST_PAUSED) == ["b"]
    assert names(driver_mod.LIST_RUNNING) == []
    assert names(driver_mod.LIST_SHUTOFF | driver_mod.LIST_PAUSED) == ["a", "b"]
    assert names(driver_mod.LIST_NO_AUTOSTART) == ["a", "b"]
    assert names(driver_mod.LIST_AUTOSTART) == []
    assert isinstance(a, Domain)


async def test_balloon_change_shows_in_info(tmp_path: Path) -> None:
    drv = make_driver(tmp_path)
    dom = await drv.define_xml(xml("a"))
    dom.started(1, copy.deepcopy(dom.config), None)  # as far as info is concerned
    drv._on_qmp_event(dom, "BALLOON_CHANGE", {"actual": 32 << 20})
    assert drv.get_info(dom).memory == 32768
    assert "<currentMemory unit='KiB'>32768</currentMemory>" in drv.get_xml_desc(dom)
    assert dom.config.current_memory == 65536  # the definition is not touched


async def test_autostart(tmp_path: Path) -> None:
    drv = make_driver(tmp_path)
    dom = await drv.define_xml(xml("a"))
    assert not drv.get_autostart(dom)
    drv.set_autostart(dom, True)
    drv.set_autostart(dom, True)
    link = drv.dirs.config_dir / "autostart/a.xml"
    assert os.readlink(link) == str(drv.dirs.config_dir / "a.xml")
    assert [d.name for d in drv.list_domains(driver_mod.LIST_AUTOSTART)] == ["a"]
    assert drv.list_domains(driver_mod.LIST_NO_AUTOSTART) == []
    await drv.undefine(dom)
    assert not os.path.lexists(link)
    dom = await drv.define_xml(xml("a"))
    dom.set_config(None)  # as if transient
    e = error(drv.set_autostart, dom, True)
    assert e.message == (
        "Requested operation is not valid: cannot set autostart for transient domain"
    )


def test_monitor_path_stays_short(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 90)
    drv = make_driver(deep)
    dom = type("FakeDomain", (), {"uuid_str": UUID})()
    path = drv._monitor_path(dom)  # type: ignore[arg-type]
    Path(path).parent.rmdir()  # the short directory outside tmp_path
    assert len(path.encode()) <= driver_mod.MAX_SOCKET_PATH
    assert path.endswith(f"{UUID}.monitor")


# -- with a real QEMU ------------------------------------------------------------

def needs_qemu(test):  # type: ignore[no-untyped-def]
    """These start a real QEMU: quick, but not "no QEMU", so they count as slow."""
    skip = pytest.mark.skipif(not os.path.exists(CAPS.emulator), reason="no QEMU")
    return pytest.mark.slow(skip(test))


async def wait_state(dom: Domain, state: State, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while dom.state != state:
            await asyncio.sleep(0.01)


@needs_qemu
async def test_guest_poweroff_is_a_shutdown(tmp_path: Path) -> None:
    events: list = []
    drv = make_driver(tmp_path, events)
    for d in (drv.dirs.lib_dir, drv.dirs.log_dir):
        d.mkdir(parents=True, exist_ok=True)
    dom = await drv.define_xml(xml("a", UUID))
    await drv.create(dom)
    pid = dom.process.pid  # type: ignore[union-attr]
    # What QEMU says when the guest powers itself off (it then waits, -no-shutdown).
    drv._on_qmp_event(dom, "SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
    await wait_state(dom, State.SHUTOFF)
    assert drv.get_state(dom) == (State.SHUTOFF, 1)  # shut off (shutdown)
    assert events[-2:] == [("a", 6, 1), ("a", 5, 0)]  # SHUTDOWN GUEST, STOPPED SHUTDOWN
    assert not os.path.exists(f"/proc/{pid}")
    assert "shutting down, reason=shutdown" in (drv.dirs.log_dir / "a.log").read_text()


@needs_qemu
async def test_stuck_monitor_blocks_only_its_guest(tmp_path: Path, monkeypatch) -> None:
    from drivers.qemu import monitor, process

    monkeypatch.setattr(monitor, "COMMAND_TIMEOUT", 1.0)
    monkeypatch.setattr(process, "TERM_TIMEOUT", 0.5)
    drv = make_driver(tmp_path)
    for d in (drv.dirs.lib_dir, drv.dirs.log_dir):
        d.mkdir(parents=True, exist_ok=True)
    stuck = await drv.define_xml(xml("stuck"))
    fine = await drv.define_xml(xml("fine"))
    await drv.create(stuck)
    await drv.create(fine)
    os.kill(stuck.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]
    hanging = asyncio.ensure_future(drv.suspend(stuck))
    await asyncio.sleep(0.1)
    await drv.suspend(fine)
    await drv.resume(fine)
    assert drv.get_info(stuck).state == State.RUNNING
    e = await aerror(hanging)
    assert e.code == ErrorCode.OPERATION_TIMEOUT
    await drv.destroy(stuck)  # SIGTERM stays pending on a stopped process: SIGKILL
    assert drv.get_state(stuck) == (State.SHUTOFF, 2)
    await drv.destroy(fine)
