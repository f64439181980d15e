"""Interface XML: parsing with libvirt's errors, formatting as libvirt 9.0 prints,
and live links described as its udev backend does."""

from __future__ import annotations

import socket

import pytest
from lxml import etree

from drivers.interface import live
from drivers.interface.iface_xml import format_interface, parse_interface
from drivers.interface.rtnl import Addr, Link, Snapshot
from protocol.errors import ErrorCode, VirError

SCHEMA = "/usr/share/libvirt/schemas/interface.rng"

BRIDGE = """\
<interface type='bridge' name='br0'>
  <start mode='onboot'/>
  <mtu size='1400'/>
  <protocol family='ipv4'>
    <ip address='192.0.2.1' prefix='24'/>
    <route gateway='192.0.2.254'/>
  </protocol>
  <protocol family='ipv6'>
    <autoconf/>
    <dhcp peerdns='no'/>
    <ip address='2001:db8::1' prefix='64'/>
  </protocol>
  <bridge stp='off' delay='0.5'>
    <interface type='ethernet' name='eth1'>
      <mac address='52:54:00:12:34:56'/>
    </interface>
    <interface type='bond' name='bond0'>
      <bond mode='active-backup'>
        <miimon freq='100' updelay='10' carrier='netif'/>
        <interface type='ethernet' name='eth2'>
        </interface>
      </bond>
    </interface>
  </bridge>
</interface>
"""

BOND = """\
<interface type='bond' name='bond1'>
  <link speed='1000' state='up'/>
  <bond mode='802.3ad'>
    <arpmon interval='100' target='192.0.2.9' validate='backup'/>
    <interface type='ethernet' name='eth3'>
      <link state='down'/>
      <mac address='52:54:00:00:00:03'/>
    </interface>
  </bond>
</interface>
"""

VLAN = """\
<interface type='vlan' name='eth0.42'>
  <protocol family='ipv4'>
    <dhcp/>
  </protocol>
  <vlan tag='42'>
    <interface name='eth0'/>
  </vlan>
</interface>
"""


def _valid(xml: str) -> bool:
    schema = etree.RelaxNG(etree.parse(SCHEMA))
    return schema.validate(etree.fromstring(xml.encode()))


@pytest.mark.parametrize("xml", [BRIDGE, BOND, VLAN])
def test_round_trip_is_exact_and_valid(xml: str) -> None:
    assert format_interface(parse_interface(xml)) == xml
    assert _valid(xml)


def test_input_is_normalised() -> None:
    d = parse_interface("<interface type=\"ethernet\" name=\"eth0\">"
                        "<mac address=\"aa:bb:cc:dd:ee:ff\"/>"
                        "<mtu size=' 9000'/><start mode='none'/></interface>")
    assert format_interface(d) == (
        "<interface type='ethernet' name='eth0'>\n"
        "  <start mode='none'/>\n"
        "  <mtu size='9000'/>\n"
        "  <mac address='aa:bb:cc:dd:ee:ff'/>\n"
        "</interface>\n")


def test_members_lose_top_level_only_parts_and_bridges_lose_link() -> None:
    d = parse_interface(
        "<interface type='bridge' name='br1'><link state='up'/><bridge>"
        "<interface type='ethernet' name='e'><mtu size='1'/><start mode='onboot'/>"
        "<link state='up'/></interface></bridge></interface>")
    assert format_interface(d) == (
        "<interface type='bridge' name='br1'>\n"
        "  <bridge>\n"
        "    <interface type='ethernet' name='e'>\n"
        "      <link state='up'/>\n"
        "    </interface>\n"
        "  </bridge>\n"
        "</interface>\n")


