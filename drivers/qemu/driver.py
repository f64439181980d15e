"""The QEMU driver: the registry of domains and what each call does to them.

Lookups and reads are plain dictionary work on the event loop. Anything that
talks to QEMU runs under the domain's own lock, so one guest with a stuck
monitor never holds up calls about another; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging
import os
import platform
import socket
import tempfile
import uuid as uuidlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from daemon.paths import DriverPaths, Paths
from drivers import host, offload
from drivers.events import EventBus
from drivers.files import write_atomic
from drivers.qemu import (
    capabilities,
    cgroup,
    command,
    domain_xml,
    hotplug,
    lifecycle,
    netif,
    stats,
    tuning,
    volumes,
)
from drivers.qemu.capabilities import QemuCaps
from drivers.qemu.domain import (
    STOP_OUTCOME,
    Detail,
    Domain,
    DomainInfo,
    Event,
    Paused,
    Running,
    Shutoff,
    State,
    not_running,
)
from drivers.qemu.domain_xml import DomainDef, LiveState, assign_aliases
from drivers.qemu.process import (
    QemuProcess,
    append_log,
    cpu_cgroup_root,
    log_timestamp,
    pid_alive,
)
from drivers.qemu.status import Status, format_status, parse_status
from protocol.errors import ErrorCode, ErrorDomain, VirError

log = logging.getLogger(__name__)

VERSION = "0.1.0"
MAX_SOCKET_PATH = 107

# virConnectListAllDomainsFlags
LIST_ACTIVE = 1 << 0
LIST_INACTIVE = 1 << 1
LIST_PERSISTENT = 1 << 2
LIST_TRANSIENT = 1 << 3
LIST_RUNNING = 1 << 4
LIST_PAUSED = 1 << 5
LIST_SHUTOFF = 1 << 6
LIST_OTHER = 1 << 7
LIST_MANAGEDSAVE = 1 << 8
LIST_NO_MANAGEDSAVE = 1 << 9
LIST_AUTOSTART = 1 << 10
LIST_NO_AUTOSTART = 1 << 11
LIST_HAS_SNAPSHOT = 1 << 12
LIST_NO_SNAPSHOT = 1 << 13
LIST_HAS_CHECKPOINT = 1 << 14
LIST_NO_CHECKPOINT = 1 << 15

START_PAUSED = 1 << 0
UNDEFINE_NVRAM = 1 << 2
UNDEFINE_KEEP_NVRAM = 1 << 3
DESTROY_GRACEFUL = 1 << 0
DESTROY_REMOVE_LOGS = 1 << 1
XML_SECURE = 1 << 0
XML_INACTIVE = 1 << 1
XML_MIGRATABLE = 1 << 3

CONFIG_HEADER = (
    "<!--\nDefinition of a guest kept by aiovirtd. Edit it with virsh edit {name},\n"
    "not here: changes made to this file are not seen until the daemon restarts.\n-->\n"
)


def _no_domain(what: str) -> VirError:
    return VirError(ErrorCode.NO_DOMAIN, f"Domain not found: {what}", ErrorDomain.QEMU)


class QemuDriver:
    """The ``qemu:///system`` driver."""

    uri = "qemu:///system"

    def __init__(self, paths: Paths, bus: EventBus, peers: Mapping[str, Any] | None = None) -> None:
        self.paths = paths
        self.dirs = DriverPaths(paths, "qemu")
        self.bus = bus
        # The other drivers by name ("storage", ...): what a guest's pools and
        # networks resolve through.
        self.peers: Mapping[str, Any] = peers if peers is not None else {}
        self.all_caps: dict[str, QemuCaps] = {}
        self._by_uuid: dict[bytes, Domain] = {}
        self._by_name: dict[str, Domain] = {}
        self._by_id: dict[int, Domain] = {}
        self._next_id = 1
        self._caps_xml: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._cgroup_root = cpu_cgroup_root()

    # -- life of the driver ----------------------------------------------------

    async def startup(self) -> None:
        d = self.dirs
        for path in (d.config_dir, d.state_dir, d.lib_dir, d.log_dir, d.cache_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.all_caps = await capabilities.probe_all(d.cache_dir)
        if host.host_arch() not in self.all_caps:
            raise RuntimeError(f"no QEMU emulator found for {host.host_arch()}")
        self._load_configs()
        self._sweep_cgroups()
        await self._reattach_all()
        await self._autostart()

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(
            *(dom.process.detach() for dom in self._by_id.values() if dom.process),
            return_exceptions=True,
        )

    @property
    def caps(self) -> QemuCaps:
        """Capabilities of the emulator for the host's own architecture."""
        return self.all_caps[host.host_arch()]

    def capabilities(self) -> str:
        if self._caps_xml is None:
            self._caps_xml = capabilities.capabilities_xml(
                self.all_caps, host.host_cpu(), host.numa_cells(), host.cache_banks()
            )
        return self._caps_xml

    def get_version(self) -> int:
        return self.caps.version

    def security_model(self) -> tuple[str, str]:
        """(model, DOI) for virNodeGetSecurityModel: guests run with no security driver."""
        return "none", "0"

    # -- lookups ---------------------------------------------------------------

    def lookup_by_name(self, name: str) -> Domain:
        dom = self._by_name.get(name)
        if dom is None:
            raise _no_domain(f"no domain with matching name '{name}'")
        return dom

    def lookup_by_uuid(self, uuid: bytes, name: str | None = None) -> Domain:
        """By UUID; ``name`` (from a client's handle) only decorates the error."""
        dom = self._by_uuid.get(uuid)
        if dom is None:
            text = f"no domain with matching uuid '{uuidlib.UUID(bytes=uuid)}'"
            raise _no_domain(f"{text} ({name})" if name is not None else text)
        return dom

    def lookup_by_id(self, id: int) -> Domain:
        dom = self._by_id.get(id)
        if dom is None:
            raise _no_domain(f"no domain with matching id {id}")
        return dom

    def list_domains(self, flags: int = 0) -> list[Domain]:
        doms = list(self._by_uuid.values())
        if flags:  # no filter at all is the common call (virsh list --all)
            doms = [dom for dom in doms if _matches(dom, flags)]
        both = LIST_AUTOSTART | LIST_NO_AUTOSTART
        if flags & both not in (0, both):
            want = bool(flags & LIST_AUTOSTART)
            doms = [d for d in doms if self.get_autostart(d) == want]
        return doms

    def num_of_domains(self) -> int:
        return len(self._by_id)

    def active_ids(self) -> list[int]:
        return sorted(self._by_id)

    def defined_names(self) -> list[str]:
        return [d.name for d in self._by_uuid.values() if d.persistent and not d.active]

    def volumes_in_use(self, pool: str, paths: Mapping[str, str]) -> dict[str, list[str]]:
        """Volumes of ``pool`` (``paths``: their names by path) that running guests
        hold, by guest name: what the storage driver must not pull away."""
        held = {dom.name: volumes.held(dom.live.devices.disks, pool, paths)
                for dom in self._by_id.values() if dom.live is not None}
        return {name: vols for name, vols in held.items() if vols}

    # -- definitions -------------------------------------------------------------

    def _parse(self, xml: str) -> DomainDef:
        return domain_xml.parse(xml, self.caps)

    def _find_existing(self, d: DomainDef, check_live: bool) -> Domain | None:
        """The domain ``d`` redefines, or None; clashes raise as libvirtd does."""
        uuid = uuidlib.UUID(d.uuid).bytes
        dom = self._by_uuid.get(uuid)
        if dom is not None:
            if dom.name != d.name:
                raise VirError(
                    ErrorCode.OPERATION_FAILED,
                    f"operation failed: domain '{dom.name}' is already defined"
                    f" with uuid {dom.uuid_str}",
                    ErrorDomain.DOMAIN,
                )
            if check_live and dom.active:
                raise VirError(
                    ErrorCode.OPERATION_INVALID,
                    f"Requested operation is not valid: domain '{dom.name}' is already active",
                    ErrorDomain.DOMAIN,
                )
            if check_live and not dom.persistent:
                raise VirError(
                    ErrorCode.OPERATION_INVALID,
                    f"Requested operation is not valid: domain '{dom.name}'"
                    " is already being started",
                    ErrorDomain.DOMAIN,
                )
            return dom
        other = self._by_name.get(d.name)
        if other is not None:
            raise VirError(
                ErrorCode.OPERATION_FAILED,
                f"operation failed: domain '{d.name}' already exists with uuid {other.uuid_str}",
                ErrorDomain.DOMAIN,
            )
        return None

    def _register(self, dom: Domain) -> None:
        self._by_uuid[dom.uuid] = dom
        self._by_name[dom.name] = dom

    def _forget(self, dom: Domain) -> None:
        dom.removed = True
        self._by_uuid.pop(dom.uuid, None)
        self._by_name.pop(dom.name, None)

    def _config_path(self, name: str) -> Path:
        return self.dirs.config_dir / f"{name}.xml"

    def _save_config(self, d: DomainDef) -> None:
        text = domain_xml.format(d, inactive=True, secure=True)
        write_atomic(self._config_path(d.name), CONFIG_HEADER.format(name=d.name) + text)

    def _load_configs(self) -> None:
        for path in sorted(self.dirs.config_dir.glob("*.xml")):
            try:
                d = self._parse(path.read_text())
                if path.stem != d.name:
                    raise ValueError(f"file name does not match domain name '{d.name}'")
                if self._find_existing(d, check_live=False) is not None:
                    raise ValueError("duplicate domain")
            except (OSError, ValueError, VirError) as e:
                log.error("skipping domain config %s: %s", path, e)
                continue
            self._register(Domain(d, persistent=True))

    async def define_xml(self, xml: str, flags: int = 0) -> Domain:
        d = self._parse(xml)
        dom = self._find_existing(d, check_live=False)
        if dom is None:
            dom = Domain(d, persistent=True)
            self._save_config(d)
            self._register(dom)
            detail = Detail.DEFINED_ADDED
        else:
            detail = Detail.DEFINED_UPDATED if dom.persistent else Detail.DEFINED_ADDED
            self._save_config(d)
            dom.set_config(d)
        self._emit(dom, Event.DEFINED, detail)
        return dom

    async def undefine(self, dom: Domain, flags: int = 0) -> None:
        async with dom.lock:
            self._check_present(dom)
            if not dom.persistent:
                raise VirError(
                    ErrorCode.OPERATION_INVALID,
                    "Requested operation is not valid: cannot undefine transient domain",
                    ErrorDomain.QEMU,
                )
            nvram = self._nvram_path(dom.config) if dom.config is not None else None
            if nvram and not flags & UNDEFINE_NVRAM and not flags & UNDEFINE_KEEP_NVRAM:
                # a path the user gave, maybe on a mount that hangs: off the loop
                if await offload.run(os.path.dirname(nvram), os.path.exists, nvram,
                                     domain=ErrorDomain.QEMU):
                    raise VirError(
                        ErrorCode.OPERATION_INVALID,
                        "Requested operation is not valid: cannot undefine domain with nvram",
                        ErrorDomain.QEMU,
                    )
            if nvram and flags & UNDEFINE_NVRAM:
                await offload.run(os.path.dirname(nvram), _unlink, nvram, domain=ErrorDomain.QEMU)
            for path in (self._autostart_link(dom.name), self._config_path(dom.name)):
                _unlink(path)
            self._emit(dom, Event.UNDEFINED, Detail.UNDEFINED_REMOVED)
            dom.set_config(None)
            if not dom.active:
                self._forget(dom)

    def _nvram_path(self, d: DomainDef) -> str | None:
        """The guest's UEFI varstore, also where firmware autoselection will put it."""
        if d.os.nvram:
            return d.os.nvram
        if d.os.firmware == "efi":
            return str(self.dirs.lib_dir / "nvram" / f"{d.name}_VARS.fd")
        return None

    # -- autostart -------------------------------------------------------------------

    def _autostart_link(self, name: str) -> Path:
        return self.dirs.config_dir / "autostart" / f"{name}.xml"

    def get_autostart(self, dom: Domain) -> bool:
        self._check_present(dom)
        return dom.persistent and os.path.lexists(self._autostart_link(dom.name))

    def set_autostart(self, dom: Domain, autostart: bool) -> None:
        """A link in ``autostart/`` to the config file, as libvirtd keeps it."""
        self._check_present(dom)
        if not dom.persistent:
            raise VirError(
                ErrorCode.OPERATION_INVALID,
                "Requested operation is not valid: cannot set autostart for transient domain",
                ErrorDomain.QEMU,
            )
        link = self._autostart_link(dom.name)
        if autostart and not os.path.lexists(link):
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(self._config_path(dom.name), link)
        elif not autostart:
            try:
                os.unlink(link)
            except FileNotFoundError:
                pass

    async def _autostart(self) -> None:
        """Start the autostart guests once per boot of the host, as libvirtd does.

        The marker lives in the state dir, which a reboot empties.
        """
        marker = self.dirs.state_dir / "autostarted"
        if marker.exists():
            return
        marker.touch()
        doms = [d for d in self._by_uuid.values() if not d.active and self.get_autostart(d)]
        for dom, result in zip(doms, await asyncio.gather(
            *(self.create(d) for d in doms), return_exceptions=True
        )):
            if isinstance(result, BaseException):
                log.error("failed to autostart VM '%s': %s", dom.name, result)

    # -- starting ------------------------------------------------------------------

    def _check_present(self, dom: Domain) -> None:
        if dom.removed:
            raise _no_domain(f"no domain with matching uuid '{dom.uuid_str}' ({dom.name})")

    async def create(self, dom: Domain, flags: int = 0) -> None:
        async with dom.lock:
            self._check_present(dom)
            if dom.active:
                raise VirError(
                    ErrorCode.OPERATION_INVALID,
                    "Requested operation is not valid: domain is already running",
                    ErrorDomain.QEMU,
                )
            await self._start(dom, dom.definition, paused=bool(flags & START_PAUSED))

    async def create_xml(self, xml: str, flags: int = 0) -> Domain:
        d = self._parse(xml)
        dom = self._find_existing(d, check_live=True)
        transient = dom is None
        if dom is None:
            dom = Domain(d, persistent=False)
            self._register(dom)
        async with dom.lock:
            try:
                await self._start(dom, d, paused=bool(flags & START_PAUSED))
            except BaseException:
                if transient:
                    self._forget(dom)
                raise
        return dom

    def _monitor_path(self, dom: Domain) -> str:
        """A monitor socket path that fits in sun_path even under a long test root."""
        path = str(self.dirs.state_dir / f"{dom.uuid_str}.monitor")
        if len(path.encode()) <= MAX_SOCKET_PATH:
            return path
        tag = hashlib.sha256(str(self.dirs.state_dir).encode()).hexdigest()[:12]
        short = Path(tempfile.gettempdir()) / f"aiovirtd-{tag}"
        short.mkdir(mode=0o700, exist_ok=True)
        return str(short / f"{dom.uuid_str}.monitor")

    def _cgroup(self, dom: Domain) -> Path | None:
        """The guest's CPU cgroup, under libvirt's resource partition /machine."""
        if self._cgroup_root is None:
            return None
        return self._cgroup_root / "machine" / f"qemu-{dom.uuid_str}.aiovirtd"

    def _sweep_cgroups(self) -> None:
        """Remove the empty cgroups of guests that died while no daemon watched them.

        Only empty ones can go (rmdir refuses the others), so guests of any
        daemon still running keep theirs.
        """
        cgroup.sweep()
        if self._cgroup_root is None:
            return
        for group in cgroup.listing(self._cgroup_root / "machine", "qemu-*.aiovirtd"):
            try:
                group.rmdir()
            except OSError:
                pass

    def _channel_dir(self, id: int, name: str) -> Path:
        """Where a guest's channel sockets go (libvirtd's domain-ID-NAME naming)."""
        return self.dirs.lib_dir / "channel" / "target" / f"domain-{id}-{name[:20]}"

    def _header(self) -> str:
        caps = self.caps
        v = caps.version
        return (
            f"starting up aiovirtd version: {VERSION}, qemu version:"
            f" {v // 1_000_000}.{v // 1000 % 1000}.{v % 1000}{caps.package},"
            f" kernel: {platform.release()}, hostname: {socket.gethostname()}"
        )

    def _env(self, d: DomainDef) -> dict[str, str]:
        env = {
            "LC_ALL": "C",
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(self.dirs.lib_dir),
        }
        if d.clock.offset == "timezone" and d.clock.attrs.get("timezone"):
            env["TZ"] = d.clock.attrs["timezone"]  # the RTC runs on local time, in this zone
        env.update(d.qemu_env)  # <qemu:env> last: the user's word wins
        return env

    async def _start(self, dom: Domain, d: DomainDef, paused: bool) -> None:
        """Launch QEMU for ``d``, stopped, learn its live facts, then let it run."""
        id = self._next_id
        self._next_id += 1
        # The command builder fills in aliases and paths: that is the live
        # definition's business, the persistent one must stay as defined.
        d = copy.deepcopy(d)
        monitor_path = self._monitor_path(dom)
        pidfile = self.dirs.state_dir / f"{d.name}.pid"
        channel_dir = self._channel_dir(id, d.name)
        channel_dir.mkdir(parents=True, exist_ok=True)
        domain_xml.select_firmware(d, str(self.dirs.lib_dir / "nvram"))  # as _nvram_path
        try:
            if d.os.nvram:  # a path the user may give, maybe on a mount that hangs
                await offload.run(os.path.dirname(d.os.nvram), domain_xml.ensure_nvram, d,
                                  domain=ErrorDomain.QEMU)
        except OSError as e:
            raise VirError(
                ErrorCode.SYSTEM_ERROR,
                f"Unable to create NVRAM file '{d.os.nvram}': {e.strerror}",
                ErrorDomain.QEMU,
            ) from None
        volumes.resolve_all(self.peers.get("storage"), d)
        assign_aliases(d)
        net_fds = await netif.plug_all(self, d)
        try:
            argv = command.build_argv(
                d,
                self.caps,
                monitor_path=monitor_path,
                pidfile=str(pidfile),
                channel_dir=str(channel_dir),
                net_fds=net_fds,
            )
            proc = await QemuProcess.launch(
                argv,
                name=d.name,
                monitor_path=monitor_path,
                log_path=self.dirs.log_dir / f"{d.name}.log",
                env=self._env(d),
                on_event=lambda name, data: self._on_qmp_event(dom, name, data),
                on_exit=lambda p: self._on_exit(dom, p),
                header=self._header(),
                pass_fds=tuple(net_fds.values()),
                cgroup=self._cgroup(dom),
            )
        except BaseException:
            await netif.unplug_all(self, d.devices.interfaces)
            raise
        finally:
            for fd in net_fds.values():  # QEMU holds its own copies now
                os.close(fd)
        dom.process = proc
        dom.started(id, d, LiveState(id=id))
        dom.set_state(State.PAUSED, Paused.STARTING_UP)
        self._by_id[id] = dom
        # Written at once, so that a daemon dying right now leaves no QEMU behind
        # unknown: the next one finds it half-started and stops it.
        self._save_status(dom)
        try:
            dom.live_state = await self._live_facts(proc, d, id)
            await netif.set_link_states(proc, d)
            await tuning.apply_at_start(self, dom)
            await self._set_passwords(proc, d)
            await stats.set_stats_period(proc, d)
            await lifecycle.setup(self, dom, proc, d)
            if paused:
                self._emit(dom, Event.STARTED, Detail.STARTED_BOOTED)
                dom.set_state(State.PAUSED, Paused.USER)
                self._emit(dom, Event.SUSPENDED, Detail.SUSPENDED_PAUSED)
            else:
                await proc.monitor.execute("cont")
                dom.set_state(State.RUNNING, Running.BOOTED)
                self._emit(dom, Event.STARTED, Detail.STARTED_BOOTED)
            self._save_status(dom)
        except BaseException:
            dom.stop_reason = Shutoff.FAILED
            await proc.kill(graceful=False)
            await self._finish_stop(dom, proc, emit=False)
            raise

    async def _set_passwords(self, proc: QemuProcess, d: DomainDef) -> None:
        """VNC and SPICE passwords go over the monitor, not on the command line anyone can read."""
        for g in d.devices.graphics:
            if g.type in ("vnc", "spice") and g.attrs.get("passwd"):
                args = {"protocol": g.type, "password": g.attrs["passwd"], "connected": "keep"}
                await proc.monitor.execute("set_password", args)
                await proc.monitor.execute("expire_password", {"protocol": g.type, "time": "never"})

    async def _live_facts(self, proc: QemuProcess, d: DomainDef, id: int) -> LiveState:
        """What QEMU chose at start that the live XML shows: pty paths, VNC port."""
        live = LiveState(id=id)
        for chardev in await proc.monitor.execute("query-chardev"):
            # A device's chardev is "char" + the device alias (charserial0 -> serial0).
            label = chardev["label"]
            alias = label[4:] if label.startswith("char") else label
            filename = chardev.get("filename", "")
            if filename.startswith("pty:"):
                live.pty_paths[alias] = filename[4:]
            if alias.startswith("channel"):
                open_ = chardev.get("frontend-open")
                live.channel_states[alias] = "connected" if open_ else "disconnected"
        kinds = {g.type for g in d.devices.graphics}
        if "vnc" in kinds:
            vnc = await proc.monitor.execute("query-vnc")
            if vnc.get("enabled") and str(vnc.get("service", "")).isdigit():
                live.vnc_port = int(vnc["service"])
        if "spice" in kinds:
            spice = await proc.monitor.execute("query-spice")
            if spice.get("enabled") and spice.get("port"):
                live.spice_port = int(spice["port"])
        return live

    # -- stopping ------------------------------------------------------------------

    async def destroy(self, dom: Domain, flags: int = 0) -> None:
        """Kill the guest's QEMU; deliberately not behind the domain lock, so a
        guest whose monitor hangs can still be destroyed."""
        self._check_present(dom)
        proc = dom.process
        if proc is None or not dom.active:
            raise not_running()
        dom.stop_reason = Shutoff.DESTROYED
        if not await proc.kill(graceful=bool(flags & DESTROY_GRACEFUL)):
            dom.stop_reason = None
            raise VirError(
                ErrorCode.SYSTEM_ERROR,
                f"Failed to terminate process {proc.pid} with SIGTERM:"
                " Device or resource busy",
                ErrorDomain.NONE,
            )
        await self._finish_stop(dom, proc)
        if flags & DESTROY_REMOVE_LOGS:
            try:
                os.unlink(self.dirs.log_dir / f"{dom.name}.log")
            except FileNotFoundError:
                pass

    def destroy_soon(self, dom: Domain, id: int) -> None:
        """Destroy the run ``id`` of ``dom`` if it still goes on: the end of a guest
        started with autodestroy, when the connection that started it closes."""
        if dom.id == id and not dom.removed:
            self._spawn(self._destroy_quietly(dom))

    async def _destroy_quietly(self, dom: Domain) -> None:
        try:
            await self.destroy(dom)
        except VirError as e:
            log.info("autodestroy of %s: %s", dom.name, e.message)

    def _on_exit(self, dom: Domain, proc: QemuProcess) -> None:
        if dom.process is proc:
            self._spawn(self._finish_stop(dom, proc))

    async def _finish_stop(self, dom: Domain, proc: QemuProcess, emit: bool = True) -> None:
        """Turn a guest whose QEMU has gone into a shut off domain (once)."""
        await proc.monitor.close()  # takes in the events QEMU sent before it went
        if dom.process is not proc:
            return
        if dom.stop_reason is not None:
            reason = dom.stop_reason
        elif dom.got_shutdown:
            reason = Shutoff.SHUTDOWN
        else:
            reason = Shutoff.CRASHED
        log_path = self.dirs.log_dir / f"{dom.name}.log"
        try:
            line = f"{log_timestamp()}: shutting down, reason={reason.name.lower()}\n"
            append_log(log_path, line)
        except OSError:
            pass
        for path in (
            self.dirs.state_dir / f"{dom.name}.xml",
            self.dirs.state_dir / f"{dom.name}.pid",
            Path(proc.monitor_path),
        ):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        monitor_dir = Path(proc.monitor_path).parent
        short_dir = monitor_dir if monitor_dir != self.dirs.state_dir else None
        for directory in (
            self._channel_dir(dom.id, dom.name), *cgroup.extra_dirs(dom.uuid_str),
            self._cgroup(dom), short_dir,
        ):
            try:
                if directory is not None:
                    directory.rmdir()
            except OSError:
                pass  # already gone, or still holding something
        self._by_id.pop(dom.id, None)
        nets = dom.live.devices.interfaces if dom.live is not None else []
        dom.stopped(reason)
        # Only now: a second stop of this run already returned at the process check.
        await netif.unplug_all(self, nets)
        detail = lifecycle.stopped(dom, STOP_OUTCOME[reason])
        if emit:
            self._emit(dom, Event.STOPPED, detail)
        if not dom.persistent:
            self._forget(dom)

    # -- pausing -------------------------------------------------------------------

    def _monitor_of(self, dom: Domain) -> QemuProcess:
        self._check_present(dom)
        if dom.process is None or not dom.active:
            raise not_running()
        return dom.process

    async def suspend(self, dom: Domain) -> None:
        async with dom.lock:
            proc = self._monitor_of(dom)
            if dom.state != State.PAUSED:
                dom.pause_reason = Paused.USER
                await proc.monitor.execute("stop")
                self._cpus_stopped(dom)

    async def resume(self, dom: Domain) -> None:
        async with dom.lock:
            proc = self._monitor_of(dom)
            if dom.state == State.RUNNING:
                raise VirError(
                    ErrorCode.OPERATION_INVALID,
                    "Requested operation is not valid: domain is already running",
                    ErrorDomain.QEMU,
                )
            if dom.state == State.PAUSED:
                await proc.monitor.execute("cont")
                self._cpus_resumed(dom)

    def _cpus_stopped(self, dom: Domain) -> None:
        if dom.state == State.RUNNING:
            dom.set_state(State.PAUSED, dom.pause_reason)
            dom.pause_reason = Paused.UNKNOWN
            self._emit(dom, Event.SUSPENDED, Detail.SUSPENDED_PAUSED)
            self._save_status(dom)

    def _cpus_resumed(self, dom: Domain) -> None:
        if dom.state == State.PAUSED:
            dom.set_state(State.RUNNING, Running.UNPAUSED)
            self._emit(dom, Event.RESUMED, Detail.RESUMED_UNPAUSED)
            self._save_status(dom)

    def _on_qmp_event(self, dom: Domain, name: str, data: dict) -> None:
        if dom.process is not None:  # as it came, for qemu-monitor-event
            seconds, micros = dom.process.monitor.event_time
            self.bus.emit("qemu-monitor-event", dom, event=name, data=data,
                          seconds=seconds, micros=micros)
        if lifecycle.on_qmp_event(self, dom, name, data):
            return
        if name == "STOP":
            self._cpus_stopped(dom)
        elif name == "RESUME":
            self._cpus_resumed(dom)
        elif name in ("DEVICE_DELETED", "DEVICE_UNPLUG_GUEST_ERROR"):
            hotplug.on_device_event(self, dom, name, data)
        elif name == "BALLOON_CHANGE" and dom.live is not None:
            # The guest gave memory back or took it: what info and the live XML show.
            dom.live.current_memory = int(data.get("actual", 0)) // 1024
            dom.xml_cache.clear()
        elif name == "VSERPORT_CHANGE" and dom.live_state is not None:
            alias = str(data.get("id", ""))
            dom.live_state.channel_states[alias] = (
                "connected" if data.get("open") else "disconnected"
            )
            dom.xml_cache.clear()

    # -- status files and re-attach --------------------------------------------------

    def _save_status(self, dom: Domain) -> None:
        proc, live, d = dom.process, dom.live_state, dom.live
        if proc is None or live is None or d is None:
            return
        st = Status(
            state=dom.state,
            reason=dom.reason,
            pid=proc.pid,
            monitor_path=proc.monitor_path,
            id=dom.id,
            domain_xml=domain_xml.format(d, inactive=True, secure=True),
            vnc_port=live.vnc_port,
            spice_port=live.spice_port,
            pty_paths=live.pty_paths,
            taps={
                n.info.alias or "": n.target_dev for n in d.devices.interfaces if n.target_dev
            },
            ports={n.info.alias or "": n.portid for n in d.devices.interfaces if n.portid},
            bridges={n.info.alias or "": n.bridge for n in d.devices.interfaces if n.bridge},
        )
        try:
            write_atomic(self.dirs.state_dir / f"{d.name}.xml", format_status(st))
        except OSError:
            log.exception("cannot write the status of %s", d.name)

    async def _reattach_all(self) -> None:
        found = []
        for path in sorted(self.dirs.state_dir.glob("*.xml")):
            try:
                st = parse_status(path.read_text())
                d = self._parse(st.domain_xml)
                # What build_argv gave the live definition at start.
                assign_aliases(d)
                domain_xml.fill_channel_paths(d, str(self._channel_dir(st.id, d.name)))
                for net in d.devices.interfaces:
                    net.target_dev = st.taps.get(net.info.alias or "", net.target_dev)
            except (OSError, ValueError, KeyError, VirError) as e:
                log.error("ignoring unreadable status file %s: %s", path, e)
                continue
            found.append((path, st, d))
            self._next_id = max(self._next_id, st.id + 1)
        await asyncio.gather(*(self._reattach(*item) for item in found))

    async def _reattach(self, path: Path, st: Status, d: DomainDef) -> None:
        uuid = uuidlib.UUID(d.uuid).bytes
        dom = self._by_uuid.get(uuid)
        if dom is None:
            if d.name in self._by_name:
                log.error("status file %s clashes with domain %s", path, d.name)
                return
            dom = Domain(d, persistent=False)
            self._register(dom)
        proc: QemuProcess | None = None
        half_started = st.state == State.PAUSED and st.reason == Paused.STARTING_UP
        if half_started and pid_alive(st.pid) and _is_our_qemu(st.pid, d.uuid):
            _kill_quietly(st.pid)
        elif pid_alive(st.pid) and _is_our_qemu(st.pid, d.uuid):
            try:
                proc = await QemuProcess.attach(
                    d.name,
                    st.pid,
                    st.monitor_path,
                    on_event=lambda name, data: self._on_qmp_event(dom, name, data),
                    on_exit=lambda p: self._on_exit(dom, p),
                )
                status = await proc.monitor.execute("query-status")
            except Exception as e:  # whatever it is, this guest cannot be managed
                log.error("cannot re-attach to %s (pid %d): %s", d.name, st.pid, e)
                if proc is not None:
                    await proc.kill(graceful=False)
                    await proc.monitor.close()
                else:
                    _kill_quietly(st.pid)
                proc = None
        if proc is None:
            for stale in (path, self.dirs.state_dir / f"{d.name}.pid", Path(st.monitor_path)):
                try:
                    os.unlink(stale)
                except FileNotFoundError:
                    pass
            dom.stopped(Shutoff.FAILED if half_started else Shutoff.CRASHED)
            if not dom.persistent:
                self._forget(dom)
            await netif.release_ports(self, st.ports.values())  # what the dead guest held
            return
        await hotplug.refresh_from_qemu(proc, d, st.taps)
        await netif.reattach(self, d, st.ports, st.bridges)
        try:
            live = await self._live_facts(proc, d, st.id)
        except VirError:
            live = LiveState(
                id=st.id, pty_paths=st.pty_paths, vnc_port=st.vnc_port, spice_port=st.spice_port
            )
        dom.process = proc
        dom.started(st.id, d, live)
        if status.get("running"):
            reason = st.reason if st.state == State.RUNNING else Running.UNKNOWN
            dom.set_state(State.RUNNING, reason)
        else:
            reason = st.reason if st.state == State.PAUSED else Paused.UNKNOWN
            dom.set_state(State.PAUSED, reason)
        self._by_id[st.id] = dom
        self._save_status(dom)
        if not proc.alive:  # went away while we were connecting
            self._on_exit(dom, proc)

    # -- reads ---------------------------------------------------------------------

    def get_xml_desc(self, dom: Domain, flags: int = 0) -> str:
        key = flags & (XML_SECURE | XML_INACTIVE | XML_MIGRATABLE)
        xml = dom.xml_cache.get(key)
        if xml is None:
            secure = bool(flags & XML_SECURE)
            if flags & (XML_INACTIVE | XML_MIGRATABLE) or not dom.active:
                d = dom.config if (flags & XML_INACTIVE and dom.config) else dom.definition
                xml = domain_xml.format(d, inactive=True, secure=secure,
                                        migratable=bool(flags & XML_MIGRATABLE))
            else:
                xml = domain_xml.format(dom.definition, inactive=False, secure=secure,
                                        live=dom.live_state)
            dom.xml_cache[key] = xml
        return xml

    def get_info(self, dom: Domain) -> DomainInfo:
        return dom.info()

    def get_state(self, dom: Domain) -> tuple[int, int]:
        return int(dom.state), int(dom.reason)

    # -- helpers -------------------------------------------------------------------

    def _emit(self, dom: Domain, event: Event, detail: int) -> None:
        self.bus.emit("domain-lifecycle", dom, event=int(event), detail=int(detail))

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background QEMU task failed", exc_info=task.exception())


def _matches(dom: Domain, flags: int) -> bool:
    """Whether ``dom`` passes the virConnectListAllDomains filter ``flags``."""

    def group(yes: int, no: int, value: bool) -> bool:
        if flags & (yes | no) in (0, yes | no):
            return True
        return bool(flags & yes) == value

    if not group(LIST_ACTIVE, LIST_INACTIVE, dom.active):
        return False
    if not group(LIST_PERSISTENT, LIST_TRANSIENT, dom.persistent):
        return False
    states = flags & (LIST_RUNNING | LIST_PAUSED | LIST_SHUTOFF | LIST_OTHER)
    if states:
        s = dom.state
        bit = (
            LIST_RUNNING if s == State.RUNNING
            else LIST_PAUSED if s == State.PAUSED
            else LIST_SHUTOFF if s == State.SHUTOFF
            else LIST_OTHER
        )
        if not states & bit:
            return False
    # No managed save, snapshots or checkpoints exist here yet; autostart is
    # the caller's filter (it needs the file system).
    if flags & LIST_MANAGEDSAVE and not flags & LIST_NO_MANAGEDSAVE:
        return False
    if flags & LIST_HAS_SNAPSHOT and not flags & LIST_NO_SNAPSHOT:
        return False
    if flags & LIST_HAS_CHECKPOINT and not flags & LIST_NO_CHECKPOINT:
        return False
    return True


def _is_our_qemu(pid: int, uuid: str) -> bool:
    """The process is a QEMU started for this guest, not a recycled pid."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return b"qemu" in cmdline.split(b"\0", 1)[0] and uuid.encode() in cmdline


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def _unlink(path: str | Path) -> None:
    """Remove ``path`` if it is there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
