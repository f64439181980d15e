"""Network XML as libvirtd 9.0 parses, checks, prints and updates it.

The expected texts are what the reference libvirtd printed for the same input
(uuid and MAC given, since it makes them up when missing).
"""

from __future__ import annotations

import subprocess
import textwrap

import pytest

from drivers.network import update
from drivers.network.network_xml import fill_defaults, format_network, parse_network
from drivers.network.port_xml import parse_port
from protocol.errors import ErrorCode, ErrorDomain, VirError

UUID = "ce116a34-59d0-4106-9ac6-d1ac8f1a3958"

NAT = f"""<network>
  <name>n1</name>
  <uuid>{UUID}</uuid>
  <forward mode='nat'/>
  <bridge name='virbr1' stp='on' delay='0'/>
  <mac address='52:54:00:1f:1c:41'/>
  <ip address='10.77.1.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='10.77.1.2' end='10.77.1.254'/>
      <host mac='52:54:00:aa:bb:cc' name='h1' ip='10.77.1.10'/>
    </dhcp>
  </ip>
</network>
"""

FULL = f"""<network ipv6='yes' trustGuestRxFilters='no'>
  <name>n2</name>
  <uuid>{UUID}</uuid>
  <forward dev='eth0' mode='route'>
    <interface dev='eth0'/>
  </forward>
  <bridge name='ncb0' stp='off' delay='2'/>
  <mtu size='9000'/>
  <mac address='52:54:00:12:0a:5d'/>
  <domain name='example.org' localOnly='yes'/>
  <dns enable='yes' forwardPlainNames='no'>
    <forwarder addr='8.8.8.8'/>
    <forwarder domain='example.com' addr='8.8.4.4'/>
    <txt name='example' value='example value'/>
    <srv service='name' protocol='tcp' domain='test-domain-name' target='.' port='1024' priority='10' weight='10'/>
    <host ip='192.168.122.2'>
      <hostname>myhost</hostname>
      <hostname>myhostalias</hostname>
    </host>
  </dns>
  <port isolated='yes'/>
  <ip address='10.77.2.1' prefix='24'>
    <dhcp>
      <range start='10.77.2.2' end='10.77.2.9'>
        <lease expiry='1' unit='hours'/>
      </range>
      <host mac='52:54:00:aa:bb:cd' name='h2' ip='10.77.2.10'/>
      <bootp file='pxelinux.0' server='10.77.2.1'/>
    </dhcp>
  </ip>
  <ip family='ipv6' address='2001:db8:ca2:2::1' prefix='64'>
    <dhcp>
      <range start='2001:db8:ca2:2:1::10' end='2001:db8:ca2:2:1::ff'/>
      <host id='0:4:7e:7d:f0:7d:a8:bc:c5:d2:13:32:11:ed:16:ea:84:63' name='h6' ip='2001:db8:ca2:2:3::1'/>
    </dhcp>
  </ip>
  <route address='192.168.222.0' prefix='24' gateway='10.77.2.2'/>
  <route family='ipv6' address='2001:db9:ca1:1::' prefix='64' gateway='2001:db8:ca2:2::2'/>
</network>
"""


def _fmt(xml: str) -> str:
    return format_network(parse_network(xml))


@pytest.mark.parametrize("xml", [NAT, FULL], ids=["nat", "full"])
def test_round_trip(xml: str) -> None:
    assert _fmt(xml) == xml


def test_schema_valid(tmp_path) -> None:
    for i, xml in enumerate((NAT, FULL)):
        path = tmp_path / f"{i}.xml"
        path.write_text(_fmt(xml))
        res = subprocess.run(["virt-xml-validate", str(path), "network"], capture_output=True,
                             text=True, check=False)
        assert res.returncode == 0, res.stderr


