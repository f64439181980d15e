"""``iscsi`` pools: the LUNs of an iSCSI target, logged in to with iscsiadm.

The pool's volumes are the block devices the kernel's initiator makes for the
target's LUNs; nothing is created or deleted here. Every step is libvirt's
iscsiadm call, so that a missing iscsiadm, an unreachable portal or a refused
login read exactly as libvirtd reports them.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import stat

from drivers import offload
from drivers.storage.backend import Backend, Scan
from drivers.storage.fs import run
from drivers.storage.perms import Perms
from drivers.storage.pool_xml import (
    Device,
    PoolSizes,
    PoolSource,
    format_sources,
    parse_source_spec,
)
from drivers.storage.vol_xml import Volume
from protocol.errors import ErrorCode, ErrorDomain, VirError

ISCSIADM = "/usr/bin/iscsiadm"
SCSI_ID = "/lib/udev/scsi_id"
DEFAULT_PORT = 3260
SYSFS = "/sys"
#: Seconds iscsiadm may take to discover, log in or out: its own retries to
#: an unreachable portal take up to two minutes by default.
ISCSIADM_TIMEOUT = 180.0

#: SCSI device types libvirt makes volumes of: disks and CD-ROMs.
_LUN_TYPES = (0, 5)

_SESSION = re.compile(r"^tcp:\s+\[(\S+)\]\s+\S+\s+(\S+).*$")
_TARGET = re.compile(r"^\s*(\S+)\s+(\S+)\s*$")


def _storage_error(code: ErrorCode, prefix: str, message: str) -> VirError:
    return VirError(code, f"{prefix}{message}", ErrorDomain.STORAGE)


def _one_host() -> VirError:
    return _storage_error(ErrorCode.CONFIG_UNSUPPORTED, "unsupported configuration: ",
                          "Expected exactly 1 host for the storage pool")


def portal(source: PoolSource) -> str:
    """``host:port,1`` (brackets around an IPv6 address). Like libvirt, it writes
    the default port into the definition when none was given."""
    if len(source.hosts) != 1:
        raise _one_host()
    host = source.hosts[0]
    if not host.port:
        host.port = DEFAULT_PORT
    name = f"[{host.name}]" if ":" in host.name else host.name
    return f"{name}:{host.port},1"


async def session(target: str, probe: bool) -> str | None:
    """The id of the session logged in to ``target``, if any."""
    _, out, err = await run(ISCSIADM, "--mode", "session", check=False)
    for line in out.splitlines():
        match = _SESSION.match(line)
        if match and match[2] == target:
            return match[1]
    if not probe:
        raise VirError(ErrorCode.INTERNAL_ERROR,
                       f"internal error: cannot find iscsiadm session: {err}")
    return None


async def _iface(initiator: str) -> str | None:
    """The iscsiadm interface whose initiator name is ``initiator``."""
    _, out, _ = await run(ISCSIADM, "--mode", "iface")
    for line in out.splitlines():
        if line.rpartition(",")[2] == initiator and "," in line:
            if " " not in line:
                raise VirError(ErrorCode.INTERNAL_ERROR, "internal error: Missing space when "
                               f"parsing output of '{ISCSIADM}'")
            return line.split(" ", 1)[0]
    return None


async def _iface_for(initiator: str) -> tuple[str, bool]:
    """An interface for ``initiator``, made (libvirt-iface-XXXXXXXX) when there is
    none; the flag says it is new. iscsiadm's status is not trusted here, as in
    libvirt: older versions fail when they succeed."""
    name = await _iface(initiator)
    if name is not None:
        return name, False
    made = f"libvirt-iface-{random.getrandbits(30):08x}"
    await run(ISCSIADM, "--mode", "iface", "--interface", made, "--op", "new", check=False)
    await run(ISCSIADM, "--mode", "iface", "--interface", made, "--op", "update",
              "--name", "iface.initiatorname", "--value", initiator, check=False)
    name = await _iface(initiator)
    if name is None:
        raise VirError(ErrorCode.INTERNAL_ERROR, "internal error: Failed to create iscsi "
                       f"interface for IQN '{initiator}'")
    return name, True


async def scan_targets(where: str, initiator: str | None, persist: bool) -> list[str]:
    """The targets a portal offers (sendtargets discovery)."""
    argv = [ISCSIADM, "--mode", "discovery", "--type", "sendtargets", "--portal", where,
            "--op", "new" if persist else "nonpersistent"]
    if initiator is not None:
        argv += ["--interface", (await _iface_for(initiator))[0]]
    _, out, _ = await run(*argv, timeout=ISCSIADM_TIMEOUT)
    return [m[2] for m in map(_TARGET.match, out.splitlines()) if m]


async def _connection(where: str, initiator: str | None, target: str, action: str) -> None:
    argv = [ISCSIADM, "--mode", "node", "--portal", where, "--targetname", target, action]
    if initiator is not None:
        iface, new = await _iface_for(initiator)
        if new:  # iscsiadm knows the node through a new interface only once discovered
            await scan_targets(where, None, True)
        argv += ["--interface", iface]
    await run(*argv, timeout=ISCSIADM_TIMEOUT)


class IscsiBackend(Backend):
    """``<source><host/><device path='TARGET IQN'/>[<initiator/>][<auth/>]``."""

    type = "iscsi"
    vol_formats = None

    def _check(self) -> tuple[str, str | None]:
        """The target and initiator IQNs, after libvirt's checks of the source."""
        src = self.d.source
        if len(src.hosts) != 1:
            raise _one_host()
        if len(src.devices) != 1:
            raise _storage_error(ErrorCode.INTERNAL_ERROR, "internal error: ",
                                 "missing source device")
        return src.devices[0].path, src.initiator

    @classmethod
    async def find_sources(cls, spec: str | None) -> str:
        if spec is None:
            raise _storage_error(ErrorCode.INVALID_ARG, "invalid argument: ",
                                 "hostname must be specified for iscsi sources")
        source = parse_source_spec(spec, cls.type)
        if len(source.hosts) != 1:
            raise _one_host()
        targets = await scan_targets(portal(source), source.initiator, False)
        found = [PoolSource(hosts=source.hosts, devices=[Device(t)],
                            initiator=source.initiator) for t in targets]
        return format_sources(found, cls.type)

    async def start(self) -> None:
        target, initiator = self._check()
        if await session(target, probe=True) is not None:
            return
        where = portal(self.d.source)
        status, _, _ = await run(ISCSIADM, "--mode", "node", "--portal", where,
                                 "--targetname", target, "--op", "new", check=False)
        if status != 0:
            raise VirError(ErrorCode.INTERNAL_ERROR,
                           f"internal error: {ISCSIADM} failed new mode for target '{target}' "
                           f"with status '{status}'")
        await self._set_auth(where, target)
        await _connection(where, initiator, target, "--login")

    async def _set_auth(self, where: str, target: str) -> None:
        auth = self.d.source.auth
        if auth is None or auth.type == "none":
            return
        if auth.type != "chap":
            raise _storage_error(ErrorCode.XML_ERROR, "XML error: ",
                                 "iscsi pool only supports 'chap' auth type")
        # No secret driver here yet: the secret cannot be found, as libvirtd says
        # when its secret driver has none of that usage or uuid.
        what = (f"uuid '{auth.secret_uuid}'" if auth.secret_uuid is not None
                else f"usage '{auth.secret_usage}'")
        raise VirError(ErrorCode.NO_SECRET, f"Secret not found: no secret with matching {what}",
                       ErrorDomain.SECRET)

    async def stop(self) -> None:
        target, initiator = self.d.source.devices[0].path, self.d.source.initiator
        if await session(target, probe=True) is None:
            return
        await _connection(portal(self.d.source), initiator, target, "--logout")

    async def is_active(self) -> bool:
        try:
            target, _ = self._check()
            return await session(target, probe=True) is not None
        except VirError:
            return False

    async def refresh(self) -> Scan:
        """Rescan the session and make a volume of each disk LUN."""
        target, _ = self._check()
        sid = await session(target, probe=False)
        assert sid is not None
        await run(ISCSIADM, "--mode", "session", "-r", sid, "-R")
        scan = Scan(PoolSizes(), Perms())
        for name, path in self._luns(_host_number(sid)):
            vol = await _block_volume(name, path)
            scan.volumes[vol.name] = vol
            scan.sizes.capacity += vol.capacity
            scan.sizes.allocation += vol.allocation or 0
        return scan

    def _luns(self, host: int) -> list[tuple[str, str]]:
        """Name and path of the disk and CD-ROM LUNs of a SCSI host."""
        base = f"{SYSFS}/bus/scsi/devices"
        found = []
        for entry in sorted(os.listdir(base)):
            parts = entry.split(":")
            if len(parts) != 4 or parts[0] != str(host) or not all(p.isdigit() for p in parts):
                continue
            try:
                with open(f"{base}/{entry}/type") as f:
                    kind = int(f.read().strip())
                block = sorted(os.listdir(f"{base}/{entry}/block"))
            except (OSError, ValueError):
                continue
            if kind not in _LUN_TYPES or not block:
                continue
            path = self._stable_path(f"/dev/{block[0]}")
            if path is not None:
                found.append(("unit:" + ":".join(parts[1:]), path))
        return found

    def _stable_path(self, devpath: str) -> str | None:
        """The link in the target directory (/dev/disk/by-path) to the device;
        the device itself for a target of /dev, None when no link names it."""
        target = self.d.target_path.rstrip("/") or "/"
        if target == "/dev":
            return devpath
        if not target.startswith("/dev/"):
            raise _storage_error(ErrorCode.INVALID_ARG, "invalid argument: ",
                                 f"unable to use target path '{self.d.target_path}' for dev "
                                 f"'{os.path.basename(devpath)}'")
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(target)):
                link = os.path.join(target, name)
                if os.path.realpath(link) == os.path.realpath(devpath):
                    return link
        return None

    async def refresh_vol(self, vol: Volume) -> Volume:
        return await _block_volume(vol.name, vol.path, vol.uuid)

    def vol_path(self, name: str) -> str:
        return os.path.join(self.d.target_path, name)


