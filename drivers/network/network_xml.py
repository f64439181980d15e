"""Network definitions: ``<network>`` XML to a NetworkDef and back, as libvirtd 9.0 prints it.

The model keeps what the runtime needs typed (forward mode, bridge, addresses,
DHCP, DNS, routes); elements it has no use for (bandwidth, vlan, portgroups,
metadata...) are kept as XML and printed back where libvirtd prints them.
"""

from __future__ import annotations

import ipaddress
import random
import re
import uuid as uuidlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from lxml import etree

from protocol.errors import ErrorCode, ErrorDomain, VirError

#: virNetworkForwardType names; "none" means an isolated network.
FORWARD_MODES = ("none", "nat", "route", "open", "bridge", "private", "vepa", "passthrough",
                 "hostdev")
#: Modes where libvirt runs the bridge itself (name, MAC, STP, addresses, dnsmasq).
VIRTUAL_MODES = frozenset({"none", "nat", "route", "open"})
#: Modes that need an IP address to make sense.
_NEEDS_IP = ("nat", "route", "open")

#: Raw elements kept as they came, by where libvirtd prints them.
_RAW_AFTER_DNS = ("virtualport", "bandwidth", "vlan")
_RAW_TAIL = ("portgroup",)

NAT_PORT_RANGE = (1024, 65535)


def _err(code: ErrorCode, message: str, domain: ErrorDomain = ErrorDomain.NETWORK) -> VirError:
    return VirError(code, message, domain)


def _xml_err(message: str) -> VirError:
    return _err(ErrorCode.XML_ERROR, f"XML error: {message}")


def _unsupported(message: str) -> VirError:
    return _err(ErrorCode.CONFIG_UNSUPPORTED, f"unsupported configuration: {message}")


def _internal(message: str, domain: ErrorDomain = ErrorDomain.NETWORK) -> VirError:
    return _err(ErrorCode.INTERNAL_ERROR, f"internal error: {message}", domain)


# -- the model --------------------------------------------------------------------


@dataclass
class Lease:
    """``<lease expiry= unit=/>`` of a DHCP range or host."""

    expiry: str
    unit: str | None = None


@dataclass
class DhcpRange:
    start: str
    end: str
    lease: Lease | None = None


@dataclass
class DhcpHost:
    mac: str | None = None
    id: str | None = None  # DHCPv6 client id
    name: str | None = None
    ip: str | None = None
    lease: Lease | None = None


@dataclass
class IPDef:
    address: str
    family: str | None = None  # as written: None, "ipv4" or "ipv6"
    netmask: str | None = None
    prefix: int | None = None
    local_ptr: str | None = None
    tftp_root: str | None = None
    ranges: list[DhcpRange] = field(default_factory=list)
    hosts: list[DhcpHost] = field(default_factory=list)
    bootp_file: str | None = None
    bootp_server: str | None = None
    has_dhcp: bool = False  # an empty <dhcp/> is printed back

    @property
    def is_v6(self) -> bool:
        return ":" in self.address

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """The subnet; an unusual netmask is kept as a mask (libvirt accepts it)."""
        if self.netmask is not None:
            return ipaddress.ip_network(f"{self.address}/{self.netmask}", strict=False)
        return ipaddress.ip_network(f"{self.address}/{self.effective_prefix}", strict=False)

    @property
    def effective_prefix(self) -> int:
        """The prefix libvirt uses: given, from the netmask, or the address class."""
        if self.prefix is not None:
            return self.prefix
        if self.netmask is not None:
            return int(ipaddress.IPv4Address(self.netmask)).bit_count()
        if self.is_v6:
            return 64
        first = int(self.address.split(".")[0])
        return 8 if first < 128 else 16 if first < 192 else 24

    @property
    def dhcp(self) -> bool:
        """Whether this address serves DHCP (it has ranges or static hosts)."""
        return bool(self.ranges or self.hosts)


@dataclass
class DnsForwarder:
    addr: str | None = None
    domain: str | None = None


@dataclass
class DnsTxt:
    name: str
    value: str


@dataclass
class DnsSrv:
    service: str
    protocol: str
    domain: str | None = None
    target: str | None = None
    port: int | None = None
    priority: int | None = None
    weight: int | None = None


@dataclass
class DnsHost:
    ip: str
    hostnames: list[str] = field(default_factory=list)