#: Elements the model keeps as XML, NAT addresses and ports, tftp, leases, localPtr;
#: RAW_SHOWN is what the reference libvirtd printed for RAW.
RAW = """<network>
  <name>netcore-raw</name>
  <uuid>11111111-aaaa-3333-4444-555555555555</uuid>
  <metadata><app1:foo xmlns:app1="http://app1.org/app1/">fooish</app1:foo></metadata>
  <forward mode='nat'>
    <nat ipv6='yes'>
      <address start='1.2.3.4' end='1.2.3.10'/>
      <port start='500' end='1000'/>
    </nat>
  </forward>
  <bridge name='ncraw0' macTableManager='libvirt'/>
  <mac address='52:54:00:12:0a:5e'/>
  <bandwidth>
    <inbound average='1000' peak='5000' burst='1024'/>
    <outbound average='128' peak='256' burst='256'/>
  </bandwidth>
  <portgroup name='engineering' default='yes'>
    <bandwidth>
      <inbound average='1000' peak='5000' burst='5120'/>
    </bandwidth>
  </portgroup>
  <portgroup name='sales' trustGuestRxFilters='no'/>
  <ip address='10.77.9.1' prefix='24' localPtr='yes'>
    <tftp root='/srv/tftp'/>
    <dhcp>
      <host mac='52:54:00:aa:bb:cc' ip='10.77.9.10'>
        <lease expiry='30' unit='minutes'/>
      </host>
      <bootp file='pxelinux.0'/>
    </dhcp>
  </ip>
  <ip family='ipv6' address='fd00:1::1' prefix='64'/>
</network>
"""

RAW_SHOWN = """<network>
  <name>netcore-raw</name>
  <uuid>11111111-aaaa-3333-4444-555555555555</uuid>
  <metadata>
    <app1:foo xmlns:app1="http://app1.org/app1/">fooish</app1:foo>
  </metadata>
  <forward mode='nat'>
    <nat ipv6='yes'>
      <address start='1.2.3.4' end='1.2.3.10'/>
      <port start='500' end='1000'/>
    </nat>
  </forward>
  <bridge name='ncraw0' stp='on' delay='0' macTableManager='libvirt'/>
  <mac address='52:54:00:12:0a:5e'/>
  <bandwidth>
    <inbound average='1000' peak='5000' burst='1024'/>
    <outbound average='128' peak='256' burst='256'/>
  </bandwidth>
  <ip address='10.77.9.1' prefix='24' localPtr='yes'>
    <tftp root='/srv/tftp'/>
    <dhcp>
      <host mac='52:54:00:aa:bb:cc' ip='10.77.9.10'>
        <lease expiry='30' unit='minutes'/>
      </host>
      <bootp file='pxelinux.0'/>
    </dhcp>
  </ip>
  <ip family='ipv6' address='fd00:1::1' prefix='64'>
  </ip>
  <portgroup name='engineering' default='yes'>
    <bandwidth>
      <inbound average='1000' peak='5000' burst='5120'/>
    </bandwidth>
  </portgroup>
  <portgroup name='sales' trustGuestRxFilters='no'>
  </portgroup>
</network>
"""


def test_kept_elements_as_libvirtd_prints_them(tmp_path) -> None:
    out = _fmt(RAW)
    assert out == RAW_SHOWN
    path = tmp_path / "raw.xml"
    path.write_text(out)
    res = subprocess.run(["virt-xml-validate", str(path), "network"], capture_output=True,
                         text=True, check=False)
    assert res.returncode == 0, res.stderr


def test_bridge_mode_and_isolated_defaults() -> None:
    d = parse_network("<network><name>b</name><forward mode='bridge'/>"
                      "<bridge name='br0'/></network>")
    fill_defaults(d, [], lambda name: False)
    out = format_network(d)
    assert "<forward mode='bridge'/>\n  <bridge name='br0'/>\n</network>" in out
    assert "<mac" not in out
    # mode='none' is an isolated network: no <forward> printed, a bridge and MAC given
    d = parse_network("<network><name>i</name><forward mode='none'/></network>")
    fill_defaults(d, ["virbr0", "virbr2"], lambda name: name == "virbr1")
    out = format_network(d)
    assert "<forward" not in out
    assert "<bridge name='virbr3' stp='on' delay='0'/>" in out
    assert d.mac is not None and d.mac.startswith("52:54:00:")


