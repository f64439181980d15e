"""net-update: one command on one section of a NetworkDef, with libvirtd's errors.

:func:`apply` is pure: it returns a changed copy and leaves its input alone, so
the driver can apply the same change to the live and the persistent
definition and keep neither half-changed when one of them refuses it.
"""

from __future__ import annotations

import copy
import ipaddress

from lxml import etree

from drivers.network.network_xml import (
    DhcpHost,
    DnsHost,
    IPDef,
    NetworkDef,
    format_host,
    format_range,
    parse_dns_host,
    parse_dns_srv,
    parse_dns_txt,
    parse_host,
    parse_portgroup,
    parse_range,
    parse_xml_doc,
)
from protocol.errors import ErrorCode, ErrorDomain, VirError

# virNetworkUpdateCommand
MODIFY, DELETE, ADD_LAST, ADD_FIRST = 1, 2, 3, 4

#: virNetworkUpdateSection names, by number.
SECTIONS = ("none", "bridge", "domain", "ip", "ip-dhcp-host", "ip-dhcp-range", "forward",
            "forward-interface", "forward-pf", "portgroup", "dns-host", "dns-txt", "dns-srv")
IP_DHCP_HOST, IP_DHCP_RANGE, FORWARD_INTERFACE, PORTGROUP = 4, 5, 7, 9
DNS_HOST, DNS_TXT, DNS_SRV = 10, 11, 12

#: Sections whose change dnsmasq must learn of (the others need no reload).
DNSMASQ_SECTIONS = frozenset({IP_DHCP_HOST, IP_DHCP_RANGE, DNS_HOST, DNS_TXT, DNS_SRV})


def _invalid(message: str) -> VirError:
    return VirError(ErrorCode.OPERATION_INVALID, f"Requested operation is not valid: {message}",
                    ErrorDomain.NETWORK)


def _unsupported(message: str) -> VirError:
    return VirError(ErrorCode.OPERATION_UNSUPPORTED, f"Operation not supported: {message}",
                    ErrorDomain.NETWORK)


def apply(d: NetworkDef, command: int, section: int, parent_index: int, xml: str) -> NetworkDef:
    """``d`` with the update made; ``xml`` is the one element the section holds."""
    if command not in (MODIFY, DELETE, ADD_LAST, ADD_FIRST):
        raise _unsupported(f"unrecognized network update command code {command}")
    handler = _HANDLERS.get(section)
    if handler is None:
        if 0 < section < len(SECTIONS):
            raise _unsupported(f"can't update '{SECTIONS[section]}' section of network "
                               f"'{d.name}'")
        raise _unsupported("can't update unrecognized section of network")
    new = copy.deepcopy(d)
    handler(new, command, parent_index, xml)
    return new


def _element(d: NetworkDef, xml: str, tag: str) -> etree._Element:
    node = parse_xml_doc(xml, "network_update_xml")
    if node.tag != tag:
        raise VirError(ErrorCode.XML_ERROR, f"XML error: unexpected element <{node.tag}>, "
                       f"expecting <{tag}>, while updating network '{d.name}'",
                       ErrorDomain.NETWORK)
    return node


def _insert(items: list, item: object, command: int) -> None:
    if command == ADD_FIRST:
        items.insert(0, item)
    else:
        items.append(item)


def _parent_ip(d: NetworkDef, parent_index: int) -> IPDef:
    """The <ip> whose <dhcp> to change: by index, or the one serving DHCP, or the
    first IPv4 one."""
    if parent_index >= 0:
        if parent_index >= len(d.ips):
            raise _invalid(f"couldn't update dhcp host entry - no <ip> element found at "
                           f"index {parent_index} in network '{d.name}'")
        return d.ips[parent_index]
    for ip in d.ips:
        if ip.dhcp:
            return ip
    v4 = d.ipv4()
    if not v4:
        raise _invalid(f"couldn't update dhcp host entry - no <ip family='ipv4'> element "
                       f"found in network '{d.name}'")
    return v4[0]


def _is_v6(address: str) -> bool:
    return ipaddress.ip_address(address).version == 6