def _host_number(sid: str) -> int:
    """The SCSI host of a session, from its ``targetH:B:T`` entry in sysfs."""
    path = f"{SYSFS}/class/iscsi_session/session{sid}/device"
    try:
        names = sorted(os.listdir(path))
    except OSError as e:
        raise VirError(ErrorCode.SYSTEM_ERROR,
                       f"cannot open directory '{path}': {os.strerror(e.errno or 0)}",
                       ErrorDomain.STORAGE) from None
    for name in names:
        if name.startswith("target"):
            match = re.match(r"target(\d+):", name)
            if match is None:
                raise _storage_error(ErrorCode.INTERNAL_ERROR, "internal error: ",
                                     f"Failed to parse target '{name}'")
            return int(match[1])
    raise _storage_error(ErrorCode.INTERNAL_ERROR, "internal error: ",
                         f"Failed to get host number for iSCSI session with path '{path}'")


async def _block_volume(name: str, path: str, key: str | None = None) -> Volume:
    """A LUN's block device as a volume: its size, owner and mode; its SCSI serial
    (scsi_id) as the key, the path when it has none. The device is opened on a
    lane: a LUN whose session is gone can block an open for minutes."""
    st, size = await offload.run(os.path.dirname(path), _stat_lun, path)
    vol = Volume(name, capacity=size, allocation=size, type="block", path=path, physical=size)
    vol.perms = Perms(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    if key is None:
        status, out, _ = await run(SCSI_ID, "--replace-whitespace", "--whitelisted",
                                   "--device", path, check=False)
        key = out.strip() if status == 0 and out.strip() else None
    vol.uuid = key
    return vol


def _stat_lun(path: str) -> tuple[os.stat_result, int]:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        return st, os.lseek(fd, 0, os.SEEK_END) if stat.S_ISBLK(st.st_mode) else st.st_size
    finally:
        os.close(fd)