@dataclass
class DnsDef:
    enable: str | None = None  # "yes" / "no" as written
    forward_plain_names: str | None = None
    forwarders: list[DnsForwarder] = field(default_factory=list)
    txts: list[DnsTxt] = field(default_factory=list)
    srvs: list[DnsSrv] = field(default_factory=list)
    hosts: list[DnsHost] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.enable or self.forward_plain_names or self.forwarders or self.txts
                    or self.srvs or self.hosts)


@dataclass
class RouteDef:
    address: str
    gateway: str
    family: str | None = None
    netmask: str | None = None
    prefix: int | None = None
    metric: int | None = None


@dataclass
class ForwardDef:
    mode: str = "none"
    interfaces: list[str] = field(default_factory=list)
    managed: str | None = None
    nat_ipv6: str | None = None
    nat_addr: tuple[str, str | None] | None = None
    nat_port: tuple[int, int] | None = None
    raw_pf: list[str] = field(default_factory=list)  # <pf>, <address> children


@dataclass
class NetworkDef:
    name: str
    uuid: bytes
    forward: ForwardDef = field(default_factory=ForwardDef)
    bridge: str | None = None
    bridge_zone: str | None = None
    stp: bool = True
    delay: int = 0
    mac_table_manager: str | None = None
    mtu: int | None = None
    mac: str | None = None
    domain: str | None = None
    domain_local_only: str | None = None
    dns: DnsDef = field(default_factory=DnsDef)
    port_isolated: str | None = None
    ips: list[IPDef] = field(default_factory=list)
    routes: list[RouteDef] = field(default_factory=list)
    ipv6: str | None = None
    trust_guest_rx_filters: str | None = None
    raw: dict[str, list[str]] = field(default_factory=dict)  # tag -> element XML

    @property
    def virtual(self) -> bool:
        """libvirt makes and owns the bridge (not an existing host bridge or device)."""
        return self.forward.mode in VIRTUAL_MODES

    @property
    def uuid_str(self) -> str:
        return str(uuidlib.UUID(bytes=self.uuid))

    def ipv4(self) -> list[IPDef]:
        return [ip for ip in self.ips if not ip.is_v6]

    def ipv6_addrs(self) -> list[IPDef]:
        return [ip for ip in self.ips if ip.is_v6]


# -- parsing ----------------------------------------------------------------------


def parse_xml_doc(xml: str, context: str) -> etree._Element:
    """The root element, or libvirt's report of a syntax error in ``context``."""
    parser = etree.XMLParser(resolve_entities=False, remove_comments=True)
    try:
        return etree.fromstring(xml.encode(), parser)
    except etree.XMLSyntaxError as e:
        entry = parser.error_log[0] if parser.error_log else None  # libxml2's first complaint
        line = entry.line if entry else (e.lineno or 1)
        column = entry.column if entry else 1
        message = entry.message if entry else str(e)
        lines = xml.splitlines() or [""]
        text = lines[min(max(line, 1), len(lines)) - 1]
        pointer = "-" * max(column - 1, 0) + "^"
        raise _err(ErrorCode.XML_DETAIL,
                   f"{context}:{line}: {message}\n{text}\n{pointer}") from None


def parse_network(xml: str) -> NetworkDef:
    """A definition from XML, checked as libvirtd checks it at define time."""
    root = parse_xml_doc(xml, "(network_definition)")
    if root.tag != "network":
        raise _err(ErrorCode.XML_ERROR,
                   f"XML error: expecting root element of 'network', not '{root.tag}'",
                   ErrorDomain.XML)
    return network_from_element(root)


def _text(node: etree._Element, path: str) -> str | None:
    found = node.find(path)
    if found is None or found.text is None:
        return None
    return found.text.strip()


