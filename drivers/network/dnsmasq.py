"""The dnsmasq of a virtual network: its files, the process, its reloads.

The configuration is libvirtd's, option for option and in its order, so a
network behaves as under libvirtd. dnsmasq keeps its own lease file (no
helper script): ``leases.parse`` reads it. Started detached, it daemonizes
itself and writes its pid file, and outlives the daemon as guests do; a
restarted daemon finds it again by that pid file and its command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from protocol.errors import ErrorCode, ErrorDomain, VirError

if TYPE_CHECKING:
    from drivers.network.network_xml import DnsSrv, IPDef, Lease, NetworkDef

TIMEOUT = 10.0


@dataclass(frozen=True)
class Files:
    """Where one network's dnsmasq files live (all in the driver's state dir)."""

    state_dir: Path
    name: str

    def _file(self, suffix: str) -> Path:
        return self.state_dir / f"{self.name}.{suffix}"

    @property
    def conf(self) -> Path:
        return self._file("conf")

    @property
    def pid(self) -> Path:
        return self._file("pid")

    @property
    def hostsfile(self) -> Path:
        return self._file("hostsfile")

    @property
    def addnhosts(self) -> Path:
        return self._file("addnhosts")

    @property
    def leases(self) -> Path:
        return self._file("leases")

    def all(self) -> tuple[Path, ...]:
        return self.conf, self.pid, self.hostsfile, self.addnhosts, self.leases


def interface(ip: IPDef) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    return ipaddress.ip_interface(f"{ip.address}/{ip.network.prefixlen}")


def needed(net: NetworkDef) -> bool:
    """libvirtd runs dnsmasq for a network with addresses, unless it has
    neither DHCP nor TFTP to serve and DNS is turned off."""
    if not net.ips:
        return False
    return net.dns.enable != "no" or any(ip.dhcp or ip.tftp_root for ip in net.ips)


def _lease_time(lease: Lease | None) -> str | None:
    """dnsmasq's form of a lease time: "infinite", or a number and s, m or h."""
    if lease is None:
        return None
    if int(lease.expiry) == 0:
        return "infinite"
    return f"{int(lease.expiry)}{(lease.unit or 'minutes')[0]}"


def _ptr_domain(ip: IPDef) -> str:
    """The reverse zone of the network, whole octets (IPv4) or nibbles (IPv6) only."""
    net = interface(ip).network
    step = 8 if net.version == 4 else 4
    if net.prefixlen % step:
        family = "IPv4" if net.version == 4 else "IPv6"
        raise VirError(ErrorCode.CONFIG_UNSUPPORTED,
                       f"unsupported configuration: PTR domain for {family} network with "
                       f"prefix {net.prefixlen} cannot be automatically created",
                       ErrorDomain.NETWORK)
    labels = net.network_address.reverse_pointer.split(".")
    keep = net.prefixlen // step
    return ".".join(labels[len(labels) - 2 - keep:])


def _first_dhcp(net: NetworkDef, v6: bool) -> IPDef | None:
    """The address of the family that serves DHCP (the definition allows one)."""
    return next((ip for ip in net.ips if ip.is_v6 == v6 and ip.dhcp), None)


def _dhcp_lines(ip: IPDef) -> tuple[list[str], int]:
    """An address's DHCP options and how many leases its ranges hold."""
    iface = interface(ip)
    lines, size = [], 0
    for rng in ip.ranges:
        mask = str(iface.netmask) if iface.version == 4 else str(iface.network.prefixlen)
        line = f"dhcp-range={rng.start},{rng.end},{mask}"
        if (lease := _lease_time(rng.lease)) is not None:
            line += f",{lease}"
        lines.append(line)
        size += int(ipaddress.ip_address(rng.end)) - int(ipaddress.ip_address(rng.start)) + 1
    if not ip.ranges and ip.hosts:
        suffix = f",{iface.network.prefixlen}" if iface.version == 6 else ""
        lines.append(f"dhcp-range={iface.ip},static{suffix}")
    if iface.version == 4:
        lines += ["dhcp-no-override", "dhcp-authoritative"]
        if ip.bootp_file:
            server = f",,{ip.bootp_server}" if ip.bootp_server else ""
            lines.append(f"dhcp-boot={ip.bootp_file}{server}")
    return lines, size


