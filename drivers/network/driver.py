"""The network driver: virtual networks, their configs on disk, their ports, their events.

Definitions live where libvirtd keeps them, ``etc/libvirt/qemu/networks/NAME.xml``
with autostart links in ``autostart/``, so a host's existing networks are ours
too. A running network leaves its live XML in ``run/libvirt/network/NAME.xml``
and its ports in ``run/libvirt/network/NAME/ports/``: a restarted daemon adopts
the bridge and dnsmasq it finds (``runtime.reattach``) instead of building them
again, and guests find their ports where they left them.

What a network is on the host (bridge, dnsmasq, firewall) is ``runtime``'s job;
this module decides when, and keeps the books.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ipaddress
import logging
import os
import shutil
import uuid as uuidlib
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

from daemon.paths import Paths
from drivers.events import EventBus
from drivers.files import write_atomic
from drivers.network import runtime, update
from drivers.network.leases import Lease
from drivers.network.network_xml import (
    NAT_PORT_RANGE,
    DhcpRange,
    ForwardDef,
    IPDef,
    NetworkDef,
    fill_defaults,
    format_network,
    network_from_element,
    parse_network,
    parse_xml_doc,
)
from drivers.network.port_xml import NetworkPort, parse_port
from drivers.storage.schema import validate
from protocol.errors import ErrorCode, ErrorDomain, VirError

log = logging.getLogger(__name__)

# virNetworkEventLifecycleType
EVENT_DEFINED, EVENT_UNDEFINED, EVENT_STARTED, EVENT_STOPPED = 0, 1, 2, 3

# virConnectListAllNetworksFlags
LIST_INACTIVE, LIST_ACTIVE = 1 << 0, 1 << 1
LIST_PERSISTENT, LIST_TRANSIENT = 1 << 2, 1 << 3
LIST_AUTOSTART, LIST_NO_AUTOSTART = 1 << 4, 1 << 5

VALIDATE = 1 << 0  # VIR_NETWORK_DEFINE_VALIDATE, VIR_NETWORK_CREATE_VALIDATE
PORT_CREATE_RECLAIM, PORT_CREATE_VALIDATE = 1 << 0, 1 << 1

# virNetworkUpdateFlags
UPDATE_LIVE, UPDATE_CONFIG = 1 << 0, 1 << 1

DEFAULT_NETWORK = "default"

T = TypeVar("T")


def _invalid(message: str) -> VirError:
    return VirError(ErrorCode.OPERATION_INVALID, f"Requested operation is not valid: {message}",
                    ErrorDomain.NETWORK)


def _failed(message: str) -> VirError:
    return VirError(ErrorCode.OPERATION_FAILED, f"operation failed: {message}",
                    ErrorDomain.NETWORK)


def _no_network(message: str) -> VirError:
    return VirError(ErrorCode.NO_NETWORK, f"Network not found: {message}", ErrorDomain.NETWORK)


def _no_port(port_uuid: bytes) -> VirError:
    return VirError(ErrorCode.NO_NETWORK_PORT, "network port not found: Network port with UUID "
                    f"{uuidlib.UUID(bytes=port_uuid)} does not exist", ErrorDomain.NETWORK)


def _netdev_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


class Network:
    """``live`` is what runs (or would run next); ``config`` the persistent
    definition, which changes alone while the network runs."""

    def __init__(self, d: NetworkDef, persistent: bool) -> None:
        self.live = d
        self.config: NetworkDef | None = d if persistent else None
        self.active = False
        self.autostart = False
        self.ports: dict[bytes, NetworkPort] = {}

    @property
    def name(self) -> str:
        return self.live.name

    @property
    def uuid(self) -> bytes:
        return self.live.uuid

    @property
    def persistent(self) -> bool:
        return self.config is not None

    def xml(self, inactive: bool = False) -> str:
        if inactive:
            return format_network(self.config or self.live)
        return format_network(self.live, len(self.ports) if self.active else 0)


class NetworkDriver:
    def __init__(self, paths: Paths, bus: EventBus) -> None:
        self.paths = paths
        self.bus = bus
        self.dirs = paths.driver("network")
        self.config_dir = paths.config_dir / "qemu" / "networks"
        self.autostart_dir = self.config_dir / "autostart"
        self.state_dir = self.dirs.state_dir
        self._networks: dict[str, Network] = {}
        self._lock = asyncio.Lock()  # one change of the host's networks at a time

    # -- start and stop ------------------------------------------------------------

    async def startup(self) -> None:
        """Load definitions, adopt what still runs, make ``default`` on the very first
        start (as libvirt's package installs it) and start what autostarts."""
        first = not self.config_dir.exists()
        for d in (self.config_dir, self.autostart_dir, self.state_dir):
            d.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.config_dir.glob("*.xml")):
            self._load_config(path)
        for path in sorted(self.state_dir.glob("*.xml")):
            await self._load_state(path)
        if first and DEFAULT_NETWORK not in self._networks:
            self._make_default()
        for net in list(self._networks.values()):
            if net.autostart and not net.active:
                try:
                    await self.create(net)
                except Exception as e:  # one broken network must not keep the daemon down
                    log.warning("cannot autostart network %s: %s", net.name, e)

    def _load_config(self, path: Path) -> None:
        try:
            d = parse_network(path.read_text())
        except (OSError, VirError) as e:
            log.warning("ignoring network config %s: %s", path, e)
            return
        net = Network(d, persistent=True)
        net.autostart = (self.autostart_dir / path.name).exists()
        self._networks[d.name] = net
        if d.virtual and (d.mac is None or not d.bridge):  # written by hand: fill in, as libvirtd
            try:
                fill_defaults(d, self._bridges(skip=d.name), _netdev_exists)
                self._save(net)
            except (OSError, VirError) as e:
                log.warning("network config %s: %s", path, e)

    async def _load_state(self, path: Path) -> None:
        """A network that ran before this daemon started: adopt it if it still runs."""
        try:
            root = parse_xml_doc(path.read_text(), str(path))
            inner = root.find("network") if root.tag == "networkstatus" else root
            if inner is None:
                raise VirError(ErrorCode.XML_ERROR, "no <network> in the status file")
            d = network_from_element(inner)
        except (OSError, VirError) as e:
            log.warning("ignoring network status %s: %s", path, e)
            path.unlink(missing_ok=True)
            return
        net = self._networks.get(d.name)
        if net is None:
            net = self._networks[d.name] = Network(d, persistent=False)
        net.live = d
        try:
            adopted = await _in_task(runtime.reattach(d, self.dirs))
        except Exception as e:
            log.warning("cannot re-attach network %s: %s", d.name, e)
            adopted = False
        if adopted:
            net.active = True
            net.ports = self._load_ports(d.name)
            return
        log.info("network %s no longer runs", d.name)
        with contextlib.suppress(Exception):
            await _in_task(runtime.stop(d, self.dirs))
        self._forget_state(net)

    def _load_ports(self, name: str) -> dict[bytes, NetworkPort]:
        ports: dict[bytes, NetworkPort] = {}
        for path in sorted(self._ports_dir(name).glob("*.xml")):
            try:
                port = parse_port(path.read_text(), name)
            except (OSError, VirError) as e:
                log.warning("ignoring network port %s: %s", path, e)
                continue
            ports[port.uuid] = port
        return ports

    def _make_default(self) -> None:
        """libvirt's ``default`` NAT network, on a subnet and bridge the host does not
        use yet (as Debian's package picks them).

        It autostarts as libvirtd's does for the system daemon (root ``/``) and for
        a daemon in a network namespace of its own; a daemon under another root on
        the host's network (benchmarks, ``make run``, tests) only defines it, so it
        changes the host's network only when asked to (``virsh net-start default``)."""
        subnet = _free_subnet()
        base = subnet.network_address
        d = NetworkDef(DEFAULT_NETWORK, uuidlib.uuid4().bytes, ForwardDef("nat"),
                       bridge=None if _netdev_exists("virbr0") else "virbr0")
        d.ips = [IPDef(str(base + 1), netmask="255.255.255.0", has_dhcp=True,
                       ranges=[DhcpRange(str(base + 2), str(base + 254))])]
        fill_defaults(d, self._bridges(), _netdev_exists)
        net = Network(d, persistent=True)
        self._networks[d.name] = net
        self._save(net)
        self.set_autostart(net, self.paths.root == Path("/") or _own_netns())

    async def shutdown(self) -> None:
        """Networks keep running: their state files stay for the next start."""

    # -- lookups ------------------------------------------------------------------------

    def lookup_by_name(self, name: str) -> Network:
        net = self._networks.get(name)
        if net is None:
            raise _no_network(f"no network with matching name '{name}'")
        return net

    def lookup_by_uuid(self, uuid: bytes, name: str | None = None) -> Network:
        for net in self._networks.values():
            if net.uuid == uuid:
                return net
        suffix = f" ({name})" if name is not None else ""
        raise _no_network(f"no network with matching uuid '{uuidlib.UUID(bytes=uuid)}'{suffix}")

    def list_networks(self, flags: int = 0) -> list[Network]:
        nets = list(self._networks.values())
        for on, off, attr in ((LIST_ACTIVE, LIST_INACTIVE, "active"),
                              (LIST_PERSISTENT, LIST_TRANSIENT, "persistent"),
                              (LIST_AUTOSTART, LIST_NO_AUTOSTART, "autostart")):
            if flags & (on | off) not in (0, on | off):
                nets = [n for n in nets if getattr(n, attr) == bool(flags & on)]
        return nets

    def _bridges(self, skip: str | None = None) -> set[str]:
        """Bridge names the networks (other than ``skip``) claim, running or not."""
        taken = set()
        for net in self._networks.values():
            if net.name == skip:
                continue
            for d in (net.live, net.config):
                if d is not None and d.bridge:
                    taken.add(d.bridge)
        return taken

    # -- definitions ---------------------------------------------------------------------

    def _parse(self, xml: str, flags: int) -> NetworkDef:
        if flags & VALIDATE:
            _validate(xml, "network")
        d = parse_network(xml)
        fill_defaults(d, self._bridges(skip=d.name), _netdev_exists)
        return d

    def _check_duplicate(self, d: NetworkDef, check_active: bool) -> Network | None:
        """The network ``d`` stands for again, if any; libvirt's errors for clashes."""
        for net in self._networks.values():
            if net.uuid == d.uuid:
                if net.name != d.name:
                    raise _failed(f"network '{net.name}' is already defined with uuid "
                                  f"{uuidlib.UUID(bytes=net.uuid)}")
                if check_active and net.active:
                    raise _invalid(f"network is already active as '{net.name}'")
                return net
        same = self._networks.get(d.name)
        if same is not None:
            raise _failed(f"network '{same.name}' already exists with uuid "
                          f"{uuidlib.UUID(bytes=same.uuid)}")
        return None

    def _save(self, net: Network) -> None:
        assert net.config is not None
        write_atomic(self.config_dir / f"{net.name}.xml", format_network(net.config))

    def define_xml(self, xml: str, flags: int = 0) -> Network:
        d = self._parse(xml, flags)
        net = self._check_duplicate(d, check_active=False)
        if net is None:
            net = self._networks[d.name] = Network(d, persistent=True)
        else:
            net.config = d
            if not net.active:
                net.live = d
        self._save(net)
        self.bus.emit("network-lifecycle", net, event=EVENT_DEFINED, detail=0)
        return net

    async def create_xml(self, xml: str, flags: int = 0) -> Network:
        async with self._lock:
            return await self._create_xml(xml, flags)

    async def _create_xml(self, xml: str, flags: int) -> Network:
        d = self._parse(xml, flags)
        net = self._check_duplicate(d, check_active=True)
        if net is None:
            net = Network(d, persistent=False)
        await self._start(net, d)
        self._networks[d.name] = net
        self.bus.emit("network-lifecycle", net, event=EVENT_STARTED, detail=0)
        return net

    def undefine(self, net: Network) -> None:
        """A running network stays up, transient; an inactive one is gone."""
        if not net.persistent:
            raise _invalid("network is not persistent")  # cannot happen through virsh
        self.set_autostart(net, False)
        with contextlib.suppress(FileNotFoundError):
            (self.config_dir / f"{net.name}.xml").unlink()
        net.config = None
        if not net.active:
            del self._networks[net.name]
        self.bus.emit("network-lifecycle", net, event=EVENT_UNDEFINED, detail=0)

    def set_autostart(self, net: Network, autostart: bool) -> None:
        if not net.persistent:
            raise _invalid("cannot set autostart for transient network")
        link = self.autostart_dir / f"{net.name}.xml"
        if autostart:
            if not link.is_symlink():
                link.symlink_to(self.config_dir / f"{net.name}.xml")
        else:
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
        net.autostart = autostart

    # -- life cycle ----------------------------------------------------------------------

    async def create(self, net: Network) -> None:
        async with self._lock:
            await self._create(net)

    async def _create(self, net: Network) -> None:
        if net.active:
            raise _invalid("network is already active")
        assert net.config is not None  # an inactive network is persistent
        await self._start(net, copy.deepcopy(net.config))
        self.bus.emit("network-lifecycle", net, event=EVENT_STARTED, detail=0)

    async def _start(self, net: Network, d: NetworkDef) -> None:
        if d.forward.mode == "nat" and d.forward.nat_port is None:
            d.forward.nat_port = NAT_PORT_RANGE  # libvirtd shows the range it masquerades to
        await _in_task(runtime.start(d, self.dirs))
        net.live, net.active, net.ports = d, True, {}
        try:
            self._save_state(net)
        except OSError:
            with contextlib.suppress(VirError):
                await _in_task(runtime.stop(d, self.dirs))
            net.active = False
            raise

    def _save_state(self, net: Network) -> None:
        body = "\n".join("  " + line for line in format_network(net.live).splitlines())
        write_atomic(self.state_dir / f"{net.name}.xml",
                     f"<networkstatus>\n{body}\n</networkstatus>\n")

    def _ports_dir(self, name: str) -> Path:
        return self.state_dir / name / "ports"

    async def destroy(self, net: Network) -> None:
        """Ports go with the network, as in libvirtd; guests keep their (dead) taps."""
        async with self._lock:
            if not net.active:
                raise _invalid(f"network '{net.name}' is not active")
            await _in_task(runtime.stop(net.live, self.dirs))
            self._forget_state(net)
        self.bus.emit("network-lifecycle", net, event=EVENT_STOPPED, detail=0)

    def _forget_state(self, net: Network) -> None:
        net.active = False
        net.ports = {}
        (self.state_dir / f"{net.name}.xml").unlink(missing_ok=True)
        shutil.rmtree(self._ports_dir(net.name), ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.state_dir / net.name).rmdir()
        if net.config is None:
            self._networks.pop(net.name, None)
        else:
            net.live = net.config

    # -- net-update ------------------------------------------------------------------------

    async def update(self, net: Network, command: int, section: int, parent_index: int,
                     xml: str, flags: int = 0) -> None:
        """One change to the live and/or persistent definition, as ``flags`` say
        (neither: the live one if the network runs, else the persistent one)."""
        async with self._lock:
            await self._update(net, command, section, parent_index, xml, flags)

    async def _update(self, net: Network, command: int, section: int, parent_index: int,
                      xml: str, flags: int) -> None:
        live, config = bool(flags & UPDATE_LIVE), bool(flags & UPDATE_CONFIG)
        if not live and not config:
            live, config = net.active, not net.active
        if live and not net.active:
            raise _invalid("network is not running")
        if config and not net.persistent:
            raise _invalid("cannot change persistent config of a transient network")
        new_live = update.apply(net.live, command, section, parent_index, xml) if live else None
        new_config = None
        if config:
            assert net.config is not None
            new_config = update.apply(net.config, command, section, parent_index, xml)
        if new_config is not None:
            net.config = new_config
            if not net.active:
                net.live = new_config
            self._save(net)
        if new_live is not None:
            net.live = new_live
            self._save_state(net)
            if section in update.DNSMASQ_SECTIONS:
                await _in_task(runtime.reload(new_live, self.dirs))

    # -- DHCP leases -----------------------------------------------------------------------

    def leases(self, network: str | Network, mac: str | None = None) -> list[Lease]:
        """The network's live DHCP leases, those of one MAC if given."""
        net = network if isinstance(network, Network) else self.lookup_by_name(network)
        if not net.active:
            return []
        found = runtime.leases(net.live, self.dirs)
        if mac is not None:
            wanted = mac.lower()
            found = [lease for lease in found if (lease.mac or "").lower() == wanted]
        return found

    # -- ports -----------------------------------------------------------------------------

    def port(self, net: Network, port_uuid: bytes) -> NetworkPort:
        port = net.ports.get(port_uuid)
        if port is None:
            raise _no_port(port_uuid)
        return port

    def create_port(self, net: Network, xml: str, flags: int = 0) -> NetworkPort:
        if flags & PORT_CREATE_VALIDATE:
            _validate(xml, "networkport")
        port = parse_port(xml, net.name)
        return self._add_port(net, port, reclaim=bool(flags & PORT_CREATE_RECLAIM))

    def _add_port(self, net: Network, port: NetworkPort, reclaim: bool) -> NetworkPort:
        if not net.active:
            raise _invalid(f"network '{net.name}' is not active")
        if port.uuid in net.ports:
            raise VirError(ErrorCode.NETWORK_PORT_EXIST, "network port Network port with UUID "
                           f"{port.uuid_str} already exists exists already", ErrorDomain.NETWORK)
        if port.plug_type is not None and not reclaim:
            raise VirError(ErrorCode.INVALID_ARG, "invalid argument: Port reclaim not requested "
                           "but plug type is not none", ErrorDomain.NETWORK)
        d = net.live
        if port.plug_type is None:
            if d.virtual:
                port.plug_type, port.bridge = "network", d.bridge
            elif d.forward.mode == "bridge":
                port.plug_type, port.bridge = "bridge", d.bridge
            else:
                raise VirError(ErrorCode.CONFIG_UNSUPPORTED, "unsupported configuration: "
                               f"forward mode '{d.forward.mode}' of network '{d.name}' has "
                               "no ports here", ErrorDomain.NETWORK)
            port.mac_table_manager = d.mac_table_manager
        port.mtu = d.mtu
        ports_dir = self._ports_dir(net.name)
        ports_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(ports_dir / f"{port.uuid_str}.xml", port.xml())
        net.ports[port.uuid] = port
        return port

    def delete_port(self, net: Network, port: NetworkPort) -> None:
        net.ports.pop(port.uuid, None)
        (self._ports_dir(net.name) / f"{port.uuid_str}.xml").unlink(missing_ok=True)

    # -- what the QEMU driver calls for <interface type='network'> ------------------------

    async def plug(self, network: str, owner_name: str, owner_uuid: bytes, mac: str,
                   port_uuid: bytes | None = None) -> NetworkPort:
        """A port for a guest NIC; the one it already has when ``port_uuid`` names a port
        of this network (a daemon restart re-attaching a guest)."""
        net = self.lookup_by_name(network)
        if not net.active:
            raise _invalid(f"network '{network}' is not active")
        if port_uuid is not None and port_uuid in net.ports:
            return net.ports[port_uuid]
        port = NetworkPort(port_uuid or uuidlib.uuid4().bytes, net.name, owner_name,
                           owner_uuid, mac.lower())
        return self._add_port(net, port, reclaim=False)

    async def unplug(self, port_uuid: bytes) -> None:
        for net in self._networks.values():
            port = net.ports.get(port_uuid)
            if port is not None:
                self.delete_port(net, port)
                return
        raise _no_port(port_uuid)


