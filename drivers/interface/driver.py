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
import logging
import os
import shutil
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path

from daemon.paths import Paths
from drivers.events import EventBus
from drivers.files import write_atomic
from drivers.interface import lifecycle, live, rtnl
from drivers.interface.iface_xml import InterfaceDef, format_interface, parse_interface
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

    def _active(self, name: str, link: rtnl.Link | None) -> bool:
        if link is None:
            return False
        return link.up if name in self._defs else link.operstate == "up"

    def _mac(self, name: str, link: rtnl.Link | None) -> str:
        if link is not None:
            return link.mac
        d = self._defs.get(name)
        return d.mac or "" if d is not None else ""

    def _known(self, name: str, link: rtnl.Link | None) -> None:
        if link is None and name not in self._defs:
            raise _no_iface(f"couldn't find interface named '{name}'")

    def _names(self, snap: rtnl.Snapshot) -> list[str]:
        names = [link.name for link in snap.links.values()
                 if live.listed(snap, link) or link.name in self._defs]
        return names + [name for name in self._defs if name not in snap.links]

    def _def(self, name: str) -> InterfaceDef:
        d = self._defs.get(name)
        if d is None:
            raise _no_iface(f"couldn't find interface named '{name}'")
        return d

    def list_all(self, flags: int = 0) -> list[Handle]:
        snap = rtnl.snapshot()
        handles = []
        for name in self._names(snap):
            active = self._active(name, snap.links.get(name))
            if flags & (LIST_ACTIVE | LIST_INACTIVE) and not (
                    (flags & LIST_ACTIVE and active) or (flags & LIST_INACTIVE and not active)):
                continue
            handles.append(Handle(name, self._mac(name, snap.links.get(name))))
        return handles

    def list_names(self, active: bool) -> list[str]:
        """The old list calls: active ones, or "defined" ones, which udev takes to
        be links whose operstate is exactly "down" (so ``lo`` is in neither)."""
        snap = rtnl.snapshot()
        names = []
        for name in self._names(snap):
            now = self._active(name, snap.links.get(name))
            defined_kind = name in self._defs or snap.links[name].operstate == "down"
            if now if active else (not now and defined_kind):
                names.append(name)
        return names

    def lookup_by_name(self, name: str) -> Handle:
        link = rtnl.get(name)
        self._known(name, link)
        return Handle(name, self._mac(name, link))

    def lookup_by_mac(self, mac: str) -> Handle:
        snap = rtnl.snapshot()
        found = [name for name in self._names(snap)
                 if self._mac(name, snap.links.get(name)) == mac]
        if not found:
            raise _no_iface(f"couldn't find interface with MAC address '{mac}'")
        if len(found) > 1:
            raise _err(ErrorCode.MULTIPLE_INTERFACES, f"multiple matching interfaces found: "
                       f"the MAC address '{mac}' matches multiple interfaces")
        return Handle(found[0], mac)

    def is_active(self, name: str) -> bool:
        link = rtnl.get(name)
        self._known(name, link)
        return self._active(name, link)

    def xml(self, name: str, flags: int = 0) -> str:
        d = self._defs.get(name)
        snap = rtnl.snapshot(addresses=d is not None)
        link = snap.links.get(name)
        self._known(name, link)
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
            write_atomic(self.config_dir / f"{d.name}.xml", format_interface(d))
            self._defs[d.name] = d
        return Handle(d.name, self._mac(d.name, rtnl.get(d.name)))

    def _remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.config_dir / f"{name}.xml").unlink()
        self._defs.pop(name, None)

    async def undefine(self, name: str) -> None:
        async with self._lock:
            self._def(name)
            self._remove(name)

    # -- start and stop ---------------------------------------------------------------

    async def create(self, name: str) -> None:
        async with self._lock:
            d = self._def(name)
            if self._active(name, rtnl.get(name)):
                raise _invalid("interface is already running")
            await lifecycle.start(d)

    async def destroy(self, name: str) -> None:
        async with self._lock:
            d = self._def(name)
            snap = rtnl.snapshot()
            if not self._active(name, snap.links.get(name)):
                raise _invalid("interface is not running")
            await lifecycle.stop(d, snap)

    # -- transactions -----------------------------------------------------------------

    async def change_begin(self) -> None:
        async with self._lock:
            if self.snapshot_dir.exists():
                raise _invalid("failed to begin transaction: there is another transaction "
                               "running")
            snap = rtnl.snapshot()
            tmp = self.snapshot_dir.with_name(".transaction.new")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for path in self.config_dir.glob("*.xml"):
                shutil.copy2(path, tmp / path.name)
            up = [link.name for link in snap.links.values() if link.up]
            write_atomic(tmp / _UP_FILE, "".join(f"{name}\n" for name in up))
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
                snap = rtnl.snapshot()
                if name not in up_before and self._active(name, snap.links.get(name)):
                    await _collect(problems, lifecycle.stop(d, snap))
            for path in self.config_dir.glob("*.xml"):
                path.unlink()
            for path in self.snapshot_dir.glob("*.xml"):
                shutil.copy2(path, self.config_dir / path.name)
            self._defs = saved
            for name in sorted(up_before):
                snap = rtnl.snapshot()
                link = snap.links.get(name)
                if name in saved and not self._active(name, link):
                    await _collect(problems, lifecycle.start(saved[name]))
                elif name not in saved and link is not None and not link.up:
                    await _collect(problems, lifecycle.bring_up(link.index))
            shutil.rmtree(self.snapshot_dir)
            if problems:
                raise _err(ErrorCode.INTERNAL_ERROR, "internal error: failed to rollback "
                           "transaction: " + "; ".join(problems))


async def _collect(problems: list[str], work: Awaitable[None]) -> None:
    try:
        await work
    except VirError as e:
        problems.append(e.message)

