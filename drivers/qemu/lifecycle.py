"""Guest power: shutdown, reboot and reset, and what follows the guest's own.

QEMU runs with ``-no-shutdown``: a guest that powers off stops there and the
driver decides. ``on_poweroff`` destroy kills QEMU; restart, and any reboot
asked through ACPI, is libvirt's fake reboot: the power button is pressed,
and when the guest has shut down its hardware is reset and its CPUs run
again, as one more boot of the same QEMU. A guest that reboots itself is
reset by QEMU (REBOOT event), unless ``on_reboot`` is destroy: then QEMU is
told (``set-action``) to treat a reset as a shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import TYPE_CHECKING, Any

from drivers.qemu import agent
from drivers.qemu.domain import (
    Detail,
    Domain,
    Event,
    Paused,
    Running,
    Shutoff,
    State,
    not_running,
)
from protocol.errors import VirError

if TYPE_CHECKING:
    from drivers.qemu.domain_xml import DomainDef
    from drivers.qemu.driver import QemuDriver
    from drivers.qemu.process import QemuProcess

log = logging.getLogger(__name__)

# virDomainShutdownFlagValues / virDomainRebootFlagValues (same bits)
POWER_ACPI = 1 << 0
POWER_AGENT = 1 << 1
RUNNING_CRASHED = 9  # virDomainRunningReason: running again after a crash
CRASHED_PANICKED = 1  # virDomainCrashedReason
# virConnectDomainEventAgentLifecycleState / Reason
AGENT_CONNECTED, AGENT_DISCONNECTED = 1, 2
AGENT_DOMAIN_STARTED, AGENT_CHANNEL = 1, 2

# Domains whose next guest shutdown is the first half of a fake reboot, and
# those stopped in one right now (QEMU's STOP then is no pause to report).
_fake_reboot: weakref.WeakSet[Domain] = weakref.WeakSet()
_paused_shutdown: weakref.WeakSet[Domain] = weakref.WeakSet()
# Domains being destroyed because their guest panicked (on_crash destroy).
_panicked: weakref.WeakSet[Domain] = weakref.WeakSet()
# An agent's guest-shutdown gets no answer: its call ends at the guest's
# SHUTDOWN (or, for a reboot, RESET) event.
_awaiting: weakref.WeakKeyDictionary[Domain, tuple[str, asyncio.Future[None]]] = (
    weakref.WeakKeyDictionary()
)


# -- at start --------------------------------------------------------------------


async def setup(driver: QemuDriver, dom: Domain, proc: QemuProcess, d: DomainDef) -> None:
    """Before the CPUs first run: ``on_reboot`` destroy makes a guest reset a shutdown;
    a guest with an agent channel learns where its agent stands."""
    if d.on_reboot == "destroy":
        await proc.monitor.execute("set-action", {"reboot": "shutdown"})
    ch = agent.agent_channel(dom)
    if ch is not None and dom.live_state is not None:
        up = dom.live_state.channel_states.get(ch.info.alias or "") == "connected"
        driver.bus.emit("domain-agent-lifecycle", dom, state=AGENT_CONNECTED if up
                        else AGENT_DISCONNECTED, reason=AGENT_DOMAIN_STARTED)


# -- the API calls -----------------------------------------------------------------


async def shutdown(driver: QemuDriver, dom: Domain, flags: int = 0) -> None:
    """virDomainShutdownFlags: the agent if asked (or connected), else the power button."""
    restart = dom.definition.on_poweroff == "restart"
    await _power(driver, dom, flags, restart, running_only=True)


async def reboot(driver: QemuDriver, dom: Domain, flags: int = 0) -> None:
    """virDomainReboot: as shutdown, but the guest comes back (unless on_reboot says no)."""
    restart = dom.definition.on_reboot != "destroy"
    await _power(driver, dom, flags, restart, running_only=False)


async def _power(
    driver: QemuDriver, dom: Domain, flags: int, restart: bool, running_only: bool
) -> None:
    driver._check_present(dom)
    agent_asked = bool(flags & POWER_AGENT)
    acpi_asked = bool(flags & POWER_ACPI)
    use_agent = agent_asked or (not flags and agent.available(dom))
    agent_only = agent_asked and not acpi_asked
    if use_agent:
        try:
            await _agent_power(dom, restart, running_only)
            return
        except VirError:
            if agent_only:
                raise
        if not dom.active:  # the guest went while the agent was tried
            return
    await _acpi_power(driver, dom, restart, running_only)


async def _agent_power(dom: Domain, restart: bool, running_only: bool) -> None:
    if not dom.active:
        raise not_running()
    if running_only and dom.state != State.RUNNING:
        raise not_running()
    client = agent.agent_for(dom)
    _fake_reboot.discard(dom)
    waited = "reset" if restart else "shutdown"
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    _awaiting[dom] = (waited, done)
    try:
        await client.execute(
            "guest-shutdown",
            {"mode": "reboot" if restart else "powerdown"},
            timeout=agent.SHUTDOWN_TIMEOUT,
            until=done,
        )
    finally:
        if _awaiting.get(dom, (None, None))[1] is done:
            del _awaiting[dom]


async def _acpi_power(driver: QemuDriver, dom: Domain, restart: bool, running_only: bool) -> None:
    async with dom.lock:
        proc = driver._monitor_of(dom)
        if running_only and dom.state != State.RUNNING:
            raise not_running()
        if restart:
            _fake_reboot.add(dom)
        else:
            _fake_reboot.discard(dom)
        await proc.monitor.execute("system_powerdown")


async def reset(driver: QemuDriver, dom: Domain) -> None:
    """virDomainReset: the reset button, at once, whatever the guest is doing."""
    async with dom.lock:
        proc = driver._monitor_of(dom)
        try:
            await proc.monitor.execute("system_reset")
        finally:
            _fake_reboot.discard(dom)
        if dom.state == State.CRASHED:
            dom.set_state(State.PAUSED, Paused.CRASHED)
            driver._save_status(dom)


# -- what QEMU tells -----------------------------------------------------------------


def on_qmp_event(driver: QemuDriver, dom: Domain, name: str, data: dict[str, Any]) -> bool:
    """Handle the power events; True when the driver must not look at ``name`` further."""
    if name == "SHUTDOWN":
        _on_shutdown(driver, dom, data)
        return True
    if name == "RESET":
        _on_reset(driver, dom)
        return True
    if name == "GUEST_PANICKED":
        _on_panic(driver, dom)
        return True
    if name == "STOP":
        return dom in _paused_shutdown  # the stop of a fake reboot is not a pause
    if name == "VSERPORT_CHANGE":
        _on_channel(driver, dom, data)
    return False


def _on_channel(driver: QemuDriver, dom: Domain, data: dict[str, Any]) -> None:
    """The agent opened or closed its port: AGENT_LIFECYCLE, and a closed one is dropped."""
    ch = agent.agent_channel(dom)
    if ch is None or ch.info.alias != data.get("id"):
        return
    up = bool(data.get("open"))
    if not up:
        agent.drop(dom)
    driver.bus.emit("domain-agent-lifecycle", dom,
                    state=AGENT_CONNECTED if up else AGENT_DISCONNECTED, reason=AGENT_CHANNEL)


def _notify(dom: Domain, what: str) -> None:
    waiting = _awaiting.get(dom)
    if waiting is not None and waiting[0] == what and not waiting[1].done():
        waiting[1].set_result(None)


def _on_shutdown(driver: QemuDriver, dom: Domain, data: dict[str, Any]) -> None:
    if dom.state == State.SHUTDOWN or not dom.active:
        return  # QEMU repeats it when it is then told to quit
    if dom in _panicked:
        return  # its quitting as a crashed guest is ended; libvirtd no longer listens
    guest = data.get("guest")
    _notify(dom, "shutdown")
    restart = dom.definition.on_poweroff == "restart"
    if dom in _fake_reboot or restart:
        _paused_shutdown.add(dom)
        if dom.process is not None:
            driver._spawn(_fake_reboot_now(driver, dom, dom.process))
        return
    dom.got_shutdown = True
    dom.set_state(State.SHUTDOWN, 0)
    if guest is None:
        detail = Detail.SHUTDOWN_FINISHED
    else:
        detail = Detail.SHUTDOWN_GUEST if guest else Detail.SHUTDOWN_HOST
    driver._emit(dom, Event.SHUTDOWN, detail)
    driver._save_status(dom)
    if dom.stop_reason is None and dom.process is not None:
        # -no-shutdown keeps QEMU alive after a power-off, the guest's or the
        # host's (a reset under on_reboot destroy); on_poweroff destroy ends it.
        dom.stop_reason = Shutoff.SHUTDOWN
        driver._spawn(dom.process.kill(graceful=False))


async def _fake_reboot_now(driver: QemuDriver, dom: Domain, proc: QemuProcess) -> None:
    """The second half of a fake reboot: reset the powered-off guest and run it again."""
    ok = False
    try:
        async with dom.lock:
            if dom.process is not proc or not dom.active:
                return
            await proc.monitor.execute("system_reset")
            crashed = dom.state == State.CRASHED
            await proc.monitor.execute("cont")
            dom.set_state(State.RUNNING, RUNNING_CRASHED if crashed else Running.BOOTED)
            if crashed:  # from the crash, as from any pause, the guest resumes
                driver._emit(dom, Event.RESUMED, Detail.RESUMED_UNPAUSED)
            driver._save_status(dom)
            ok = True
    except VirError as e:
        log.error("fake reboot of %s failed: %s", dom.name, e.message)
    finally:
        _paused_shutdown.discard(dom)
        _fake_reboot.discard(dom)
        if not ok and dom.process is proc:
            await proc.kill(graceful=False)


def _on_reset(driver: QemuDriver, dom: Domain) -> None:
    if dom.state == State.PAUSED and dom.reason == Paused.STARTING_UP:
        return  # a reset before the guest ever ran is no reboot
    driver.bus.emit("domain-reboot", dom)
    _notify(dom, "reset")
    _fake_reboot.discard(dom)
    driver._save_status(dom)


def _on_panic(driver: QemuDriver, dom: Domain) -> None:
    """The guest's kernel panicked (pvpanic); QEMU has paused it. on_crash decides."""
    if not dom.active or dom.process is None:
        return
    dom.set_state(State.CRASHED, CRASHED_PANICKED)
    driver._emit(dom, Event.CRASHED, Detail.CRASHED_PANICKED)
    driver._save_status(dom)
    action = dom.definition.on_crash
    # No core dumps are written here: the coredump- actions do the rest of their work.
    if action in ("destroy", "coredump-destroy") and dom.stop_reason is None:
        _panicked.add(dom)
        dom.stop_reason = Shutoff.CRASHED
        driver._spawn(dom.process.kill(graceful=False))
    elif action in ("restart", "coredump-restart"):
        _paused_shutdown.add(dom)
        driver._spawn(_fake_reboot_now(driver, dom, dom.process))
    # preserve: the guest stays crashed, for a reset or a destroy.


def stopped(dom: Domain, detail: int) -> int:
    """The guest stopped: no reboot or agent state survives into its next run.

    Returns the STOPPED event's detail, ``detail`` unless a panic ended the guest.
    """
    if dom in _panicked:
        detail = Detail.STOPPED_CRASHED
    _panicked.discard(dom)
    _fake_reboot.discard(dom)
    _paused_shutdown.discard(dom)
    waiting = _awaiting.pop(dom, None)
    if waiting is not None and not waiting[1].done():
        waiting[1].set_result(None)
    agent.drop(dom)
    return detail