def _validate(xml: str, schema: str) -> None:
    """The schema check of the VALIDATE flags; libvirtd reports it from its XML code."""
    try:
        validate(xml, schema)
    except VirError as e:
        if e.code == ErrorCode.XML_INVALID_SCHEMA:
            e.domain = ErrorDomain.XML
        raise


def _own_netns() -> bool:
    """Whether this process runs in a named network namespace (``ip netns exec``),
    found as ``ip netns identify`` finds it."""
    try:
        mine = os.stat("/proc/self/ns/net")
        return any(os.stat(p).st_ino == mine.st_ino and os.stat(p).st_dev == mine.st_dev
                   for p in Path("/run/netns").iterdir())
    except OSError:
        return False


async def _in_task(work: Awaitable[T]) -> T:
    """Run host work in a task of its own: handlers start outside any task (the
    client runs them eagerly), and the runtime's timeouts need one."""
    return await asyncio.ensure_future(work)


def _free_subnet() -> ipaddress.IPv4Network:
    """The first 192.168.N.0/24 from 122 up that no host route overlaps."""
    routes = []
    with contextlib.suppress(OSError), open("/proc/net/route") as f:
        for line in f.readlines()[1:]:
            words = line.split()
            dest, mask = (ipaddress.IPv4Address(int(w, 16).to_bytes(4, "little"))
                          for w in (words[1], words[7]))
            if int(mask):
                routes.append(ipaddress.IPv4Network(f"{dest}/{mask}", strict=False))
    for n in range(122, 255):
        subnet = ipaddress.IPv4Network(f"192.168.{n}.0/24")
        if not any(subnet.overlaps(r) for r in routes):
            return subnet
    return ipaddress.IPv4Network("192.168.122.0/24")