def conf(net: NetworkDef, files: Files) -> str:
    """The dnsmasq.conf libvirtd writes for the network."""
    dns = net.dns
    want_dns = dns.enable != "no"
    lines = [f"## dnsmasq configuration of network '{net.name}', written by aiovirtd:",
             f"## change it with 'virsh net-edit {net.name}', not here", "strict-order"]
    if not want_dns:
        lines.append("port=0")
    if want_dns and dns.forwarders:
        no_resolv = False
        for fwd in dns.forwarders:
            where = f"/{fwd.domain}/" if fwd.domain else ""
            lines.append(f"server={where}{fwd.addr or '#'}")
            no_resolv |= bool(fwd.addr and not fwd.domain)
        if no_resolv:
            lines.append("no-resolv")
    if net.domain:
        if net.domain_local_only == "yes":
            lines.append(f"local=/{net.domain}/")
        lines += [f"domain={net.domain}", "expand-hosts"]
    if want_dns:
        lines += [f"local=/{_ptr_domain(ip)}/" for ip in net.ips if ip.local_ptr == "yes"]
        if dns.forward_plain_names == "no":
            lines += ["domain-needed", "local=//"]
    lines += [f"pid-file={files.pid}", "except-interface=lo", "bind-dynamic",
              f"interface={net.bridge}"]
    if net.forward.mode == "none":
        lines += ["dhcp-option=3", "no-resolv", "ra-param=*,0,0"]
    if want_dns:
        lines += [f"txt-record={txt.name},{txt.value}" for txt in dns.txts]
        lines += [_srv(srv) for srv in dns.srvs]
    tftp = [ip.tftp_root for ip in net.ips if ip.tftp_root and not ip.is_v6]
    if tftp:
        lines += ["enable-tftp", *(f"tftp-root={root}" for root in tftp)]
    ipv4, ipv6 = _first_dhcp(net, False), _first_dhcp(net, True)
    leases = 0
    for ip in (ipv4, ipv6):
        if ip is not None:
            more, size = _dhcp_lines(ip)
            lines += more
            leases += size
    if leases:
        lines.append(f"dhcp-lease-max={leases}")
    if ipv4 or ipv6:
        lines.append(f"dhcp-hostsfile={files.hostsfile}")
    if want_dns:
        lines.append(f"addn-hosts={files.addnhosts}")
    if net.mtu:
        lines.append(f"dhcp-option=option:mtu,{net.mtu}")
    if ipv6:
        lines.append("enable-ra")
    else:
        lines += [f"dhcp-range={ip.address},ra-only" for ip in net.ips if ip.is_v6]
    return "\n".join(lines) + "\n"


def _srv(srv: DnsSrv) -> str:
    """An SRV record; port, priority and weight are positional, so an earlier one
    is written (port as 1, the others as 0) whenever a later one is set."""
    line = f"srv-host=_{srv.service}._{srv.protocol}"
    if srv.domain:
        line += f".{srv.domain}"
    if srv.target and srv.target != ".":
        line += f",{srv.target}"
        if srv.port or srv.priority or srv.weight:
            line += f",{srv.port or 1}"
        if srv.priority or srv.weight:
            line += f",{srv.priority or 0}"
        if srv.weight:
            line += f",{srv.weight}"
    return line