def test_empty_ip_element_printed_open() -> None:
    out = _fmt("<network><name>e</name><ip address='10.1.1.1' netmask='255.0.255.0'/></network>")
    assert "  <ip address='10.1.1.1' netmask='255.0.255.0'>\n  </ip>\n" in out


def test_bridge_in_use() -> None:
    d = parse_network("<network><name>x</name><bridge name='virbr1'/></network>")
    with pytest.raises(VirError) as e:
        fill_defaults(d, ["virbr1"], lambda name: False)
    assert e.value.code == ErrorCode.INTERNAL_ERROR
    assert e.value.message == "internal error: bridge name 'virbr1' already in use."


E = "<network><name>e</name>{}</network>"
IP24 = "<ip address='10.1.1.1' prefix='24'>{}</ip>"


@pytest.mark.parametrize("xml, code, domain, message", [
    ("<network/>", ErrorCode.NO_NAME, ErrorDomain.NETWORK, "missing name information"),
    ("<netw><name>x</name></netw>", ErrorCode.XML_ERROR, ErrorDomain.XML,
     "XML error: expecting root element of 'network', not 'netw'"),
    ("<network><name>a/b</name></network>", ErrorCode.XML_DETAIL, ErrorDomain.XML,
     "invalid char in name: /"),
    (E.format("<uuid>xyz</uuid>"), ErrorCode.INTERNAL_ERROR, ErrorDomain.NETWORK,
     "internal error: malformed uuid element"),
    (E.format("<forward mode='xx'/>"), ErrorCode.CONFIG_UNSUPPORTED, ErrorDomain.NETWORK,
     "unsupported configuration: unknown forwarding type 'xx'"),
    (E.format("<ip address='10.1.1.x' prefix='24'/>"), ErrorCode.XML_ERROR, ErrorDomain.NETWORK,
     "XML error: Invalid address '10.1.1.x' in network 'e'"),
    (E.format("<ip prefix='24'/>"), ErrorCode.XML_ERROR, ErrorDomain.NETWORK,
     "XML error: Missing required address attribute in network 'e'"),
    (E.format(IP24.format("<dhcp><range start='10.1.2.2' end='10.1.2.9'/></dhcp>")),
     ErrorCode.INTERNAL_ERROR, ErrorDomain.NONE,
     "internal error: range 10.1.2.2 - 10.1.2.9 is not entirely within network 10.1.1.1/24"),
    (E.format(IP24.format("<dhcp><range start='10.1.1.9' end='10.1.1.2'/></dhcp>")),
     ErrorCode.INTERNAL_ERROR, ErrorDomain.NONE,
     "internal error: range 10.1.1.9 - 10.1.1.2 is reversed "),
    (E.format(IP24.format("<dhcp><host name='a'/></dhcp>")), ErrorCode.XML_ERROR,
     ErrorDomain.NETWORK,
     "XML error: Missing IP address in static host definition for network 'e'"),
    (E.format(IP24.format("<dhcp><host ip='10.1.1.5'/></dhcp>")), ErrorCode.XML_ERROR,
     ErrorDomain.NETWORK, ("XML error: Static host definition in IPv4 network 'e' must have "
     "mac or name attribute")),
    (E.format(IP24.format("<dhcp><host mac='zz' ip='10.1.1.5'/></dhcp>")), ErrorCode.XML_ERROR,
     ErrorDomain.NETWORK, "XML error: Cannot parse MAC address 'zz' in network 'e'"),
    (E.format(IP24.format("<dhcp><range start='10.1.1.2' end='10.1.1.3'/></dhcp>")
              + "<ip address='10.1.2.1' prefix='24'><dhcp><range start='10.1.2.2' "
              "end='10.1.2.3'/></dhcp></ip>"),
     ErrorCode.CONFIG_UNSUPPORTED, ErrorDomain.NETWORK,
     ("unsupported configuration: Multiple IPv4 dhcp sections found -- dhcp is supported "
     "only for a single IPv4 address on each network")),
    (E.format("<mtu size='x'/>"), ErrorCode.XML_ERROR, ErrorDomain.NETWORK,
     "XML error: Invalid mtu size 'x' in network 'e'"),
    (E.format("<forward mode='nat'/>"), ErrorCode.XML_ERROR, ErrorDomain.NETWORK,
     "XML error: nat forwarding requested, but no IP address provided for network 'e'"),
    (E.format("<ip address='10.1.1.1' prefix='40'/>"), ErrorCode.CONFIG_UNSUPPORTED,
     ErrorDomain.NETWORK, "unsupported configuration: Invalid IPv4 prefix '40' in network 'e'"),
    (E.format("<ip address='10.1.1.1' netmask='255.255.255.0' prefix='24'/>"),
     ErrorCode.CONFIG_UNSUPPORTED, ErrorDomain.NETWORK, ("unsupported configuration: Network "
     "'e' IP address cannot have both a prefix and a netmask")),
    (E.format("<ip family='ipv6' address='fd00::1' netmask='255.255.255.0'/>"),
     ErrorCode.CONFIG_UNSUPPORTED, ErrorDomain.NETWORK, ("unsupported configuration: netmask "
     "not allowed for IPv6 address 'fd00::1' in network 'e'")),
    (E.format("<ip family='ipv4' address='fd00::1' prefix='64'/>"),
     ErrorCode.CONFIG_UNSUPPORTED, ErrorDomain.NETWORK, ("unsupported configuration: ipv4 "
     "family specified for non-IPv4 address 'fd00::1' in network 'e'")),
    (E.format("<forward mode='bridge'/><bridge name='br0'/>"
              "<ip address='10.1.1.1' prefix='24'/>"),
     ErrorCode.CONFIG_UNSUPPORTED, ErrorDomain.NETWORK, ("unsupported configuration: "
     "Unsupported <ip> element in network e with forward mode='bridge'")),
    (E.format("<dns><host><hostname>a</hostname></host></dns>"), ErrorCode.XML_DETAIL,
     ErrorDomain.NETWORK, "Missing IP address in network 'e' DNS HOST record"),
    (E.format("<dns><txt value='a'/></dns>"), ErrorCode.XML_DETAIL, ErrorDomain.NETWORK,
     "missing required name attribute in DNS TXT record of network e"),
    (E.format("<bridge name='x' delay='q'/>"), ErrorCode.XML_ERROR, ErrorDomain.NETWORK,
     "XML error: Invalid delay value in network 'e'"),
    (E.format("<dns><forwarder addr='x.y'/></dns>"), ErrorCode.XML_ERROR, ErrorDomain.NETWORK,
     "XML error: Invalid forwarder IP address 'x.y' in network 'e'"),
    (E.format("<ip address='10.1.1.1' prefix='24'/><route address='10.2.0.0' prefix='16'/>"),
     ErrorCode.XML_ERROR, ErrorDomain.NETWORK,
     "XML error: e: Missing required gateway attribute in route definition"),
    ("<network><name>x</name>", ErrorCode.XML_DETAIL, ErrorDomain.NETWORK,
     ("(network_definition):1: Premature end of data in tag network line 1\n"
     "<network><name>x</name>\n-----------------------^")),
])
def test_parse_errors(xml: str, code: ErrorCode, domain: ErrorDomain, message: str) -> None:
    with pytest.raises(VirError) as e:
        parse_network(xml)
    assert (e.value.code, e.value.domain, e.value.message) == (code, domain, message)


