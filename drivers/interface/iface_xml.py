"""Host interface definitions: ``<interface>`` XML (interface.rng) to an
InterfaceDef and back, printed byte for byte as libvirt 9.0 prints them.

The same model serves a stored definition and a description of a live link, so
both go through one formatter; only the top-level interface carries ``<start>``,
``<mtu>`` and ``<protocol>``, as in libvirt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from protocol.errors import ErrorCode, ErrorDomain, VirError

TYPES = ("ethernet", "bridge", "bond", "vlan")
START_MODES = ("onboot", "hotplug", "none")
#: libvirt's link states (virNetDevIfState); the kernel's operstate names, lower case.
LINK_STATES = ("unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up")
BOND_MODES = ("balance-rr", "active-backup", "balance-xor", "broadcast", "802.3ad",
              "balance-tlb", "balance-alb")
MII_CARRIERS = ("ioctl", "netif")
ARP_VALIDATE = ("active", "backup", "all")

#: Which member types each container type accepts (None: a top-level interface).
_CHILD_TYPES: dict[str | None, tuple[str, ...]] = {
    None: TYPES,
    "bridge": ("ethernet", "bond", "vlan"),
    "bond": ("ethernet",),
    "ethernet": (),
    "vlan": (),
}


@dataclass
class LinkState:
    """``<link speed state>``: the kernel's view, shown only when known."""

    speed: int = 0
    state: str = ""


@dataclass
class IPAddr:
    address: str
    prefix: int = 0


@dataclass
class Protocol:
    family: str  # "ipv4" or "ipv6"
    dhcp: bool = False
    peerdns: bool | None = None
    autoconf: bool = False
    ips: list[IPAddr] = field(default_factory=list)
    gateway: str | None = None


@dataclass
class Bond:
    mode: str | None = None
    monitor: str | None = None  # "mii", "arp" or None
    freq: int = 0
    downdelay: int = 0
    updelay: int = 0
    carrier: str | None = None
    interval: int = 0
    target: str | None = None
    validate: str | None = None


@dataclass
class InterfaceDef:
    type: str
    name: str | None
    startmode: str | None = None
    mtu: int = 0
    protocols: list[Protocol] = field(default_factory=list)
    link: LinkState = field(default_factory=LinkState)
    mac: str | None = None
    stp: bool | None = None  # bridge
    delay: str | None = None  # bridge forward delay, kept as written
    bond: Bond | None = None
    members: list[InterfaceDef] = field(default_factory=list)  # bridge ports, bond slaves
    vlan_tag: str | None = None
    vlan_dev: str | None = None


def _xml_error(message: str, domain: ErrorDomain = ErrorDomain.INTERFACE) -> VirError:
    return VirError(ErrorCode.XML_ERROR, f"XML error: {message}", domain)


# -- parsing --------------------------------------------------------------------------


def parse_interface(xml: str) -> InterfaceDef:
    """A definition from XML, with libvirt's errors for what it rejects."""
    try:
        root = etree.fromstring(xml.encode(), etree.XMLParser(resolve_entities=False))
    except etree.XMLSyntaxError as e:
        raise VirError(ErrorCode.XML_DETAIL, f"XML error: {e}", ErrorDomain.XML) from None
    if root.tag != "interface":
        raise _xml_error(f"unexpected root element <{root.tag}>, expecting <interface>")
    return _parse(root, None)


def _parse(node: etree._Element, parent: str | None) -> InterfaceDef:
    kind = node.get("type")
    if kind is None:
        raise _xml_error("Missing required attribute 'type' in element 'interface'",
                         ErrorDomain.XML)
    if kind not in TYPES:
        raise _xml_error(f"Invalid value for attribute 'type' in element 'interface': "
                         f"'{kind}'.", ErrorDomain.XML)
    if kind not in _CHILD_TYPES[parent]:
        raise _xml_error(f"interface has unsupported type '{kind}'")
    name = node.get("name")
    if name is None:
        raise _xml_error("interface has no name")
    d = InterfaceDef(kind, name)
    if parent is None:
        d.startmode = _startmode(node)
        d.mtu = _mtu(node)
        d.protocols = [_protocol(p) for p in node.findall("protocol")]
    if kind != "bridge":
        lnk = node.find("link")
        if lnk is not None:
            d.link = _link(lnk)
    if kind == "ethernet":
        mac = node.find("mac")
        d.mac = mac.get("address") if mac is not None else None
    elif kind == "bridge":
        _parse_bridge(node, d)
    elif kind == "bond":
        _parse_bond(node, d)
    else:
        _parse_vlan(node, d)
    return d


