"""The storage driver's bookkeeping around long volume jobs (dir backend held up)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from daemon.paths import Paths
from drivers.events import EventBus
from drivers.storage.driver import StorageDriver
from drivers.storage.vol_xml import Volume
from protocol.errors import ErrorCode, VirError

RAW = "<volume><name>{}</name><capacity>4096</capacity></volume>"


@pytest.fixture
def driver(tmp_path: Path) -> StorageDriver:
    d = StorageDriver(Paths(tmp_path), EventBus())
    asyncio.run(d.startup())
    return d


def test_first_start_makes_the_default_pool(driver: StorageDriver, tmp_path: Path) -> None:
    pool = driver.lookup_by_name("default")
    assert pool.active and pool.autostart and pool.persistent
    assert pool.live.target_path == str(tmp_path / "var/lib/libvirt/images")
    assert (tmp_path / "etc/libvirt/storage/default.xml").exists()
    assert (tmp_path / "run/libvirt/storage/default.xml").exists()


def test_jobs_hold_off_destroy_delete_and_same_names(driver: StorageDriver) -> None:
    async def run() -> None:
        pool = driver.lookup_by_name("default")
        src = await driver.create_vol(pool, RAW.format("src"))
        release = asyncio.Event()
        real = pool.backend.create_vol_from

        async def slow(vol: Volume, source: Volume, flags: int) -> None:
            await release.wait()
            await real(vol, source, flags)

        pool.backend.create_vol_from = slow  # type: ignore[method-assign]
        clone = asyncio.create_task(driver.create_vol_from(pool, RAW.format("copy"), pool, src))
        await asyncio.sleep(0)
        with pytest.raises(VirError) as e:
            await driver.destroy(pool)
        assert e.value.message == "internal error: pool 'default' has asynchronous jobs running."
        with pytest.raises(VirError) as e:
            await driver.delete_vol(pool, src)
        assert e.value.code == ErrorCode.OPERATION_INVALID
        assert e.value.message == "Requested operation is not valid: volume 'src' is still in use."
        with pytest.raises(VirError) as e:
            await driver.create_vol(pool, RAW.format("copy"))
        assert e.value.code == ErrorCode.STORAGE_VOL_EXIST
        release.set()
        await clone
        assert sorted(pool.volumes) == ["copy", "src"]
        assert (pool.jobs, pool.in_use, pool.building) == (0, {}, set())
        await driver.delete_vol(pool, src)
        await driver.destroy(pool)

    asyncio.run(run())


def test_restart_keeps_pools_and_their_state(driver: StorageDriver, tmp_path: Path) -> None:
    async def run() -> None:
        xml = (f"<pool type='dir'><name>p</name><target><path>{tmp_path}/p</path></target>"
               "</pool>")
        pool = driver.define_xml(xml)
        await driver.build(pool)
        await driver.create(pool)
        again = StorageDriver(Paths(tmp_path), EventBus())
        await again.startup()
        assert again.lookup_by_name("p").active
        assert not again.lookup_by_name("p").autostart

    asyncio.run(run())