# -- net-update ----------------------------------------------------------------------------

H, R, D, TXT, SRV = (update.IP_DHCP_HOST, update.IP_DHCP_RANGE, update.DNS_HOST,
                     update.DNS_TXT, update.DNS_SRV)


def _hosts(d) -> list[str]:
    return [f"{h.mac} {h.name} {h.ip}" for h in d.ips[0].hosts]


def test_update_dhcp_hosts() -> None:
    d = parse_network(NAT)
    d2 = update.apply(d, update.ADD_LAST, H, -1,
                      "<host mac='52:54:00:00:00:02' name='h2' ip='10.77.1.11'/>")
    assert len(d.ips[0].hosts) == 1  # the input is left alone
    d3 = update.apply(d2, update.ADD_FIRST, H, -1,
                      "<host mac='52:54:00:00:00:04' name='h4' ip='10.77.1.14'/>")
    d4 = update.apply(d3, update.MODIFY, H, -1,
                      "<host mac='52:54:00:00:00:04' name='h4x' ip='10.77.1.15'/>")
    d5 = update.apply(d4, update.DELETE, H, -1, "<host mac='52:54:00:00:00:02'/>")
    assert _hosts(d5) == ["52:54:00:00:00:04 h4x 10.77.1.15", "52:54:00:aa:bb:cc h1 10.77.1.10"]