@pytest.mark.parametrize(("xml", "message"), [
    ("<network/>", "XML error: unexpected root element <network>, expecting <interface>"),
    ("<interface name='x'/>",
     "XML error: Missing required attribute 'type' in element 'interface'"),
    ("<interface type='wifi' name='x'/>",
     "XML error: Invalid value for attribute 'type' in element 'interface': 'wifi'."),
    ("<interface type='ethernet'/>", "XML error: interface has no name"),
    ("<interface type='bridge' name='b'/>",
     "XML error: bridge interface misses the bridge element"),
    ("<interface type='bridge' name='b'><bridge stp='yes'/></interface>",
     "XML error: bridge interface stp should be on or off got yes"),
    (("<interface type='bridge' name='b'><bridge><interface type='bridge' name='c'>"
      "<bridge/></interface></bridge></interface>"),
     "XML error: interface has unsupported type 'bridge'"),
    ("<interface type='bond' name='b'><bond><interface type='vlan' name='c'/></bond></interface>",
     "XML error: interface has unsupported type 'vlan'"),
    ("<interface type='bond' name='b'><bond mode='fast'/></interface>",
     "XML error: unknown bonding mode fast"),
    ("<interface type='bond' name='b'><bond><miimon/></bond></interface>",
     "XML error: bond interface miimon freq missing or invalid"),
    ("<interface type='bond' name='b'><bond><arpmon interval='1'/></bond></interface>",
     "XML error: bond interface arpmon target missing"),
    ("<interface type='vlan' name='v'><vlan/></interface>",
     "XML error: vlan interface misses the tag attribute"),
    ("<interface type='vlan' name='v'><vlan tag='3'/></interface>",
     "XML error: vlan interface misses name attribute"),
    ("<interface type='ethernet' name='e'><mtu size='100001'/></interface>",
     "XML error: interface mtu value is improper"),
    ("<interface type='ethernet' name='e'><start mode='later'/></interface>",
     "XML error: unknown interface startmode later"),
    ("<interface type='ethernet' name='e'><protocol/></interface>",
     "XML error: protocol misses the family attribute"),
    ("<interface type='ethernet' name='e'><protocol family='ipx'/></interface>",
     "XML error: unsupported protocol family 'ipx'"),
    ("<interface type='ethernet' name='e'><link state='sleepy'/></interface>",
     "XML error: unknown link state: sleepy"),
])
def test_errors(xml: str, message: str) -> None:
    with pytest.raises(VirError) as e:
        parse_interface(xml)
    assert e.value.code == ErrorCode.XML_ERROR
    assert e.value.message == message


def test_malformed() -> None:
    with pytest.raises(VirError) as e:
        parse_interface("<interface")
    assert e.value.code == ErrorCode.XML_DETAIL


def _link(index: int, name: str, **kw: object) -> Link:
    base: dict[str, object] = {"mac": f"52:54:00:00:00:{index:02x}", "mtu": 1500,
                               "operstate": "down", "up": False, "kind": None,
                               "master": None, "parent": None}
    base.update(kw)
    return Link(index, name, **base)  # type: ignore[arg-type]


def test_live_bridge_as_udev_shows_it() -> None:
    br = _link(1, "br9", kind="bridge", operstate="unknown", up=True, stp_state=1,
               forward_delay=1500, addrs=[Addr(socket.AF_INET, "10.0.0.1", 24, 0),
                                          Addr(socket.AF_INET6, "fe80::1", 64, 253)])
    snap = Snapshot({"br9": br,
                     "zz-port": _link(2, "zz-port", master=1),
                     "a-port": _link(3, "a-port", master=1, operstate="lowerlayerdown"),
                     "vnet0": _link(4, "vnet0", master=1, kind="tun"),
                     "tap0": _link(5, "tap0", kind="tun")})
    assert format_interface(live.describe(snap, br)) == (
        "<interface type='bridge' name='br9'>\n"
        "  <mtu size='1500'/>\n"
        "  <bridge stp='on' delay='1500'>\n"
        "    <interface type='ethernet' name='a-port'>\n"
        "      <link state='lowerlayerdown'/>\n"
        "      <mac address='52:54:00:00:00:03'/>\n"
        "    </interface>\n"
        "    <interface type='ethernet' name='zz-port'>\n"
        "      <link state='down'/>\n"
        "      <mac address='52:54:00:00:00:02'/>\n"
        "    </interface>\n"
        "  </bridge>\n"
        "</interface>\n")
    with_addrs = format_interface(live.describe(snap, br, addresses=True))
    assert "<protocol family='ipv4'>\n    <ip address='10.0.0.1' prefix='24'/>" in with_addrs
    assert "fe80" not in with_addrs  # link-local addresses are not configuration
    listed = [name for name, link in snap.links.items() if live.listed(snap, link)]
    assert listed == ["br9"]  # ports and taps are left out


def test_live_vlan_names_its_device() -> None:
    parent = _link(1, "eth0", operstate="up", up=True)
    vlan = _link(2, "eth0.7", kind="vlan", vlan_id=7, parent=1)
    snap = Snapshot({"eth0": parent, "eth0.7": vlan})
    out = format_interface(live.describe(snap, vlan))
    assert "<vlan tag='7'>\n    <interface name='eth0'/>\n  </vlan>" in out
    assert out.startswith("<interface type='vlan' name='eth0.7'>\n  <mtu size='1500'/>\n")
