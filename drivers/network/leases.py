"""DHCP leases as net-dhcp-leases shows them, read from dnsmasq's own lease file.

dnsmasq writes IPv4 leases as ``EXPIRY MAC IP HOSTNAME CLIENTID``, then a
``duid SERVER-DUID`` line, then IPv6 leases as ``EXPIRY IAID IP HOSTNAME
CLIENT-DUID`` ("*" for an unknown field, 0 for a lease that never expires).
An IPv6 lease names no MAC; the client's DUID holds one when it is of the
link-layer kinds, which is what guests send.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable
from dataclasses import dataclass

IPV4, IPV6 = 0, 1  # virIPAddrType


@dataclass
class Lease:
    """The fields of ``remote_network_dhcp_lease``."""

    iface: str
    expirytime: int
    type: int
    mac: str | None
    iaid: str | None
    ipaddr: str
    prefix: int
    hostname: str | None
    clientid: str | None


def _field(word: str) -> str | None:
    return None if word == "*" else word


def duid_mac(duid: str) -> str | None:
    """The MAC inside a DUID-LLT or DUID-LL of Ethernet, else None."""
    octets = duid.lower().split(":")
    if octets[:4] == ["00", "01", "00", "01"] and len(octets) == 14:
        return ":".join(octets[8:])
    if octets[:4] == ["00", "03", "00", "01"] and len(octets) == 10:
        return ":".join(octets[4:])
    return None


def parse(text: str, iface: str, subnets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
          now: float | None = None) -> list[Lease]:
    """The live leases of a lease file; ``subnets`` give each address its prefix."""
    now = time.time() if now is None else now
    nets = list(subnets)
    out: list[Lease] = []
    v6 = False
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "duid":
            v6 = True
            continue
        if len(words) < 5 or not words[0].isdigit():
            continue
        expiry = int(words[0])
        if expiry and expiry < now:
            continue
        try:
            addr = ipaddress.ip_address(words[2])
        except ValueError:
            continue
        prefix = next((n.prefixlen for n in nets if addr in n),
                      next((n.prefixlen for n in nets if n.version == addr.version), 0))
        hostname, clientid = _field(words[3]), _field(words[4])
        if v6:
            out.append(Lease(iface, expiry, IPV6,
                             duid_mac(clientid) if clientid else None,
                             words[1].lstrip("T"), str(addr), prefix, hostname, clientid))
        else:
            out.append(Lease(iface, expiry, IPV4, words[1].lower(), None,
                             str(addr), prefix, hostname, clientid))
    return out