def _dhcp_host(d: NetworkDef, command: int, parent_index: int, xml: str) -> None:
    node = _element(d, xml, "host")
    ip = _parent_ip(d, parent_index)
    given = node.get("ip")
    if given is not None and ":" in given and not ip.is_v6 or \
            given is not None and ":" not in given and ip.is_v6:
        raise _invalid("the address family of a host entry IP must match the address "
                       "family of the dhcp element's parent")
    host = parse_host(node, ip.is_v6, d.name, partial=command == DELETE)
    if command == DELETE:
        for i, h in enumerate(ip.hosts):
            if _host_matches_all(host, h):
                del ip.hosts[i]
                break
        else:
            raise _invalid(f"couldn't locate a matching dhcp host entry in network '{d.name}'")
    elif command == MODIFY:
        for i, h in enumerate(ip.hosts):
            if _host_matches_any(host, h):
                ip.hosts[i] = host
                break
        else:
            wanted = " ".join(f"\"{k}='{v}'\"" for k, v in (
                ("mac", host.mac), ("id", host.id), ("name", host.name), ("ip", host.ip)) if v)
            raise _invalid(f"couldn't locate an existing dhcp host entry with {wanted} "
                           f"in network '{d.name}'")
    else:
        if any(_host_matches_any(host, h) for h in ip.hosts):
            shown = format_host(DhcpHost(host.mac, host.id, host.name, host.ip))[0]
            raise _invalid(f"there is an existing dhcp host entry in network '{d.name}' "
                           f"that matches \"{shown}\"")
        _insert(ip.hosts, host, command)
    ip.has_dhcp = True


def _host_matches_any(new: DhcpHost, old: DhcpHost) -> bool:
    return any(getattr(new, k) is not None and getattr(new, k) == getattr(old, k)
               for k in ("mac", "id", "name", "ip"))


def _host_matches_all(new: DhcpHost, old: DhcpHost) -> bool:
    return all(getattr(new, k) is None or getattr(new, k) == getattr(old, k)
               for k in ("mac", "id", "name", "ip"))


def _dhcp_range(d: NetworkDef, command: int, parent_index: int, xml: str) -> None:
    if command == MODIFY:
        raise _unsupported("dhcp ranges cannot be modified, only added or deleted")
    node = _element(d, xml, "range")
    ip = _parent_ip(d, parent_index)
    start = node.get("start") or ""
    if ":" in start and not ip.is_v6 or ":" not in start and ip.is_v6:
        raise _invalid("the address family of a dhcp range must match the address family "
                       "of the dhcp element's parent")
    new = parse_range(node, ip, d.name)
    at = next((i for i, r in enumerate(ip.ranges)
               if (r.start, r.end) == (new.start, new.end)), None)
    if command == DELETE:
        if at is None:
            raise _invalid(f"couldn't locate a matching dhcp range entry in network '{d.name}'")
        del ip.ranges[at]
        return
    if at is not None:
        shown = format_range(type(new)(new.start, new.end))[0]
        raise _invalid(f"there is an existing dhcp range entry in network '{d.name}' "
                       f"that matches \"{shown}\"")
    _insert(ip.ranges, new, command)
    ip.has_dhcp = True


def _dns_host(d: NetworkDef, command: int, parent_index: int, xml: str) -> None:
    if command == MODIFY:
        raise _unsupported("DNS HOST records cannot be modified, only added or deleted")
    new = parse_dns_host(_element(d, xml, "host"), d.name)
    hosts = d.dns.hosts
    if command == DELETE:
        found = [i for i, h in enumerate(hosts) if _same_dns_host(new, h)]
        if not found:
            raise _invalid(f"couldn't locate a matching DNS HOST record in network {d.name}")
        if len(found) > 1:
            raise _invalid(f"multiple matching DNS HOST records were found in network {d.name}")
        del hosts[found[0]]
        return
    if any(_addr_eq(new.ip, h.ip) for h in hosts):
        raise _invalid(f"there is already at least one DNS HOST record with a matching field "
                       f"in network {d.name}")
    _insert(hosts, new, command)


def _addr_eq(a: str, b: str) -> bool:
    return ipaddress.ip_address(a) == ipaddress.ip_address(b)


def _same_dns_host(new: DnsHost, old: DnsHost) -> bool:
    return _addr_eq(new.ip, old.ip) or bool(set(new.hostnames) & set(old.hostnames))


