"""One domain the QEMU driver knows: its definitions and its runtime state.

A domain has a persistent ``config`` (None for a transient one) and, while it
runs, the ``live`` definition it was started from. Definitions are never
changed in place - defining again replaces ``config`` - so starting a guest
simply points ``live`` at the current ``config``.
"""

from __future__ import annotations

import asyncio
import os
import uuid as uuidlib
from enum import IntEnum
from typing import TYPE_CHECKING, NamedTuple

from protocol.errors import ErrorCode, ErrorDomain, VirError

if TYPE_CHECKING:
    from drivers.qemu.domain_xml import DomainDef, LiveState
    from drivers.qemu.process import QemuProcess


class State(IntEnum):
    """virDomainState."""

    NOSTATE = 0
    RUNNING = 1
    BLOCKED = 2
    PAUSED = 3
    SHUTDOWN = 4
    SHUTOFF = 5
    CRASHED = 6
    PMSUSPENDED = 7


class Running(IntEnum):
    UNKNOWN = 0
    BOOTED = 1
    MIGRATED = 2
    RESTORED = 3
    FROM_SNAPSHOT = 4
    UNPAUSED = 5


class Paused(IntEnum):
    UNKNOWN = 0
    USER = 1
    SHUTTING_DOWN = 8
    CRASHED = 10
    STARTING_UP = 11


class Shutoff(IntEnum):
    UNKNOWN = 0
    SHUTDOWN = 1
    DESTROYED = 2
    CRASHED = 3
    MIGRATED = 4
    SAVED = 5
    FAILED = 6
    FROM_SNAPSHOT = 7
    DAEMON = 8


class Event(IntEnum):
    """virDomainEventType."""

    DEFINED = 0
    UNDEFINED = 1
    STARTED = 2
    SUSPENDED = 3
    RESUMED = 4
    STOPPED = 5
    SHUTDOWN = 6
    PMSUSPENDED = 7
    CRASHED = 8


class Detail:
    """The detail codes of the lifecycle events this driver emits."""

    DEFINED_ADDED = 0
    DEFINED_UPDATED = 1
    UNDEFINED_REMOVED = 0
    STARTED_BOOTED = 0
    SUSPENDED_PAUSED = 0
    RESUMED_UNPAUSED = 0
    STOPPED_SHUTDOWN = 0
    STOPPED_DESTROYED = 1
    STOPPED_CRASHED = 2
    STOPPED_FAILED = 5
    SHUTDOWN_FINISHED = 0
    SHUTDOWN_GUEST = 1
    SHUTDOWN_HOST = 2
    CRASHED_PANICKED = 0


# How a guest that stopped is reported: (shutoff reason, STOPPED event detail).
STOP_OUTCOME = {
    Shutoff.DESTROYED: Detail.STOPPED_DESTROYED,
    Shutoff.SHUTDOWN: Detail.STOPPED_SHUTDOWN,
    Shutoff.CRASHED: Detail.STOPPED_FAILED,
    Shutoff.FAILED: Detail.STOPPED_FAILED,
    Shutoff.DAEMON: Detail.STOPPED_FAILED,
    Shutoff.UNKNOWN: Detail.STOPPED_FAILED,
}


class DomainInfo(NamedTuple):
    """virDomainInfo: memory in KiB, CPU time in nanoseconds."""

    state: int
    max_mem: int
    memory: int
    nr_virt_cpu: int
    cpu_time: int


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def not_running() -> VirError:
    """libvirt's answer to a call that needs a running guest."""
    return VirError(ErrorCode.OPERATION_INVALID,
                    "Requested operation is not valid: domain is not running", ErrorDomain.QEMU)


def running_process(dom: Domain) -> QemuProcess:
    """The QEMU process of a running domain, or libvirt's "not running" error."""
    if dom.process is None or not dom.active:
        raise not_running()
    return dom.process


