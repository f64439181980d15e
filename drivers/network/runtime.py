"""A virtual network made real on the host, as libvirtd's bridge driver does.

For the forward modes libvirtd builds itself (isolated, nat, route, open):
firewall rules first (so the bridge is never up unguarded), then the bridge
with its addresses, IP forwarding for the modes that forward, and dnsmasq.
Whatever fails undoes it all. Nothing here belongs to the daemon process:
bridge, rules and dnsmasq stay when it exits and are adopted by the next one.
Networks on an existing host bridge, and device pools, need nothing here.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from drivers.network import bridge, dnsmasq, firewall
from drivers.network.dnsmasq import Files
from drivers.network.leases import Lease, parse

if TYPE_CHECKING:
    from daemon.paths import DriverPaths
    from drivers.network.network_xml import NetworkDef


def _files(net: NetworkDef, dirs: DriverPaths) -> Files:
    return Files(dirs.state_dir, net.name)


async def start(net: NetworkDef, dirs: DriverPaths) -> None:
    """Build the network; on failure nothing of it is left and the error is raised.

    A bridge of that name that is not a leftover of ours stops it before
    anything is done; once the name is ours, whatever else of the network is
    still around (a crash's dnsmasq, rules) is a leftover too and is replaced.
    """
    if not net.virtual:
        return
    await bridge.claim(net)
    bridge.check_routes(net)
    files = _files(net, dirs)
    try:
        await dnsmasq.stop(files)
        if net.forward.mode != "open":
            await firewall.add(net)
        await bridge.create(net)
        if net.forward.mode != "none":
            bridge.enable_forwarding(net)
        if dnsmasq.needed(net):
            dnsmasq.write(net, files)
            await dnsmasq.start(files)
    except BaseException:
        await _teardown(net, files)
        raise


async def _teardown(net: NetworkDef, files: Files) -> None:
    """Everything of the network that is still there goes; errors are not raised."""
    with contextlib.suppress(Exception):
        await dnsmasq.stop(files)
    with contextlib.suppress(Exception):
        await bridge.delete(net)
    with contextlib.suppress(Exception):
        await firewall.remove(net)
    for path in (files.conf, files.pid, files.hostsfile, files.addnhosts):
        with contextlib.suppress(OSError):
            path.unlink()


async def stop(net: NetworkDef, dirs: DriverPaths) -> None:
    """Tear the network down (a network already down is fine). The lease file
    stays, so guests get their addresses back on the next start."""
    if net.virtual:
        await _teardown(net, _files(net, dirs))


async def reattach(net: NetworkDef, dirs: DriverPaths) -> bool:
    """After a daemon restart: True when the bridge is still there and ours.

    A dnsmasq that died meanwhile is started again, and the rules are put
    back in one transaction that replaces any still there (never twice). When
    the bridge is gone, the rest is cleaned away and the answer is False.
    """
    if not net.virtual:
        return True
    files = _files(net, dirs)
    ours, _ = await bridge.state(net)
    if not ours:
        await _teardown(net, files)
        return False
    if net.forward.mode != "open":
        await firewall.add(net)
    if dnsmasq.needed(net) and dnsmasq.running(files) is None:
        dnsmasq.write(net, files)
        await dnsmasq.start(files)
    return True


async def reload(net: NetworkDef, dirs: DriverPaths) -> None:
    """After net-update of a running network: new hosts files and a SIGHUP, or a
    restart of dnsmasq when its configuration itself changed (a DHCP range)."""
    if not net.virtual:
        return
    files = _files(net, dirs)
    if not dnsmasq.needed(net):
        await dnsmasq.stop(files)
    else:
        changed = dnsmasq.write(net, files)
        pid = dnsmasq.running(files)
        if pid is not None and not changed:
            dnsmasq.reload(pid)
        else:
            await dnsmasq.stop(files)
            await dnsmasq.start(files)
    if net.forward.mode != "open":
        await firewall.add(net)


def leases(net: NetworkDef, dirs: DriverPaths) -> list[Lease]:
    """The network's unexpired DHCP leases, from dnsmasq's lease file."""
    try:
        text = _files(net, dirs).leases.read_text()
    except OSError:
        return []
    return parse(text, net.bridge, [ip.network for ip in net.ips])