@pytest.mark.parametrize("command, section, index, xml, code, message", [
    (update.ADD_LAST, H, -1, "<host mac='52:54:00:aa:bb:cc' name='h3' ip='10.77.1.12'/>",
     ErrorCode.OPERATION_INVALID, ("Requested operation is not valid: there is an existing dhcp "
     "host entry in network 'n1' that matches \"<host mac='52:54:00:aa:bb:cc' name='h3' "
     "ip='10.77.1.12'/>\"")),
    (update.MODIFY, H, -1, "<host mac='52:54:00:00:00:09' name='h9' ip='10.77.1.19'/>",
     ErrorCode.OPERATION_INVALID, ("Requested operation is not valid: couldn't locate an "
     "existing dhcp host entry with \"mac='52:54:00:00:00:09'\" \"name='h9'\" "
     "\"ip='10.77.1.19'\" in network 'n1'")),
    (update.DELETE, H, -1, "<host mac='52:54:00:aa:bb:cc' ip='10.77.1.99'/>",
     ErrorCode.OPERATION_INVALID, ("Requested operation is not valid: couldn't locate a "
     "matching dhcp host entry in network 'n1'")),
    (update.ADD_LAST, H, -1, "<hostx mac='52:54:00:00:00:09'/>", ErrorCode.XML_ERROR,
     "XML error: unexpected element <hostx>, expecting <host>, while updating network 'n1'"),
    (update.ADD_LAST, H, 5, "<host mac='52:54:00:00:00:09' name='h9' ip='10.77.1.19'/>",
     ErrorCode.OPERATION_INVALID, ("Requested operation is not valid: couldn't update dhcp "
     "host entry - no <ip> element found at index 5 in network 'n1'")),
    (update.ADD_LAST, R, -1, "<range start='10.77.1.2' end='10.77.1.254'/>",
     ErrorCode.OPERATION_INVALID, ("Requested operation is not valid: there is an existing dhcp "
     "range entry in network 'n1' that matches \"<range start='10.77.1.2' "
     "end='10.77.1.254'/>\"")),
    (update.MODIFY, R, -1, "<range start='10.77.1.2' end='10.77.1.9'/>",
     ErrorCode.OPERATION_UNSUPPORTED,
     "Operation not supported: dhcp ranges cannot be modified, only added or deleted"),
    (update.DELETE, R, -1, "<range start='10.77.1.2' end='10.77.1.9'/>",
     ErrorCode.OPERATION_INVALID, ("Requested operation is not valid: couldn't locate a "
     "matching dhcp range entry in network 'n1'")),
    (update.MODIFY, D, -1, "<host ip='10.77.1.50'><hostname>foo</hostname></host>",
     ErrorCode.OPERATION_UNSUPPORTED,
     "Operation not supported: DNS HOST records cannot be modified, only added or deleted"),
    (9, H, -1, "<host/>", ErrorCode.OPERATION_UNSUPPORTED,
     "Operation not supported: unrecognized network update command code 9"),
    (update.MODIFY, 1, -1, "<bridge name='x'/>", ErrorCode.OPERATION_UNSUPPORTED,
     "Operation not supported: can't update 'bridge' section of network 'n1'"),
    (update.MODIFY, 99, -1, "<bridge name='x'/>", ErrorCode.OPERATION_UNSUPPORTED,
     "Operation not supported: can't update unrecognized section of network"),
    (update.ADD_LAST, H, -1, "<host mac='52:54:00:00:00:08'", ErrorCode.XML_DETAIL,
     ("network_update_xml:1: attributes construct error\n<host mac='52:54:00:00:00:08'\n"
     "-----------------------------^")),
])
def test_update_errors(command: int, section: int, index: int, xml: str, code: ErrorCode,
                       message: str) -> None:
    with pytest.raises(VirError) as e:
        update.apply(parse_network(NAT), command, section, index, xml)
    assert (e.value.code, e.value.message) == (code, message)


