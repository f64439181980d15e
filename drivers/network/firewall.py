"""A virtual network's firewall rules, in the daemon's own nftables tables.

Each family has one table ``aiovirtd`` whose forward chain jumps, in this
order, to ``guest_cross`` (bridge to itself), ``guest_input`` (into a bridge)
and ``guest_output`` (out of a bridge): the order of libvirtd's FWX, FWI and
FWO chains, so that traffic between two networks meets the second one's
reject before the first one's accept. Every rule of a network carries its
bridge name as comment; that is how its rules are found again to be removed,
or replaced in one transaction after a daemon restart.
"""

from __future__ import annotations

import asyncio
import json

from drivers.network.network_xml import NAT_PORT_RANGE, NetworkDef
from protocol.errors import ErrorCode, ErrorDomain, VirError

TABLE = "aiovirtd"
FAMILIES = ("ip", "ip6")
TIMEOUT = 10.0

# Where each family's multicast and broadcast traffic goes: never masqueraded.
_NO_NAT = {"ip": ("224.0.0.0/24", "255.255.255.255/32"), "ip6": ("ff02::/16",)}
# What dnsmasq serves on a bridge: (protocol, port in, port of the answers out).
_SERVICES = {"ip": (("udp", 67, 68), ("tcp", 67, 68), ("udp", 53, 53), ("tcp", 53, 53)),
             "ip6": (("udp", 547, 546), ("udp", 53, 53), ("tcp", 53, 53))}
_TFTP = ("udp", 69, 69)

_lock = asyncio.Lock()


def skeleton(family: str) -> str:
    """The table and its chains; applied before every change, it is idempotent."""
    return (f"table {family} {TABLE} {{\n"
            "  chain forward { type filter hook forward priority filter; policy accept; }\n"
            "  chain guest_cross { }\n"
            "  chain guest_input { }\n"
            "  chain guest_output { }\n"
            "  chain guest_nat { type nat hook postrouting priority srcnat; policy accept; }\n"
            "  chain host_input { type filter hook input priority filter; policy accept; }\n"
            "  chain host_output { type filter hook output priority filter; policy accept; }\n"
            "}\n"
            f"flush chain {family} {TABLE} forward\n"
            f"add rule {family} {TABLE} forward jump guest_cross\n"
            f"add rule {family} {TABLE} forward jump guest_input\n"
            f"add rule {family} {TABLE} forward jump guest_output\n")


def _quote(word: str) -> str:
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rules(net: NetworkDef, family: str) -> list[tuple[str, str]]:
    """``(chain, rule)`` for one family of a network, in the order they are added.

    Empty for the forward modes whose traffic libvirtd leaves alone (open,
    bridge and the device pools), and for IPv6 on a network without it. As
    libvirtd's, the IPv4 rules for DHCP and DNS are there even when unused.
    """
    mode = net.forward.mode
    ips = [ip for ip in net.ips if ip.is_v6 == (family == "ip6")]
    if mode not in ("none", "nat", "route") or \
            (family == "ip6" and not ips and net.ipv6 != "yes"):
        return []
    br = _quote(net.bridge)
    out: list[tuple[str, str]] = []
    services = list(_SERVICES[family]) if family == "ip" or ips else []
    if family == "ip" and any(ip.tftp_root for ip in ips):
        services.append(_TFTP)
    for proto, port_in, port_out in services:
        out.append(("host_input", f"iifname {br} {proto} dport {port_in} accept"))
        out.append(("host_output", f"oifname {br} {proto} dport {port_out} accept"))
    devs = net.forward.interfaces[:1]
    dev = "".join(f" oifname {_quote(d)}" for d in devs)
    indev = "".join(f" iifname {_quote(d)}" for d in devs)
    nat6 = family == "ip6" and net.forward.nat_ipv6 == "yes"
    for ip in ips:
        subnet = str(ip.network)
        if mode in ("nat", "route"):
            out.append(("guest_output", f"iifname {br}{dev} {family} saddr {subnet} accept"))
            state = " ct state related,established" if mode == "nat" else ""
            out.append(("guest_input",
                        f"oifname {br}{indev} {family} daddr {subnet}{state} accept"))
        if mode == "nat" and (family == "ip" or nat6):
            out.extend(_masquerade(net, family, subnet, dev))
    out.append(("guest_cross", f"iifname {br} oifname {br} accept"))
    out.append(("guest_input", f"oifname {br} reject"))
    out.append(("guest_output", f"iifname {br} reject"))
    return out