def network_from_element(root: etree._Element) -> NetworkDef:
    """A definition from a parsed ``<network>`` element (also inside a status file)."""
    name = _text(root, "name")
    if not name:
        raise _err(ErrorCode.NO_NAME, "missing name information")
    if "/" in name:
        raise _err(ErrorCode.XML_DETAIL, "invalid char in name: /", ErrorDomain.XML)
    text = _text(root, "uuid")
    if text is None:
        net_uuid = uuidlib.uuid4().bytes
    else:
        try:
            net_uuid = uuidlib.UUID(text).bytes
        except ValueError:
            raise _internal("malformed uuid element") from None
    d = NetworkDef(name, net_uuid, ipv6=root.get("ipv6"),
                   trust_guest_rx_filters=root.get("trustGuestRxFilters"))
    fwd = root.find("forward")
    if fwd is not None:
        d.forward = _forward(fwd)
    br = root.find("bridge")
    if br is not None:
        d.bridge = br.get("name")
        d.bridge_zone = br.get("zone")
        d.stp = br.get("stp") != "off"
        delay = br.get("delay")
        if delay is not None:
            try:
                d.delay = int(delay)
            except ValueError:
                raise _xml_err(f"Invalid delay value in network '{name}'") from None
        d.mac_table_manager = br.get("macTableManager")
    mtu = root.find("mtu")
    if mtu is not None:
        size = mtu.get("size", "")
        if not size.isdigit():
            raise _xml_err(f"Invalid mtu size '{size}' in network '{name}'")
        d.mtu = int(size)
    mac = root.find("mac")
    if mac is not None:
        d.mac = _mac(mac.get("address", ""),
                     lambda v: _xml_err(f"Invalid bridge mac address '{v}' in network '{name}'"))
    dom = root.find("domain")
    if dom is not None:
        d.domain = dom.get("name")
        d.domain_local_only = dom.get("localOnly")
    dns = root.find("dns")
    if dns is not None:
        d.dns = _dns(dns, name)
    port = root.find("port")
    if port is not None:
        d.port_isolated = port.get("isolated")
    d.ips = [parse_ip(ip, name) for ip in root.findall("ip")]
    d.routes = [_route(r, name) for r in root.findall("route")]
    for tag in ("metadata", *_RAW_AFTER_DNS, *_RAW_TAIL):
        found = root.findall(tag)
        if found:
            d.raw[tag] = [parse_portgroup(e) if tag == "portgroup" else raw_xml(e)
                          for e in found]
    check(d)
    return d


def parse_portgroup(node: etree._Element) -> str:
    """A ``<portgroup>`` kept as XML once checked; ``default`` shows only when yes."""
    if not node.get("name"):
        raise _xml_err("Missing required name attribute in portgroup")
    if node.get("default") != "yes":
        node.attrib.pop("default", None)
    return raw_xml(node)


def raw_xml(elem: etree._Element) -> str:
    """An element kept as XML, printed back the way libvirtd prints its own.

    ``<metadata>`` is foreign XML libvirt passes through libxml2 as it came;
    the rest are libvirt elements in its own style (single quotes)."""
    if elem.tag == "metadata":
        elem.tail = None
        etree.indent(elem, "  ")
        return etree.tostring(elem, encoding="unicode")
    return "\n".join(_libvirt_style(elem, ""))


#: Elements libvirtd prints with an end tag even when empty.
_NEVER_SHORT = frozenset({"portgroup"})


def _libvirt_style(elem: etree._Element, prefix: str) -> list[str]:
    head = f"{prefix}<{elem.tag}{attrs(*elem.attrib.items())}"
    children = [c for c in elem if isinstance(c.tag, str)]
    text = (elem.text or "").strip()
    if text and not children:
        return [f"{head}>{esc(text)}</{elem.tag}>"]
    if not children:
        if elem.tag in _NEVER_SHORT:
            return [f"{head}>", f"{prefix}</{elem.tag}>"]
        return [head + "/>"]
    inner = [line for c in children for line in _libvirt_style(c, prefix + "  ")]
    return [f"{head}>", *inner, f"{prefix}</{elem.tag}>"]


def _forward(fwd: etree._Element) -> ForwardDef:
    mode = fwd.get("mode", "nat")
    if mode not in FORWARD_MODES:
        raise _unsupported(f"unknown forwarding type '{mode}'")
    f = ForwardDef(mode, managed=fwd.get("managed"))
    ifaces = [i.get("dev", "") for i in fwd.findall("interface")]
    dev = fwd.get("dev")
    if dev and not ifaces:
        ifaces = [dev]
    f.interfaces = ifaces
    nat = fwd.find("nat")
    if nat is not None:
        f.nat_ipv6 = nat.get("ipv6")
        addr = nat.find("address")
        if addr is not None:
            f.nat_addr = (addr.get("start", ""), addr.get("end"))
        port = nat.find("port")
        if port is not None:
            f.nat_port = (int(port.get("start", "0")), int(port.get("end", "0")))
    f.raw_pf = [raw_xml(e) for e in fwd if e.tag in ("pf", "address")]
    return f