def test_update_dns_records() -> None:
    d = parse_network(NAT)
    d = update.apply(d, update.ADD_LAST, D, -1,
                     "<host ip='10.77.1.50'><hostname>foo</hostname></host>")
    d = update.apply(d, update.ADD_LAST, D, -1,  # same name, other address: fine
                     "<host ip='10.77.1.51'><hostname>foo</hostname></host>")
    with pytest.raises(VirError, match="at least one DNS HOST record with a matching field"):
        update.apply(d, update.ADD_LAST, D, -1,
                     "<host ip='10.77.1.50'><hostname>bar</hostname></host>")
    with pytest.raises(VirError, match="multiple matching DNS HOST records were found"):
        update.apply(d, update.DELETE, D, -1,
                     "<host ip='10.77.1.50'><hostname>foo</hostname></host>")
    d = update.apply(d, update.ADD_LAST, TXT, -1, "<txt name='t2' value='v2'/>")
    d = update.apply(d, update.ADD_LAST, SRV, -1, "<srv service='s2' protocol='udp'/>")
    out = format_network(d)
    assert textwrap.indent(textwrap.dedent("""\
        <dns>
          <txt name='t2' value='v2'/>
          <srv service='s2' protocol='udp'/>
          <host ip='10.77.1.50'>
            <hostname>foo</hostname>
          </host>
          <host ip='10.77.1.51'>
            <hostname>foo</hostname>
          </host>
        </dns>
        """), "  ") in out


def test_update_family_mismatch() -> None:
    d = parse_network(FULL)
    with pytest.raises(VirError) as e:
        update.apply(d, update.ADD_LAST, H, -1,
                     "<host id='0:1:3' name='h8' ip='2001:db8:ca2:2:3::8'/>")
    assert e.value.message == ("Requested operation is not valid: the address family of a "
                               "host entry IP must match the address family of the dhcp "
                               "element's parent")
    d = update.apply(d, update.ADD_LAST, H, 1,
                     "<host id='0:1:2' name='h7' ip='2001:db8:ca2:2:3::7'/>")
    assert d.ips[1].hosts[-1].id == "0:1:2"


# -- ports ---------------------------------------------------------------------------------