def proc_stat(path: str) -> list[bytes] | None:
    """The fields of a /proc stat file after the command name (state first), None
    when the process or thread is gone. The name may hold spaces and parentheses:
    the fields start after its last ')'."""
    try:
        with open(path, "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def ticks_ns(ticks: int) -> int:
    """Clock ticks (USER_HZ, what /proc and cpuacct count in) in nanoseconds."""
    return ticks * 1_000_000_000 // _CLOCK_TICKS


def stat_cpu_time(fields: list[bytes]) -> int:
    """User plus system CPU time in nanoseconds from ``proc_stat`` fields."""
    # After the command name: state is field 3, utime 14 and stime 15 (1-based).
    return ticks_ns(int(fields[11]) + int(fields[12]))


def process_cpu_time(pid: int) -> int:
    """User plus system CPU time of ``pid`` in nanoseconds (0 if it is gone)."""
    fields = proc_stat(f"/proc/{pid}/stat")
    return stat_cpu_time(fields) if fields is not None else 0


class Domain:
    """A domain object: what lookups return and what every call works on."""

    def __init__(self, config: DomainDef, persistent: bool) -> None:
        # Redefinitions keep name and UUID (the driver refuses anything else).
        self.uuid = uuidlib.UUID(config.uuid).bytes
        self.config: DomainDef | None = config if persistent else None
        self.live: DomainDef | None = None
        self._inactive = config  # a transient domain's definition before it starts
        self.id = -1
        self.state = State.SHUTOFF
        self.reason: int = Shutoff.UNKNOWN
        self.process: QemuProcess | None = None
        self.live_state: LiveState | None = None
        # One job (start, stop, suspend...) at a time; lookups never wait on it.
        self.lock = asyncio.Lock()
        # Why the guest is about to stop, set by whoever asked it to.
        self.stop_reason: Shutoff | None = None
        # QEMU reported SHUTDOWN: its exit is then a shutdown, not a crash.
        self.got_shutdown = False
        # Why the CPUs are about to stop (USER when the API asked).
        self.pause_reason: int = Paused.UNKNOWN
        self.xml_cache: dict[int, str] = {}
        self.removed = False  # undefined, or transient and gone: stale handles

    @property
    def definition(self) -> DomainDef:
        """What runs now, or what would run on the next start."""
        return self.live or self.config or self._inactive

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def uuid_str(self) -> str:
        return self.definition.uuid

    @property
    def persistent(self) -> bool:
        return self.config is not None

    @property
    def active(self) -> bool:
        return self.id != -1

    def set_config(self, config: DomainDef | None) -> None:
        if config is None and self.config is not None:
            self._inactive = self.config
        self.config = config
        self.xml_cache.clear()

    def set_state(self, state: State, reason: int) -> None:
        self.state = state
        self.reason = reason

    def started(self, id: int, live: DomainDef, live_state: LiveState | None) -> None:
        self.id = id
        self.live = live
        self.live_state = live_state
        self.stop_reason = None
        self.got_shutdown = False
        self.pause_reason = Paused.UNKNOWN
        self.xml_cache.clear()

    def stopped(self, reason: Shutoff) -> None:
        if self.live is not None:
            self._inactive = self.live
        self.id = -1
        self.live = None
        self.live_state = None
        self.process = None
        self.set_state(State.SHUTOFF, reason)
        self.xml_cache.clear()

    def cpu_time(self) -> int:
        proc = self.process
        return process_cpu_time(proc.pid) if proc is not None else 0

    def info(self) -> DomainInfo:
        d = self.definition
        return DomainInfo(
            state=int(self.state),
            max_mem=d.memory,
            memory=d.current_memory,
            nr_virt_cpu=d.vcpu_current or d.vcpus,
            cpu_time=self.cpu_time(),
        )

    def __repr__(self) -> str:
        return f"<Domain {self.name} id={self.id} {self.state.name}>"
