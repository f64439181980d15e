"""Which definitions a call changes (drivers/qemu/affect.py), without QEMU.

Checked: libvirt's AFFECT flags against the domain's state, with the errors
libvirtd 9.0 gives, and what modify makes last - the config copy and the
live status only when the body succeeds.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from qemu_fakes import FakeMonitor, make_driver, run

from drivers.qemu import affect
from drivers.qemu.domain import Domain
from drivers.qemu.driver import QemuDriver
from protocol.errors import ErrorCode, ErrorDomain, VirError

XML = (
    "<domain type='qemu'><name>t</name><memory unit='MiB'>256</memory><vcpu>2</vcpu>"
    "<os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"
)
BOTH = affect.AFFECT_LIVE | affect.AFFECT_CONFIG


@pytest.fixture
def driver(tmp_path: Path) -> QemuDriver:
    return make_driver(tmp_path)


def saved_xml(driver: QemuDriver) -> str:
    return (driver.dirs.config_dir / "t.xml").read_text()


def status_xml(driver: QemuDriver) -> str:
    return (driver.dirs.state_dir / "t.xml").read_text()


async def test_impact_follows_the_state(driver: QemuDriver) -> None:
    dom = await driver.define_xml(XML)
    assert affect.impact(dom, 0) == (False, True)
    with pytest.raises(VirError) as e:
        affect.impact(dom, affect.AFFECT_LIVE)
    assert e.value.code == ErrorCode.OPERATION_INVALID
    assert e.value.domain == ErrorDomain.DOMAIN
    assert str(e.value.message) == "Requested operation is not valid: domain is not running"
    run(dom, FakeMonitor())
    assert affect.impact(dom, 0) == (True, False)
    assert affect.impact(dom, BOTH) == (True, True)


async def test_a_transient_domain_has_no_config_to_change(driver: QemuDriver) -> None:
    dom = await driver.define_xml(XML)
    run(dom, FakeMonitor())
    dom.set_config(None)
    with pytest.raises(VirError) as e:
        affect.impact(dom, affect.AFFECT_CONFIG)
    assert (e.value.code, e.value.domain) == (ErrorCode.OPERATION_INVALID, ErrorDomain.DOMAIN)
    assert e.value.message == (
        "Requested operation is not valid: transient domains do not have any persistent config"
    )


async def test_getters_refuse_live_and_config_together(driver: QemuDriver) -> None:
    dom = await driver.define_xml(XML)
    run(dom, FakeMonitor())
    with pytest.raises(VirError, match="mutually exclusive"):
        affect.one_def(dom, BOTH)
    assert affect.one_def(dom, affect.AFFECT_CONFIG) is dom.config
    assert affect.one_def(dom, 0) is dom.live


async def running(driver: QemuDriver) -> Domain:
    dom = await driver.define_xml(XML)
    run(dom, FakeMonitor())
    driver._save_status(dom)
    return dom


async def test_modify_saves_the_copy_and_the_live_status(driver: QemuDriver) -> None:
    dom = await running(driver)
    before = dom.config
    async with affect.modify(driver, dom, BOTH) as edit:
        assert edit.live is dom.live and edit.config is not None
        assert edit.config is not before  # a copy: the definition itself stays as it was
        assert edit.defs() == [edit.live, edit.config]
        for d in edit.defs():
            d.vcpus = 3
        assert before is not None and before.vcpus == 2
    assert dom.config is not None and dom.config.vcpus == 3
    assert "<vcpu placement='static'>3</vcpu>" in saved_xml(driver)
    assert "<vcpu placement='static'>3</vcpu>" in status_xml(driver)


async def test_modify_saves_nothing_when_the_body_fails(driver: QemuDriver) -> None:
    dom = await running(driver)
    before = dom.config
    with pytest.raises(VirError):
        async with affect.modify(driver, dom, affect.AFFECT_CONFIG) as edit:
            assert edit.live is None and edit.config is not None
            edit.config.vcpus = 3
            raise VirError(ErrorCode.INVALID_ARG, "invalid argument: no")
    assert dom.config is before
    assert "<vcpu placement='static'>2</vcpu>" in saved_xml(driver)


async def test_modify_takes_a_replaced_config(driver: QemuDriver) -> None:
    """A body may build a new definition (hotplug re-parses one) instead of editing the copy."""
    dom = await driver.define_xml(XML)
    assert dom.config is not None
    new = copy.deepcopy(dom.config)
    new.vcpus = 5
    async with affect.modify(driver, dom, 0) as edit:
        assert edit.live is None and edit.config is not None
        edit.config = new
    assert dom.config is new
    assert "<vcpu placement='static'>5</vcpu>" in saved_xml(driver)