@pytest.mark.parametrize("xml, message", [
    ("<networkport><mac address='52:54:00:11:22:34'/></networkport>",
     "internal error: network port has no uuid"),
    (("<networkport><uuid>aaaaaaaa-2222-3333-4444-555555555556</uuid>"
     "<mac address='52:54:00:11:22:34'/></networkport>"),
     "internal error: network port has no owner name"),
    (("<networkport><uuid>aaaaaaaa-2222-3333-4444-555555555556</uuid><owner><name>x</name>"
     "<uuid>11111111-2222-3333-4444-555555555555</uuid></owner></networkport>"),
     "internal error: network port has no mac"),
])
def test_port_errors(xml: str, message: str) -> None:
    with pytest.raises(VirError) as e:
        parse_port(xml, "n")
    assert e.value.message == message


def test_port_xml() -> None:
    xml = ("<networkport>\n  <uuid>aaaaaaaa-2222-3333-4444-555555555555</uuid>\n  <owner>\n"
           "    <name>vm</name>\n    <uuid>11111111-2222-3333-4444-555555555555</uuid>\n"
           "  </owner>\n  <mac address='52:54:00:11:22:33'/>\n"
           "  <plug type='network' bridge='virbr0'/>\n</networkport>\n")
    assert parse_port(xml, "n").xml() == xml


def test_update_forward_interfaces_and_portgroups() -> None:
    """The reference libvirtd's answers to the same sequence."""
    d = parse_network("<network><name>fi</name><forward mode='passthrough'>"
                      "<interface dev='eth9'/></forward></network>")
    FI, PG = update.FORWARD_INTERFACE, update.PORTGROUP
    for command, section, xml, error in [
        (update.ADD_LAST, FI, "<interface dev='eth10'/>", None),
        (update.ADD_FIRST, FI, "<interface dev='eth8'/>", None),
        (update.ADD_LAST, FI, "<interface dev='eth10'/>", ("there is an existing interface "
         "entry in network 'fi' that matches \"<interface dev='eth10'>\"")),
        (update.MODIFY, FI, "<interface dev='eth10'/>", ("forward interface entries cannot be "
         "modified, only added or deleted")),
        (update.DELETE, FI, "<interface dev='eth10'/>", None),
        (update.DELETE, FI, "<interface dev='eth10'/>", ("couldn't find an interface entry in "
         "network 'fi' matching <interface dev='eth10'>")),
        (update.ADD_LAST, FI, "<interface/>", "missing dev attribute in <interface> element"),
        (update.ADD_LAST, PG, "<portgroup name='pg1' default='yes'/>", None),
        (update.ADD_LAST, PG, "<portgroup name='pg2'><vlan><tag id='42'/></vlan></portgroup>",
         None),
        (update.ADD_LAST, PG, "<portgroup name='pg1'/>", ("there is an existing portgroup entry "
         "in network 'fi' that matches \"<portgroup name='pg1'>\"")),
        (update.ADD_LAST, PG, "<portgroup name='pg3' default='yes'/>", ("a different portgroup "
         "entry in network 'fi' is already set as the default. Only one default is allowed.")),
        (update.MODIFY, PG, "<portgroup name='pg2' default='no'/>", None),
        (update.DELETE, PG, "<portgroup name='pg1'/>", None),
        (update.DELETE, PG, "<portgroup name='pg1'/>", ("couldn't find a portgroup entry in "
         "network 'fi' matching <portgroup name='pg1'>")),
        (update.ADD_LAST, PG, "<portgroup/>", "Missing required name attribute in portgroup"),
    ]:
        if error is None:
            d = update.apply(d, command, section, -1, xml)
        else:
            with pytest.raises(VirError) as e:
                update.apply(d, command, section, -1, xml)
            assert e.value.message.endswith(error)
    out = format_network(d)
    assert out.endswith("  <forward dev='eth8' mode='passthrough'>\n"
                        "    <interface dev='eth8'/>\n    <interface dev='eth9'/>\n"
                        "  </forward>\n  <portgroup name='pg2'>\n  </portgroup>\n</network>\n")