def hostsfile(net: NetworkDef) -> str:
    """``dhcp-hostsfile``: the static hosts of the first DHCP address of each family."""
    lines = []
    for ip in (_first_dhcp(net, False), _first_dhcp(net, True)):
        if ip is None:
            continue
        for host in ip.hosts:
            if not host.ip:
                continue
            if ip.is_v6:
                who = [f"id:{host.id}"] if host.id else []
                who += [host.name] if host.name else []
                entry = ",".join([*who, f"[{host.ip}]"])
            elif host.mac:
                entry = ",".join([host.mac, host.ip] + ([host.name] if host.name else []))
            else:
                entry = f"{host.name},{host.ip}"
            if (lease := _lease_time(host.lease)) is not None:
                entry += f",{lease}"
            lines.append(entry)
    return "".join(f"{line}\n" for line in lines)


def addnhosts(net: NetworkDef) -> str:
    """``addn-hosts``: one line per address, its names tab-separated (tab-ended)."""
    names: dict[str, list[str]] = {}
    for host in net.dns.hosts:
        names.setdefault(str(ipaddress.ip_address(host.ip)), []).extend(host.hostnames)
    return "".join(ip + "\t" + "".join(f"{n}\t" for n in hs) + "\n" for ip, hs in names.items())


def _replace(path: Path, text: str, mode: int = 0o644) -> None:
    """Write by rename, so a dnsmasq reading on SIGHUP never sees half a file."""
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with open(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write(net: NetworkDef, files: Files) -> bool:
    """Write the three files; True when the configuration itself changed."""
    files.state_dir.mkdir(parents=True, exist_ok=True)
    text = conf(net, files)
    try:
        changed = files.conf.read_text() != text
    except OSError:
        changed = True
    _replace(files.hostsfile, hostsfile(net))
    _replace(files.addnhosts, addnhosts(net))
    _replace(files.conf, text, 0o600)
    return changed


def running(files: Files) -> int | None:
    """The pid of the network's dnsmasq, if the pid file names a live dnsmasq
    started on this very configuration file (not some recycled pid)."""
    try:
        pid = int(files.pid.read_text().split()[0])
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    if os.path.basename(argv[0]) != b"dnsmasq" or \
            f"--conf-file={files.conf}".encode() not in argv:
        return None
    return pid


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for init to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def binary() -> str:
    return shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


async def start(files: Files) -> int:
    """Start dnsmasq on the written configuration; its pid once it has daemonized."""
    argv = [binary(), f"--conf-file={files.conf}", f"--dhcp-leasefile={files.leases}"]
    with contextlib.suppress(FileNotFoundError):
        files.pid.unlink()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
    except FileNotFoundError:
        raise VirError(ErrorCode.SYSTEM_ERROR, f"Cannot find '{argv[0]}' in path: No such "
                       "file or directory", ErrorDomain.NONE) from None
    try:
        _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        err = b"timed out waiting for dnsmasq to start"
    if proc.returncode != 0:
        raise VirError(ErrorCode.INTERNAL_ERROR,
                       f"internal error: Child process ({' '.join(argv)}) unexpected exit "
                       f"status {proc.returncode}: {err.decode().strip()}", ErrorDomain.NONE)
    pid = running(files)
    if pid is None:
        raise VirError(ErrorCode.INTERNAL_ERROR,
                       f"internal error: dnsmasq wrote no usable pid file {files.pid}",
                       ErrorDomain.NONE)
    return pid


async def stop(files: Files) -> None:
    """SIGTERM, then SIGKILL after a while; the pid file goes too."""
    pid = running(files)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + TIMEOUT / 2
            while _alive(pid) and loop.time() < deadline:
                await asyncio.sleep(0.02)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        files.pid.unlink()


def reload(pid: int) -> None:
    """SIGHUP: dnsmasq rereads its hosts files (not its configuration)."""
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as e:
        raise VirError(ErrorCode.SYSTEM_ERROR,
                       f"Failed to make dnsmasq (PID: {pid}) reload config files.: "
                       f"{os.strerror(e.errno or 0)}", ErrorDomain.NETWORK) from None