_MAC_RE = re.compile(r"^[0-9a-fA-F]{1,2}(:[0-9a-fA-F]{1,2}){5}$")


def _mac(value: str, error: Callable[[str], VirError]) -> str:
    if not _MAC_RE.match(value):
        raise error(value)
    return ":".join(f"{int(p, 16):02x}" for p in value.split(":"))


def _addr(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if value is None:
        return None
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _lease(node: etree._Element) -> Lease | None:
    lease = node.find("lease")
    if lease is None:
        return None
    return Lease(lease.get("expiry", ""), lease.get("unit"))


def parse_ip(node: etree._Element, name: str) -> IPDef:
    address = node.get("address")
    if address is None:
        raise _xml_err(f"Missing required address attribute in network '{name}'")
    parsed = _addr(address)
    if parsed is None:
        raise _xml_err(f"Invalid address '{address}' in network '{name}'")
    family, netmask, prefix = node.get("family"), node.get("netmask"), node.get("prefix")
    if netmask is not None and prefix is not None:
        raise _unsupported(f"Network '{name}' IP address cannot have both a prefix and a netmask")
    v6 = parsed.version == 6
    if family == "ipv4" and v6:
        raise _unsupported(
            f"ipv4 family specified for non-IPv4 address '{address}' in network '{name}'")
    if family == "ipv6" and not v6:
        raise _unsupported(
            f"ipv6 family specified for non-IPv6 address '{address}' in network '{name}'")
    if netmask is not None:
        if v6:
            raise _unsupported(
                f"netmask not allowed for IPv6 address '{address}' in network '{name}'")
        if _addr(netmask) is None or ":" in netmask:
            raise _xml_err(f"Invalid netmask '{netmask}' in network '{name}'")
    ip = IPDef(address, family=family, netmask=netmask, local_ptr=node.get("localPtr"))
    if prefix is not None:
        bits = 128 if v6 else 32
        if not prefix.isdigit() or int(prefix) > bits:
            raise _unsupported(f"Invalid {'IPv6' if v6 else 'IPv4'} prefix '{prefix}' "
                               f"in network '{name}'")
        ip.prefix = int(prefix)
    tftp = node.find("tftp")
    if tftp is not None:
        ip.tftp_root = tftp.get("root")
    dhcp = node.find("dhcp")
    if dhcp is not None:
        ip.has_dhcp = True
        for r in dhcp.findall("range"):
            ip.ranges.append(parse_range(r, ip, name))
        for h in dhcp.findall("host"):
            ip.hosts.append(parse_host(h, v6, name))
        bootp = dhcp.find("bootp")
        if bootp is not None:
            ip.bootp_file, ip.bootp_server = bootp.get("file"), bootp.get("server")
    return ip


def parse_range(node: etree._Element, ip: IPDef, name: str) -> DhcpRange:
    start, end = node.get("start"), node.get("end")
    a, b = _addr(start), _addr(end)
    if a is None:
        raise _xml_err(f"Invalid dhcp range 'start' address '{start}' in network '{name}'")
    if b is None:
        raise _xml_err(f"Invalid dhcp range 'end' address '{end}' in network '{name}'")
    assert start is not None and end is not None
    net = ip.network
    where = f"{ip.address}/{ip.effective_prefix}"
    if a not in net or b not in net:
        raise _internal(f"range {start} - {end} is not entirely within network {where}",
                        ErrorDomain.NONE)
    if int(a) > int(b):
        raise _internal(f"range {start} - {end} is reversed ", ErrorDomain.NONE)
    return DhcpRange(start, end, _lease(node))


def parse_host(node: etree._Element, v6: bool, name: str, partial: bool = False) -> DhcpHost:
    """A ``<dhcp><host>``; ``partial`` allows the incomplete ones net-update deletes by."""
    host = DhcpHost(id=node.get("id"), name=node.get("name"), lease=_lease(node))
    mac = node.get("mac")
    if mac is not None:
        if v6:
            raise _xml_err(f"Invalid to specify MAC address '{mac}' in network '{name}' "
                           "IPv6 static host definition")
        host.mac = _mac(mac, lambda v: _xml_err(
            f"Cannot parse MAC address '{v}' in network '{name}'"))
    ip = node.get("ip")
    if ip is not None:
        parsed = _addr(ip)
        if parsed is None or (parsed.version == 6) != v6:
            raise _xml_err(f"Invalid IP address in static host definition "
                           f"for network '{name}'")
        host.ip = ip
    if partial:
        return host
    if v6:
        if host.id is None and host.name is None:
            raise _xml_err(f"Static host definition in IPv6 network '{name}' "
                           "must have id or name attribute")
    elif host.mac is None and host.name is None:
        raise _xml_err(f"Static host definition in IPv4 network '{name}' "
                       "must have mac or name attribute")
    if host.ip is None:
        raise _xml_err(f"Missing IP address in static host definition for network '{name}'")
    return host


def _dns(node: etree._Element, name: str) -> DnsDef:
    d = DnsDef(node.get("enable"), node.get("forwardPlainNames"))
    for f in node.findall("forwarder"):
        addr = f.get("addr")
        if addr is not None and _addr(addr) is None:
            raise _xml_err(f"Invalid forwarder IP address '{addr}' in network '{name}'")
        d.forwarders.append(DnsForwarder(addr, f.get("domain")))
    d.txts = [parse_dns_txt(t, name) for t in node.findall("txt")]
    d.srvs = [parse_dns_srv(s, name) for s in node.findall("srv")]
    d.hosts = [parse_dns_host(h, name) for h in node.findall("host")]
    return d


def parse_dns_txt(node: etree._Element, name: str) -> DnsTxt:
    txt_name = node.get("name")
    if not txt_name:
        raise _err(ErrorCode.XML_DETAIL,
                   f"missing required name attribute in DNS TXT record of network {name}")
    return DnsTxt(txt_name, node.get("value", ""))


def parse_dns_srv(node: etree._Element, name: str) -> DnsSrv:
    service = node.get("service")
    if not service:
        raise _err(ErrorCode.XML_DETAIL,
                   f"missing required service attribute in DNS SRV record of network '{name}'")
    protocol = node.get("protocol")
    if not protocol:
        raise _err(ErrorCode.XML_DETAIL, f"missing required protocol attribute in DNS SRV "
                   f"record '{service}' of network '{name}'")

    def number(attr: str) -> int | None:
        value = node.get(attr)
        if value is None:
            return None
        if not value.isdigit():
            raise _err(ErrorCode.XML_DETAIL, f"invalid {attr} attribute in DNS SRV record "
                       f"'{service}' of network '{name}'")
        return int(value)

    return DnsSrv(service, protocol, node.get("domain"), node.get("target"), number("port"),
                  number("priority"), number("weight"))


def parse_dns_host(node: etree._Element, name: str) -> DnsHost:
    ip = node.get("ip")
    if ip is None or _addr(ip) is None:
        raise _err(ErrorCode.XML_DETAIL, f"Missing IP address in network '{name}' DNS HOST record")
    names = [(h.text or "").strip() for h in node.findall("hostname")]
    if not names:
        raise _err(ErrorCode.XML_DETAIL,
                   f"Missing hostname in network '{name}' DNS HOST record")
    return DnsHost(ip, names)


def _route(node: etree._Element, name: str) -> RouteDef:
    address, gateway = node.get("address"), node.get("gateway")
    if address is None:
        raise _xml_err(f"{name}: Missing required address attribute in route definition")
    if gateway is None:
        raise _xml_err(f"{name}: Missing required gateway attribute in route definition")
    if _addr(address) is None:
        raise _xml_err(f"{name}: Bad network address '{address}' in route definition")
    if _addr(gateway) is None:
        raise _xml_err(f"{name}: Bad gateway address '{gateway}' in route definition")
    prefix, metric = node.get("prefix"), node.get("metric")
    return RouteDef(address, gateway, node.get("family"), node.get("netmask"),
                    int(prefix) if prefix is not None and prefix.isdigit() else None,
                    int(metric) if metric is not None and metric.isdigit() else None)


def check(d: NetworkDef) -> None:
    """The checks libvirt makes of a whole definition after parsing it."""
    mode = d.forward.mode
    if mode in _NEEDS_IP and not d.ips:
        raise _xml_err(f"{mode} forwarding requested, but no IP address provided "
                       f"for network '{d.name}'")
    if not d.virtual and d.ips:
        raise _unsupported(f"Unsupported <ip> element in network {d.name} "
                           f"with forward mode='{mode}'")
    if sum(1 for ip in d.ipv4() if ip.dhcp) > 1:
        raise _unsupported("Multiple IPv4 dhcp sections found -- dhcp is supported only for "
                           "a single IPv4 address on each network")
    if sum(1 for ip in d.ipv6_addrs() if ip.dhcp) > 1:
        raise _unsupported("Multiple IPv6 dhcp sections found -- dhcp is supported only for "
                           "a single IPv6 address on each network")


# -- defaults libvirtd fills in at define time -------------------------------------------


def random_mac() -> str:
    """A MAC in QEMU's 52:54:00 range, as libvirt gives a bridge without one."""
    return "52:54:00:" + ":".join(f"{random.randrange(256):02x}" for _ in range(3))


def fill_defaults(d: NetworkDef, taken: Iterable[str], exists: Callable[[str], bool]) -> None:
    """Bridge name and MAC as libvirtd assigns them: a given bridge must not be another
    network's; a missing one (or a ``%d`` template) is the lowest ``virbrN`` free both
    among the networks and the host's devices."""
    if not d.virtual:
        return
    used = set(taken)
    if d.bridge and "%d" not in d.bridge:
        if d.bridge in used:
            raise _internal(f"bridge name '{d.bridge}' already in use.")
    else:
        template = d.bridge or "virbr%d"
        n = 0
        while True:
            candidate = template.replace("%d", str(n), 1)
            if candidate not in used and not exists(candidate):
                break
            n += 1
        d.bridge = candidate
    if d.mac is None:
        d.mac = random_mac()


# -- formatting ---------------------------------------------------------------------


def esc(text: str) -> str:
    """libvirt's escaping of text and attribute values."""
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("'", "&apos;"))