def _dns_txt(d: NetworkDef, command: int, parent_index: int, xml: str) -> None:
    if command == MODIFY:
        raise _unsupported("DNS TXT records cannot be modified, only added or deleted")
    new = parse_dns_txt(_element(d, xml, "txt"), d.name)
    txts = d.dns.txts
    at = next((i for i, t in enumerate(txts) if t.name == new.name), None)
    if command == DELETE:
        if at is None:
            raise _invalid(f"couldn't locate a matching DNS TXT record in network {d.name}")
        del txts[at]
        return
    if at is not None:
        raise _invalid(f"there is already a DNS TXT record with name '{new.name}' "
                       f"in network {d.name}")
    _insert(txts, new, command)


def _dns_srv(d: NetworkDef, command: int, parent_index: int, xml: str) -> None:
    if command == MODIFY:
        raise _unsupported("DNS SRV records cannot be modified, only added or deleted")
    new = parse_dns_srv(_element(d, xml, "srv"), d.name)
    srvs = d.dns.srvs
    fields = ("service", "protocol", "domain", "target", "port", "priority", "weight")
    found = [i for i, s in enumerate(srvs)
             if all(getattr(new, f) is None or getattr(new, f) == getattr(s, f) for f in fields)]
    if command == DELETE:
        if not found:
            raise _invalid(f"couldn't locate a matching DNS SRV record in network {d.name}")
        if len(found) > 1:
            raise _invalid(f"multiple DNS SRV records matching all specified fields were "
                           f"found in network {d.name}")
        del srvs[found[0]]
        return
    if found:
        raise _invalid(f"there is already at least one DNS SRV record matching all specified "
                       f"fields in network {d.name}")
    _insert(srvs, new, command)


def _forward_interface(d: NetworkDef, command: int, parent_index: int, xml: str) -> None:
    if command == MODIFY:
        raise _unsupported("forward interface entries cannot be modified, only added or deleted")
    dev = _element(d, xml, "interface").get("dev")
    if not dev:
        raise VirError(ErrorCode.XML_ERROR, "XML error: missing dev attribute in <interface> "
                       "element", ErrorDomain.NETWORK)
    ifaces = d.forward.interfaces
    if command == DELETE:
        if dev not in ifaces:
            raise _invalid(f"couldn't find an interface entry in network '{d.name}' matching "
                           f"<interface dev='{dev}'>")
        ifaces.remove(dev)
        return
    if dev in ifaces:
        raise _invalid(f"there is an existing interface entry in network '{d.name}' that "
                       f"matches \"<interface dev='{dev}'>\"")
    _insert(ifaces, dev, command)


def _portgroup(d: NetworkDef, command: int, parent_index: int, xml: str) -> None:
    node = _element(d, xml, "portgroup")
    new = parse_portgroup(node)
    name = node.get("name")
    groups = d.raw.setdefault("portgroup", [])
    parsed = [etree.fromstring(g) for g in groups]
    at = next((i for i, g in enumerate(parsed) if g.get("name") == name), None)
    if command == DELETE or command == MODIFY:
        if at is None:
            raise _invalid(f"couldn't find a portgroup entry in network '{d.name}' matching "
                           f"<portgroup name='{name}'>")
    elif at is not None:
        raise _invalid(f"there is an existing portgroup entry in network '{d.name}' that "
                       f"matches \"<portgroup name='{name}'>\"")
    if command != DELETE and node.get("default") == "yes" and any(
            g.get("default") == "yes" and i != at for i, g in enumerate(parsed)):
        raise _invalid(f"a different portgroup entry in network '{d.name}' is already set "
                       "as the default. Only one default is allowed.")
    if command == DELETE:
        del groups[at]
    elif command == MODIFY:
        groups[at] = new
    else:
        _insert(groups, new, command)
    if not groups:
        del d.raw["portgroup"]


_HANDLERS = {IP_DHCP_HOST: _dhcp_host, IP_DHCP_RANGE: _dhcp_range,
             FORWARD_INTERFACE: _forward_interface, PORTGROUP: _portgroup,
             DNS_HOST: _dns_host, DNS_TXT: _dns_txt, DNS_SRV: _dns_srv}
