"""The QEMU driver without QEMU, for unit tests of its calls on running guests.

Made-up capabilities (one i440fx machine), a monitor that records what it is
sent, and a defined domain made to look running with that monitor as its QMP.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, TypeVar

from daemon.paths import Paths
from drivers import host
from drivers.events import EventBus
from drivers.qemu import domain_xml
from drivers.qemu.capabilities import MachineInfo, QemuCaps
from drivers.qemu.domain import Domain, State
from drivers.qemu.domain_xml import LiveState
from drivers.qemu.driver import QemuDriver

CAPS = QemuCaps(
    emulator="/usr/bin/qemu-system-x86_64",
    arch="x86_64",
    version=7002022,
    kvm_usable=False,
    machines={"pc-i440fx-7.2": MachineInfo("pc-i440fx-7.2", "pc", 255, True)},
    cpu_models=["qemu64"],
)


class FakeMonitor:
    """Records every command; ``replies`` answers by name, with a value or a
    function of the arguments. Subclasses answer more in ``answer``."""

    def __init__(self, replies: dict[str, Any] | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.replies = replies or {}

    async def execute(self, cmd: str, args: Any = None, timeout: float | None = None) -> Any:
        self.calls.append((cmd, args))
        return self.answer(cmd, args)

    def answer(self, cmd: str, args: Any) -> Any:
        reply = self.replies.get(cmd)
        return reply(args) if callable(reply) else reply

    def sent(self) -> list[str]:
        """The commands that change something: all but the queries."""
        return [cmd for cmd, _ in self.calls if not cmd.startswith("query-")]


class FakeProcess:
    def __init__(self, monitor: FakeMonitor) -> None:
        self.pid = 999999
        self.monitor_path = "/nonexistent"
        self.monitor = monitor


def make_driver(root: Path) -> QemuDriver:
    """A driver with its directories under ``root``, the made-up QEMU and no cgroups."""
    drv = QemuDriver(Paths(root), EventBus())
    drv.all_caps = {host.host_arch(): CAPS}
    for d in (drv.dirs.config_dir, drv.dirs.state_dir):
        d.mkdir(parents=True, exist_ok=True)
    drv._cgroup_root = None
    return drv


M = TypeVar("M", bound=FakeMonitor)


def run(dom: Domain, monitor: M) -> M:
    """Make ``dom`` look running with ``monitor`` as its QMP; returns the monitor."""
    assert dom.config is not None
    live = copy.deepcopy(dom.config)
    domain_xml.assign_aliases(live)
    dom.process = FakeProcess(monitor)  # type: ignore[assignment]
    dom.started(7, live, LiveState(id=7))
    dom.set_state(State.RUNNING, 1)
    return monitor