def attrs(*pairs: tuple[str, object]) -> str:
    """`` a='x' b='y'`` for the pairs whose value is set."""
    return "".join(f" {k}='{esc(str(v))}'" for k, v in pairs if v is not None)


def _indent(raw: str, prefix: str) -> list[str]:
    return [prefix + line for line in raw.splitlines()]


def format_network(d: NetworkDef, connections: int = 0) -> str:
    """The XML libvirtd shows; ``connections`` counts the ports of a running network."""
    top = attrs(("connections", connections or None), ("ipv6", d.ipv6),
                ("trustGuestRxFilters", d.trust_guest_rx_filters))
    out = [f"<network{top}>",
           f"  <name>{esc(d.name)}</name>",
           f"  <uuid>{d.uuid_str}</uuid>"]
    for raw in d.raw.get("metadata", []):
        out += _indent(raw, "  ")
    out += _format_forward(d.forward)
    if d.virtual:
        if d.bridge is not None:
            out.append(f"  <bridge{attrs(('name', d.bridge), ('zone', d.bridge_zone))} "
                       f"stp='{'on' if d.stp else 'off'}' delay='{d.delay}'"
                       f"{attrs(('macTableManager', d.mac_table_manager))}/>")
    elif d.bridge is not None or d.bridge_zone or d.mac_table_manager:
        a = attrs(("name", d.bridge), ("zone", d.bridge_zone),
                  ("macTableManager", d.mac_table_manager))
        out.append(f"  <bridge{a}/>")
    if d.mtu is not None:
        out.append(f"  <mtu size='{d.mtu}'/>")
    if d.mac is not None:
        out.append(f"  <mac address='{d.mac}'/>")
    if d.domain is not None:
        out.append(f"  <domain{attrs(('name', d.domain), ('localOnly', d.domain_local_only))}/>")
    out += _format_dns(d.dns)
    for tag in _RAW_AFTER_DNS:
        for raw in d.raw.get(tag, []):
            out += _indent(raw, "  ")
    if d.port_isolated is not None:
        out.append(f"  <port isolated='{esc(d.port_isolated)}'/>")
    for ip in d.ips:
        out += format_ip(ip, "  ")
    for r in d.routes:
        a = attrs(("family", r.family), ("address", r.address), ("netmask", r.netmask),
                  ("prefix", r.prefix), ("gateway", r.gateway), ("metric", r.metric))
        out.append(f"  <route{a}/>")
    for tag in _RAW_TAIL:
        for raw in d.raw.get(tag, []):
            out += _indent(raw, "  ")
    out.append("</network>")
    return "\n".join(out) + "\n"