def _startmode(node: etree._Element) -> str | None:
    start = node.find("start")
    mode = start.get("mode") if start is not None else None
    if mode is not None and mode not in START_MODES:
        raise _xml_error(f"unknown interface startmode {mode}")
    return mode


def _mtu(node: etree._Element) -> int:
    mtu = node.find("mtu")
    text = mtu.get("size") if mtu is not None else None
    if text is None:
        return 0
    try:
        value = int(text.strip())
    except ValueError:
        value = -1
    if value < 0 or value > 100000:
        raise _xml_error("interface mtu value is improper")
    return value


def _link(node: etree._Element) -> LinkState:
    lnk = LinkState()
    speed = node.get("speed")
    if speed is not None:
        try:
            lnk.speed = int(speed)
        except ValueError:
            raise _xml_error(f"Unable to parse link speed: {speed}") from None
    state = node.get("state")
    if state is not None:
        if state not in LINK_STATES:
            raise _xml_error(f"unknown link state: {state}")
        lnk.state = state
    return lnk


def _protocol(node: etree._Element) -> Protocol:
    family = node.get("family")
    if family is None:
        raise _xml_error("protocol misses the family attribute")
    if family not in ("ipv4", "ipv6"):
        raise _xml_error(f"unsupported protocol family '{family}'")
    proto = Protocol(family)
    route = node.find("route")
    proto.gateway = route.get("gateway") if route is not None else None
    if family == "ipv6" and node.find("autoconf") is not None:
        proto.autoconf = True
    dhcp = node.find("dhcp")
    if dhcp is not None:
        proto.dhcp = True
        peerdns = dhcp.get("peerdns")
        if peerdns is not None:
            if peerdns not in ("yes", "no"):
                raise _xml_error(f"Invalid value for attribute 'peerdns' in element 'dhcp': "
                                 f"'{peerdns}'. Expected 'yes' or 'no'", ErrorDomain.XML)
            proto.peerdns = peerdns == "yes"
    for ip in node.findall("ip"):
        address = ip.get("address")
        if address is None:
            continue
        prefix = ip.get("prefix")
        try:
            value = int(prefix, 0) if prefix is not None else 0
        except ValueError:
            raise _xml_error(f"Invalid value for attribute 'prefix' in element 'ip': "
                             f"'{prefix}'. Expected integer value", ErrorDomain.XML) from None
        proto.ips.append(IPAddr(address, value))
    return proto


def _parse_bridge(node: etree._Element, d: InterfaceDef) -> None:
    bridge = node.find("bridge")
    if bridge is None:
        raise _xml_error("bridge interface misses the bridge element")
    stp = bridge.get("stp")
    if stp is not None:
        if stp not in ("on", "off"):
            raise _xml_error(f"bridge interface stp should be on or off got {stp}")
        d.stp = stp == "on"
    d.delay = bridge.get("delay")
    d.members = [_parse(child, "bridge") for child in bridge.findall("interface")]


def _int_attr(node: etree._Element, attr: str, what: str, required: bool) -> int:
    text = node.get(attr)
    if text is None:
        if required:
            raise _xml_error(f"{what} missing or invalid")
        return 0
    try:
        return int(text)
    except ValueError:
        raise _xml_error(f"{what} {'missing or ' if required else ''}invalid") from None


def _parse_bond(node: etree._Element, d: InterfaceDef) -> None:
    element = node.find("bond")
    if element is None:
        raise _xml_error("bond interface misses the bond element")
    bond = Bond()
    mode = element.get("mode")
    if mode is not None and mode not in BOND_MODES:
        raise _xml_error(f"unknown bonding mode {mode}")
    bond.mode = mode
    d.members = [_parse(child, "bond") for child in element.findall("interface")]
    mii, arp = element.find("miimon"), element.find("arpmon")
    if mii is not None:
        bond.monitor = "mii"
        bond.freq = _int_attr(mii, "freq", "bond interface miimon freq", True)
        bond.downdelay = _int_attr(mii, "downdelay", "bond interface miimon downdelay", False)
        bond.updelay = _int_attr(mii, "updelay", "bond interface miimon updelay", False)
        carrier = mii.get("carrier")
        if carrier is not None and carrier not in MII_CARRIERS:
            raise _xml_error(f"unknown mii bonding carrier {carrier}")
        bond.carrier = carrier
    elif arp is not None:
        bond.monitor = "arp"
        bond.interval = _int_attr(arp, "interval", "bond interface arpmon interval", True)
        bond.target = arp.get("target")
        if bond.target is None:
            raise _xml_error("bond interface arpmon target missing")
        validate = arp.get("validate")
        if validate is not None and validate not in ARP_VALIDATE:
            raise _xml_error(f"unknown arp bonding validate {validate}")
        bond.validate = validate
    d.bond = bond