def _masquerade(net: NetworkDef, family: str, subnet: str,
                dev: str) -> list[tuple[str, str]]:
    """libvirtd's NAT: leave multicast and broadcast alone, translate the rest
    leaving the subnet, TCP and UDP onto the port range (unprivileged ports by
    default); to the ``<nat><address>`` range when there is one, else masquerade."""
    match = f"{family} saddr {subnet}"
    out = [("guest_nat", f"{match} {family} daddr {dst}{dev} return")
           for dst in _NO_NAT[family]]
    start, end = net.forward.nat_port or NAT_PORT_RANGE
    if net.forward.nat_addr:
        first, last = net.forward.nat_addr
        addrs = f"{first}-{last}" if last and last != first else first
        ports, plain = f"snat to {addrs}:{start}-{end}", f"snat to {addrs}"
    else:
        ports, plain = f"masquerade to :{start}-{end}", "masquerade"
    for proto in ("tcp", "udp"):
        rule = f"meta l4proto {proto} {match} {family} daddr != {subnet}{dev} {ports}"
        out.append(("guest_nat", rule))
    out.append(("guest_nat", f"{match} {family} daddr != {subnet}{dev} {plain}"))
    return out


def script(net: NetworkDef, family: str, stale: list[tuple[str, int]]) -> str:
    """One nft transaction: the skeleton, the removal of ``stale`` rules
    (chain, handle), then the network's rules."""
    lines = [skeleton(family)]
    lines += [f"delete rule {family} {TABLE} {chain} handle {handle}\n"
              for chain, handle in stale]
    comment = _quote(net.bridge)
    lines += [f"add rule {family} {TABLE} {chain} {rule} comment {comment}\n"
              for chain, rule in rules(net, family)]
    return "".join(lines)


async def nft(script_text: str | None, *args: str) -> str:
    """Run ``nft`` (a script on its stdin when given); its message is the error."""
    argv = ["nft", *args] if script_text is None else ["nft", *args, "-f", "-"]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError:
        raise VirError(ErrorCode.SYSTEM_ERROR, "Cannot find 'nft' in path: No such file or "
                       "directory", ErrorDomain.NONE) from None
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(script_text.encode() if script_text else None), TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise VirError(ErrorCode.INTERNAL_ERROR,
                       f"internal error: Child process ({' '.join(argv)}) timed out",
                       ErrorDomain.NONE) from None
    if proc.returncode != 0:
        raise VirError(ErrorCode.INTERNAL_ERROR,
                       f"internal error: Child process ({' '.join(argv)}) unexpected exit "
                       f"status {proc.returncode}: {err.decode().strip()}", ErrorDomain.NONE)
    return out.decode()


async def _listing(family: str) -> list[dict] | None:
    """The table's rules as nft's JSON objects, None when it does not exist."""
    try:
        text = await nft(None, "-j", "list", "table", family, TABLE)
    except VirError:
        return None
    return [obj["rule"] for obj in json.loads(text)["nftables"] if "rule" in obj]


async def _owned(family: str, bridge: str) -> tuple[list[tuple[str, int]], int]:
    """Handles of the bridge's rules, and how many rules other networks have."""
    mine, others = [], 0
    for rule in await _listing(family) or []:
        if rule.get("comment") == bridge:
            mine.append((rule["chain"], rule["handle"]))
        elif rule.get("comment"):
            others += 1
    return mine, others


async def add(net: NetworkDef) -> None:
    """Put the network's rules in place, replacing any it still had (restart)."""
    async with _lock:
        for family in FAMILIES:
            stale, _ = await _owned(family, net.bridge)
            if stale or rules(net, family):
                await nft(script(net, family, stale))


async def remove(net: NetworkDef) -> None:
    """Take the network's rules away; the tables go with the last network."""
    async with _lock:
        for family in FAMILIES:
            mine, others = await _owned(family, net.bridge)
            if not others and await _listing(family) is not None:
                await nft(None, "delete", "table", family, TABLE)
            elif mine:
                await nft("".join(f"delete rule {family} {TABLE} {chain} handle {handle}\n"
                                  for chain, handle in mine))