def _format_forward(f: ForwardDef) -> list[str]:
    if f.mode == "none":
        return []
    dev = f.interfaces[0] if f.interfaces and f.mode != "hostdev" else None
    head = f"  <forward{attrs(('dev', dev), ('mode', f.mode), ('managed', f.managed))}"
    inner: list[str] = []
    if f.mode == "nat" and (f.nat_addr or f.nat_port or f.nat_ipv6):
        inner.append(f"    <nat{attrs(('ipv6', f.nat_ipv6))}>")
        if f.nat_addr:
            a = attrs(("start", f.nat_addr[0]), ("end", f.nat_addr[1]))
            inner.append(f"      <address{a}/>")
        if f.nat_port:
            inner.append(f"      <port start='{f.nat_port[0]}' end='{f.nat_port[1]}'/>")
        inner.append("    </nat>")
    for raw in f.raw_pf:
        inner += _indent(raw, "    ")
    inner += [f"    <interface dev='{esc(i)}'/>" for i in f.interfaces]
    if not inner:
        return [head + "/>"]
    return [head + ">", *inner, "  </forward>"]


def _format_dns(d: DnsDef) -> list[str]:
    if d.empty():
        return []
    head = f"  <dns{attrs(('enable', d.enable), ('forwardPlainNames', d.forward_plain_names))}"
    inner = [f"    <forwarder{attrs(('domain', f.domain), ('addr', f.addr))}/>"
             for f in d.forwarders]
    inner += [format_dns_txt(t, "    ") for t in d.txts]
    inner += [format_dns_srv(s, "    ") for s in d.srvs]
    for h in d.hosts:
        inner += format_dns_host(h, "    ")
    if not inner:
        return [head + "/>"]
    return [head + ">", *inner, "  </dns>"]


