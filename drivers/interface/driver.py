"""The host interface driver (virInterface*): the links of this network namespace
as libvirtd 9.0's udev backend shows them, plus what its netcf backend could do
and udev cannot: definitions kept as ``etc/libvirt/interface/NAME.xml``, started
and stopped through netlink, and change transactions (a snapshot of that
directory and of which links were up, put back on rollback).

Visible interfaces are the live links udev would list plus every definition. A
link with a definition is active when it exists and is up (netcf's rule); any
other link when its operstate is "up" (udev's rule).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path

from daemon.paths import Paths
from drivers.events import EventBus
from drivers.interface import live, netlink
from drivers.interface.iface_xml import (
    BOND_MODES,
    InterfaceDef,
    format_interface,
    parse_interface,
)
from drivers.storage.schema import validate
from protocol.errors import ErrorCode, ErrorDomain, VirError

log = logging.getLogger(__name__)

# virConnectListAllInterfacesFlags, virInterfaceXMLFlags, virInterfaceDefineFlags
LIST_INACTIVE, LIST_ACTIVE = 1 << 0, 1 << 1
XML_INACTIVE = 1 << 0
DEFINE_VALIDATE = 1 << 0

_UP_FILE = "up"  # in a transaction snapshot: the links that were up at its start


@dataclass(frozen=True)
class Handle:
    """What a client holds of an interface: its name and MAC ("" when unknown)."""

    name: str
    mac: str


def _err(code: ErrorCode, message: str) -> VirError:
    return VirError(code, message, ErrorDomain.INTERFACE)


def _no_iface(message: str) -> VirError:
    return _err(ErrorCode.NO_INTERFACE, f"Interface not found: {message}")


def _invalid(message: str) -> VirError:
    return _err(ErrorCode.OPERATION_INVALID, f"Requested operation is not valid: {message}")


class _Failed(Exception):
    """One step of starting or stopping failed; the text says which and why."""


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.new")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class InterfaceDriver:
    def __init__(self, paths: Paths, bus: EventBus) -> None:
        dirs = paths.driver("interface")
        self.config_dir = dirs.config_dir
        self.snapshot_dir = dirs.lib_dir / "transaction"
        self._defs: dict[str, InterfaceDef] = {}
        self._lock = asyncio.Lock()

    async def startup(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self._defs = self._load(self.config_dir)

    async def shutdown(self) -> None:
        """Interfaces stay as they are; definitions are already on disk."""

    @staticmethod
    def _load(directory: Path) -> dict[str, InterfaceDef]:
        defs = {}
        for path in sorted(directory.glob("*.xml")):
            try:
                d = parse_interface(path.read_text())
            except (OSError, VirError) as e:
                log.warning("ignoring interface config %s: %s", path, e)
                continue
            if d.name is not None:
                defs[d.name] = d
        return defs

    # -- views ------------------------------------------------------------------------

    def _active(self, snap: netlink.Snapshot, name: str) -> bool:
        link = snap.links.get(name)
        if link is None:
            return False
        return link.up if name in self._defs else link.operstate == "up"

    def _mac(self, snap: netlink.Snapshot, name: str) -> str:
        link = snap.links.get(name)
        if link is not None:
            return link.mac
        d = self._defs.get(name)
        return d.mac or "" if d is not None else ""

    def _names(self, snap: netlink.Snapshot) -> list[str]:
        names = [link.name for link in snap.links.values()
                 if live.listed(snap, link) or link.name in self._defs]
        return names + [name for name in self._defs if name not in snap.links]

    def _known(self, snap: netlink.Snapshot, name: str) -> None:
        if name not in snap.links and name not in self._defs:
            raise _no_iface(f"couldn't find interface named '{name}'")

    def _def(self, name: str) -> InterfaceDef:
        d = self._defs.get(name)
        if d is None:
            raise _no_iface(f"couldn't find interface named '{name}'")
        return d

    async def list_all(self, flags: int = 0) -> list[Handle]:
        snap = await netlink.snapshot()
        handles = []
        for name in self._names(snap):
            active = self._active(snap, name)
            if flags & (LIST_ACTIVE | LIST_INACTIVE) and not (
                    (flags & LIST_ACTIVE and active) or (flags & LIST_INACTIVE and not active)):
                continue
            handles.append(Handle(name, self._mac(snap, name)))
        return handles

    async def list_names(self, active: bool) -> list[str]:
        """The old list calls: active ones, or "defined" ones, which udev takes to
        be links whose operstate is exactly "down" (so ``lo`` is in neither)."""
        snap = await netlink.snapshot()
        names = []
        for name in self._names(snap):
            now = self._active(snap, name)
            defined_kind = name in self._defs or snap.links[name].operstate == "down"
            if now if active else (not now and defined_kind):
                names.append(name)
        return names

    async def lookup_by_name(self, name: str) -> Handle:
        snap = await netlink.snapshot()
        self._known(snap, name)
        return Handle(name, self._mac(snap, name))

    async def lookup_by_mac(self, mac: str) -> Handle:
        snap = await netlink.snapshot()
        found = [name for name in self._names(snap) if self._mac(snap, name) == mac]
        if not found:
            raise _no_iface(f"couldn't find interface with MAC address '{mac}'")
        if len(found) > 1:
            raise _err(ErrorCode.MULTIPLE_INTERFACES, f"multiple matching interfaces found: "
                       f"the MAC address '{mac}' matches multiple interfaces")
        return Handle(found[0], mac)

    async def is_active(self, name: str) -> bool:
        snap = await netlink.snapshot()
        self._known(snap, name)
        return self._active(snap, name)

    async def xml(self, name: str, flags: int = 0) -> str:
        snap = await netlink.snapshot()
        self._known(snap, name)
        d = self._defs.get(name)
        link = snap.links.get(name)
        if link is None or (d is not None and (flags & XML_INACTIVE or not link.up)):
            assert d is not None
            return format_interface(d)
        return format_interface(live.describe(snap, link, addresses=d is not None))

    # -- definitions ------------------------------------------------------------------

    async def define_xml(self, xml: str, flags: int = 0) -> Handle:
        if flags & DEFINE_VALIDATE:
            validate(xml, "interface")
        d = parse_interface(xml)
        assert d.name is not None
        if "/" in d.name or d.name in (".", ".."):
            raise _err(ErrorCode.XML_ERROR,
                       f"XML error: interface name '{d.name}' is not a valid device name")
        async with self._lock:
            # like netcf: a definition that takes in other interfaces replaces theirs
            for member in d.members:
                if member.name != d.name and member.name in self._defs:
                    self._remove(member.name)
            _write_atomic(self.config_dir / f"{d.name}.xml", format_interface(d))
            self._defs[d.name] = d
        snap = await netlink.snapshot()
        return Handle(d.name, self._mac(snap, d.name))

    def _remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.config_dir / f"{name}.xml").unlink()
        self._defs.pop(name, None)

    async def undefine(self, name: str) -> None:
        async with self._lock:
            self._def(name)
            self._remove(name)

    # -- start and stop ---------------------------------------------------------------

    async def create(self, name: str, flags: int = 0) -> None:
        async with self._lock:
            d = self._def(name)
            snap = await netlink.snapshot()
            if self._active(snap, name):
                raise _invalid("interface is already running")
            await self._start(d)

    async def destroy(self, name: str, flags: int = 0) -> None:
        async with self._lock:
            d = self._def(name)
            snap = await netlink.snapshot()
            if not self._active(snap, name):
                raise _invalid("interface is not running")
            await self._stop(d, snap)

    async def _start(self, d: InterfaceDef) -> None:
        """Make the device (bridge, bond, vlan) if it is virtual, take in its
        members, set MTU and static addresses, bring it up."""
        for proto in d.protocols:
            if proto.dhcp:
                raise _err(ErrorCode.CONFIG_UNSUPPORTED,
                           f"unsupported configuration: failed to create (start) interface "
                           f"{d.name}: DHCP ({proto.family}) on host interfaces is not "
                           f"supported, use static addresses")
        created: list[int] = []
        try:
            async with netlink.Session() as nl:
                try:
                    index = await self._device(nl, d, created)
                    for member in d.members:
                        await self._enslave(nl, member, index, d, created)
                    if d.mtu:
                        await _step(f"cannot set MTU of {d.name}", nl.set(index, mtu=d.mtu))
                    for proto in d.protocols:
                        for ip in proto.ips:
                            await _step(f"cannot add address {ip.address} to {d.name}",
                                        nl.add_addr(index, ip.address, ip.prefix))
                    await _step(f"cannot bring up {d.name}", nl.set(index, state="up"))
                    for proto in d.protocols:
                        if proto.gateway:
                            await _step(f"cannot add route via {proto.gateway}",
                                        nl.default_route(index, proto.gateway))
                except (_Failed, netlink.NetlinkError):
                    for made in reversed(created):
                        with contextlib.suppress(netlink.NetlinkError):
                            await nl.delete(made)
                    raise
        except (_Failed, netlink.NetlinkError) as e:
            raise _err(ErrorCode.INTERNAL_ERROR, f"internal error: failed to create (start) "
                       f"interface {d.name}: {_detail(e)}") from None

    async def _device(self, nl: netlink.Session, d: InterfaceDef, created: list[int]) -> int:
        assert d.name is not None
        index = await nl.index(d.name)
        if d.type == "ethernet" or (index is not None and d.type != "bridge"):
            if index is None:
                raise _Failed(f"device {d.name} does not exist")
            return index
        if d.type == "bridge":
            attrs: dict[str, int] = {}
            if d.delay is not None:
                try:
                    attrs["br_forward_delay"] = round(float(d.delay) * 100)
                except ValueError:
                    raise _Failed(f"invalid bridge forward delay '{d.delay}'") from None
            if d.stp is not None:
                attrs["br_stp_state"] = int(d.stp)
            if index is not None:
                if attrs:
                    await _step(f"cannot configure bridge {d.name}",
                                nl.set(index, kind="bridge", **attrs))
                return index
            return await self._add(nl, d.name, "bridge", created, **attrs)
        if d.type == "bond":
            attrs = {}
            bond = d.bond
            if bond is not None and bond.mode:
                attrs["bond_mode"] = BOND_MODES.index(bond.mode)
            if bond is not None and bond.monitor == "mii":
                attrs.update(bond_miimon=bond.freq, bond_updelay=bond.updelay,
                             bond_downdelay=bond.downdelay)
            elif bond is not None and bond.monitor == "arp":
                attrs["bond_arp_interval"] = bond.interval
            return await self._add(nl, d.name, "bond", created, **attrs)
        parent = await nl.index(d.vlan_dev or "")
        if parent is None:
            raise _Failed(f"device {d.vlan_dev} does not exist")
        try:
            vid = int(d.vlan_tag or "")
        except ValueError:
            raise _Failed(f"invalid vlan tag '{d.vlan_tag}'") from None
        return await self._add(nl, d.name, "vlan", created, link=parent, vlan_id=vid)

    @staticmethod
    async def _add(nl: netlink.Session, name: str, kind: str, created: list[int],
                   **attrs: int) -> int:
        try:
            index = await nl.add(name, kind, **attrs)
        except netlink.NetlinkError as e:
            detail = netlink.describe(e)
            if e.code == errno.EOPNOTSUPP:
                detail += f" (this kernel has no {kind} support)"
            raise _Failed(f"cannot create {kind} device {name}: {detail}") from None
        created.append(index)
        return index

    async def _enslave(self, nl: netlink.Session, member: InterfaceDef, master: int,
                       top: InterfaceDef, created: list[int]) -> None:
        index = await self._device(nl, member, created)
        for sub in member.members:  # a bond inside a bridge
            await self._enslave(nl, sub, index, top, created)
        if top.type == "bond":  # the kernel only takes bond slaves that are down
            await _step(f"cannot bring down {member.name}", nl.set(index, state="down"))
        if top.mtu:
            await _step(f"cannot set MTU of {member.name}", nl.set(index, mtu=top.mtu))
        await _step(f"cannot attach {member.name} to {top.name}", nl.set(index, master=master))
        await _step(f"cannot bring up {member.name}", nl.set(index, state="up"))

    async def _stop(self, d: InterfaceDef, snap: netlink.Snapshot) -> None:
        """ifdown: ports released and brought down, virtual devices deleted, an
        ethernet device's configured addresses removed and the link brought down."""
        link = snap.links[d.name or ""]
        try:
            async with netlink.Session() as nl:
                if d.type in ("bridge", "bond"):
                    for port in snap.ports(link):
                        await _step(f"cannot detach {port.name}", nl.set(port.index, master=0))
                        await _step(f"cannot bring down {port.name}",
                                    nl.set(port.index, state="down"))
                        if port.kind in ("bond", "vlan") and any(
                                m.name == port.name for m in d.members):
                            await _step(f"cannot delete {port.name}", nl.delete(port.index))
                if d.type != "ethernet":
                    await _step(f"cannot delete {d.name}", nl.delete(link.index))
                    return
                for proto in d.protocols:
                    for ip in proto.ips:
                        await _step(f"cannot remove address {ip.address}",
                                    nl.del_addr(link.index, ip.address, ip.prefix))
                await _step(f"cannot bring down {d.name}", nl.set(link.index, state="down"))
        except (_Failed, netlink.NetlinkError) as e:
            raise _err(ErrorCode.INTERNAL_ERROR, f"internal error: failed to destroy (stop) "
                       f"interface {d.name}: {_detail(e)}") from None

    # -- transactions -----------------------------------------------------------------

    async def change_begin(self) -> None:
        async with self._lock:
            if self.snapshot_dir.exists():
                raise _invalid("failed to begin transaction: there is another transaction "
                               "running")
            snap = await netlink.snapshot()
            tmp = self.snapshot_dir.with_name(".transaction.new")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for path in self.config_dir.glob("*.xml"):
                shutil.copy2(path, tmp / path.name)
            up = [link.name for link in snap.links.values() if link.up]
            _write_atomic(tmp / _UP_FILE, "".join(f"{name}\n" for name in up))
            os.replace(tmp, self.snapshot_dir)

    async def change_commit(self) -> None:
        async with self._lock:
            if not self.snapshot_dir.exists():
                raise _invalid("failed to commit transaction: no transaction running, "
                               "nothing to be committed")
            shutil.rmtree(self.snapshot_dir)

    async def change_rollback(self) -> None:
        """Put the definitions back as they were at the start, stop what was
        started since, start again what was up then."""
        async with self._lock:
            if not self.snapshot_dir.exists():
                raise _invalid("failed to rollback transaction: no transaction running, "
                               "nothing to rollback")
            up_before = set((self.snapshot_dir / _UP_FILE).read_text().split())
            saved = self._load(self.snapshot_dir)
            problems: list[str] = []
            for name, d in list(self._defs.items()):
                snap = await netlink.snapshot()
                if name not in up_before and self._active(snap, name):
                    await _collect(problems, self._stop(d, snap))
            for path in self.config_dir.glob("*.xml"):
                path.unlink()
            for path in self.snapshot_dir.glob("*.xml"):
                shutil.copy2(path, self.config_dir / path.name)
            self._defs = saved
            for name in sorted(up_before):
                snap = await netlink.snapshot()
                link = snap.links.get(name)
                if name in saved and not self._active(snap, name):
                    await _collect(problems, self._start(saved[name]))
                elif name not in saved and link is not None and not link.up:
                    await _collect(problems, _bring_up(link.index))
            shutil.rmtree(self.snapshot_dir)
            if problems:
                raise _err(ErrorCode.INTERNAL_ERROR, "internal error: failed to rollback "
                           "transaction: " + "; ".join(problems))


async def _step(what: str, change: Awaitable[object]) -> None:
    """Await one netlink change; its failure becomes a _Failed naming the step."""
    try:
        await change
    except netlink.NetlinkError as e:
        raise _Failed(f"{what}: {netlink.describe(e)}") from None


def _detail(e: Exception) -> str:
    return netlink.describe(e) if isinstance(e, netlink.NetlinkError) else str(e)


async def _collect(problems: list[str], work: Awaitable[None]) -> None:
    try:
        await work
    except VirError as e:
        problems.append(e.message)


async def _bring_up(index: int) -> None:
    try:
        async with netlink.Session() as nl:
            await nl.set(index, state="up")
    except netlink.NetlinkError as e:
        raise _err(ErrorCode.INTERNAL_ERROR, f"internal error: {netlink.describe(e)}") from None