def _parse_vlan(node: etree._Element, d: InterfaceDef) -> None:
    vlan = node.find("vlan")
    if vlan is None:
        raise _xml_error("vlan interface misses the vlan element")
    d.vlan_tag = vlan.get("tag")
    if d.vlan_tag is None:
        raise _xml_error("vlan interface misses the tag attribute")
    dev = vlan.find("interface")
    d.vlan_dev = dev.get("name") if dev is not None else None
    if d.vlan_dev is None:
        raise _xml_error("vlan interface misses name attribute")


# -- formatting -----------------------------------------------------------------------


def _esc(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("'", "&apos;").replace('"', "&quot;"))


def format_interface(d: InterfaceDef) -> str:
    out: list[str] = []
    _format(d, None, "", out)
    return "".join(out)


def _format(d: InterfaceDef, parent: str | None, ind: str, out: list[str]) -> None:
    name = f"name='{_esc(d.name)}'" if d.name is not None else ""
    out.append(f"{ind}<interface type='{d.type}' {name}>\n")
    inner = ind + "  "
    if parent is None:
        if d.startmode:
            out.append(f"{inner}<start mode='{d.startmode}'/>\n")
        if d.mtu:
            out.append(f"{inner}<mtu size='{d.mtu}'/>\n")
        for proto in d.protocols:
            _format_protocol(proto, inner, out)
    if d.type != "bridge" and (d.link.speed or d.link.state):
        speed = f" speed='{d.link.speed}'" if d.link.speed else ""
        state = f" state='{d.link.state}'" if d.link.state else ""
        out.append(f"{inner}<link{speed}{state}/>\n")
    if d.type == "ethernet":
        if d.mac:
            out.append(f"{inner}<mac address='{_esc(d.mac)}'/>\n")
    elif d.type == "bridge":
        stp = "" if d.stp is None else f" stp='{'on' if d.stp else 'off'}'"
        delay = f" delay='{_esc(d.delay)}'" if d.delay is not None else ""
        out.append(f"{inner}<bridge{stp}{delay}>\n")
        for member in d.members:
            _format(member, "bridge", inner + "  ", out)
        out.append(f"{inner}</bridge>\n")
    elif d.type == "bond":
        _format_bond(d, inner, out)
    elif d.vlan_tag is not None:
        if d.vlan_dev is not None:
            out.append(f"{inner}<vlan tag='{_esc(d.vlan_tag)}'>\n"
                       f"{inner}  <interface name='{_esc(d.vlan_dev)}'/>\n{inner}</vlan>\n")
        else:
            out.append(f"{inner}<vlan tag='{_esc(d.vlan_tag)}'/>\n")
    out.append(f"{ind}</interface>\n")


def _format_protocol(proto: Protocol, ind: str, out: list[str]) -> None:
    out.append(f"{ind}<protocol family='{proto.family}'>\n")
    inner = ind + "  "
    if proto.autoconf:
        out.append(f"{inner}<autoconf/>\n")
    if proto.dhcp:
        peerdns = "" if proto.peerdns is None else f" peerdns='{'yes' if proto.peerdns else 'no'}'"
        out.append(f"{inner}<dhcp{peerdns}/>\n")
    for ip in proto.ips:
        prefix = f" prefix='{ip.prefix}'" if ip.prefix else ""
        out.append(f"{inner}<ip address='{_esc(ip.address)}'{prefix}/>\n")
    if proto.gateway is not None:
        out.append(f"{inner}<route gateway='{_esc(proto.gateway)}'/>\n")
    out.append(f"{ind}</protocol>\n")


def _format_bond(d: InterfaceDef, ind: str, out: list[str]) -> None:
    bond = d.bond or Bond()
    mode = f" mode='{bond.mode}'" if bond.mode else ""
    out.append(f"{ind}<bond{mode}>\n")
    inner = ind + "  "
    if bond.monitor == "mii":
        extra = f" downdelay='{bond.downdelay}'" if bond.downdelay > 0 else ""
        extra += f" updelay='{bond.updelay}'" if bond.updelay > 0 else ""
        extra += f" carrier='{bond.carrier}'" if bond.carrier else ""
        out.append(f"{inner}<miimon freq='{bond.freq}'{extra}/>\n")
    elif bond.monitor == "arp":
        validate = f" validate='{bond.validate}'" if bond.validate else ""
        out.append(f"{inner}<arpmon interval='{bond.interval}' "
                   f"target='{_esc(bond.target or '')}'{validate}/>\n")
    for member in d.members:
        _format(member, "bond", inner, out)
    out.append(f"{ind}</bond>\n")