def format_dns_txt(t: DnsTxt, prefix: str = "") -> str:
    return f"{prefix}<txt{attrs(('name', t.name), ('value', t.value))}/>"


def format_dns_srv(s: DnsSrv, prefix: str = "") -> str:
    a = attrs(("service", s.service), ("protocol", s.protocol), ("domain", s.domain),
              ("target", s.target), ("port", s.port), ("priority", s.priority),
              ("weight", s.weight))
    return f"{prefix}<srv{a}/>"


def format_dns_host(h: DnsHost, prefix: str = "") -> list[str]:
    return [f"{prefix}<host ip='{esc(h.ip)}'>",
            *(f"{prefix}  <hostname>{esc(n)}</hostname>" for n in h.hostnames),
            f"{prefix}</host>"]


def _format_lease(lease: Lease | None, prefix: str) -> list[str]:
    if lease is None:
        return []
    return [f"{prefix}<lease{attrs(('expiry', lease.expiry), ('unit', lease.unit))}/>"]


def format_range(r: DhcpRange, prefix: str = "") -> list[str]:
    head = f"{prefix}<range start='{esc(r.start)}' end='{esc(r.end)}'"
    if r.lease is None:
        return [head + "/>"]
    return [head + ">", *_format_lease(r.lease, prefix + "  "), f"{prefix}</range>"]


def format_host(h: DhcpHost, prefix: str = "") -> list[str]:
    head = f"{prefix}<host{attrs(('mac', h.mac), ('id', h.id), ('name', h.name), ('ip', h.ip))}"
    if h.lease is None:
        return [head + "/>"]
    return [head + ">", *_format_lease(h.lease, prefix + "  "), f"{prefix}</host>"]


def format_ip(ip: IPDef, prefix: str) -> list[str]:
    a = attrs(("family", ip.family), ("address", ip.address), ("netmask", ip.netmask),
              ("prefix", ip.prefix), ("localPtr", ip.local_ptr))
    out = [f"{prefix}<ip{a}>"]
    if ip.tftp_root is not None:
        out.append(f"{prefix}  <tftp root='{esc(ip.tftp_root)}'/>")
    if ip.has_dhcp or ip.ranges or ip.hosts or ip.bootp_file:
        inner: list[str] = []
        for r in ip.ranges:
            inner += format_range(r, prefix + "    ")
        for h in ip.hosts:
            inner += format_host(h, prefix + "    ")
        if ip.bootp_file is not None:
            a = attrs(("file", ip.bootp_file), ("server", ip.bootp_server))
            inner.append(f"{prefix}    <bootp{a}/>")
        out += [f"{prefix}  <dhcp>", *inner, f"{prefix}  </dhcp>"] if inner \
            else [f"{prefix}  <dhcp/>"]
    out.append(f"{prefix}</ip>")
    return out
