"""A network's nftables rules: libvirtd's rules per forward mode, as nft text."""

from __future__ import annotations

from drivers.network import firewall
from drivers.network.network_xml import parse_network

NAT = """<network><name>default</name><forward mode='nat'/><bridge name='virbr0'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp>
  </ip></network>"""

SERVICES = [
    ("host_input", 'iifname "virbr0" udp dport 67 accept'),
    ("host_output", 'oifname "virbr0" udp dport 68 accept'),
    ("host_input", 'iifname "virbr0" tcp dport 67 accept'),
    ("host_output", 'oifname "virbr0" tcp dport 68 accept'),
    ("host_input", 'iifname "virbr0" udp dport 53 accept'),
    ("host_output", 'oifname "virbr0" udp dport 53 accept'),
    ("host_input", 'iifname "virbr0" tcp dport 53 accept'),
    ("host_output", 'oifname "virbr0" tcp dport 53 accept'),
]
CLOSED = [
    ("guest_cross", 'iifname "virbr0" oifname "virbr0" accept'),
    ("guest_input", 'oifname "virbr0" reject'),
    ("guest_output", 'iifname "virbr0" reject'),
]


def rules(xml: str, family: str = "ip") -> list[tuple[str, str]]:
    return firewall.rules(parse_network(xml), family)


def test_nat() -> None:
    net = "192.168.122.0/24"
    assert rules(NAT) == SERVICES + [
        ("guest_output", f'iifname "virbr0" ip saddr {net} accept'),
        ("guest_input", f'oifname "virbr0" ip daddr {net} ct state related,established accept'),
        ("guest_nat", f"ip saddr {net} ip daddr 224.0.0.0/24 return"),
        ("guest_nat", f"ip saddr {net} ip daddr 255.255.255.255/32 return"),
        ("guest_nat", (f"meta l4proto tcp ip saddr {net} ip daddr != {net} "
                      "masquerade to :1024-65535")),
        ("guest_nat", (f"meta l4proto udp ip saddr {net} ip daddr != {net} "
                      "masquerade to :1024-65535")),
        ("guest_nat", f"ip saddr {net} ip daddr != {net} masquerade"),
    ] + CLOSED
    assert rules(NAT, "ip6") == []  # no IPv6 on it: no ip6 rules at all


def test_isolated_rejects_all_forwarding() -> None:
    xml = NAT.replace("<forward mode='nat'/>", "")
    assert rules(xml) == SERVICES + CLOSED


def test_route_forwards_both_ways_without_nat() -> None:
    got = rules(NAT.replace("'nat'", "'route'"))
    assert ("guest_input", 'oifname "virbr0" ip daddr 192.168.122.0/24 accept') in got
    assert not [r for r in got if r[0] == "guest_nat"]


def test_open_and_host_bridge_have_no_rules() -> None:
    assert rules(NAT.replace("'nat'", "'open'")) == []
    assert rules("""<network><name>b</name><forward mode='bridge'/>
      <bridge name='br0'/></network>""") == []


def test_forward_dev_nat_range_and_ipv6() -> None:
    xml = """<network><name>n</name><bridge name='br9'/>
      <forward mode='nat' dev='eth0'><nat ipv6='yes'>
        <address start='203.0.113.10' end='203.0.113.20'/><port start='2000' end='3000'/>
      </nat></forward>
      <ip address='10.9.0.1' prefix='24'/>
      <ip family='ipv6' address='fd00:9::1' prefix='64'/></network>"""
    v4, v6 = rules(xml), rules(xml, "ip6")
    assert ("guest_output", 'iifname "br9" oifname "eth0" ip saddr 10.9.0.0/24 accept') in v4
    assert ("guest_input", ('oifname "br9" iifname "eth0" ip daddr 10.9.0.0/24 '
                           "ct state related,established accept")) in v4
    assert ("guest_nat", ("meta l4proto udp ip saddr 10.9.0.0/24 ip daddr != 10.9.0.0/24 "
                         'oifname "eth0" snat to 203.0.113.10-203.0.113.20:2000-3000')) in v4
    assert ("guest_nat", ('ip saddr 10.9.0.0/24 ip daddr != 10.9.0.0/24 oifname "eth0" '
                         "snat to 203.0.113.10-203.0.113.20")) in v4
    assert ("host_input", 'iifname "br9" udp dport 547 accept') in v6
    assert ("guest_nat", 'ip6 saddr fd00:9::/64 ip6 daddr ff02::/16 oifname "eth0" return') in v6
    assert ("guest_output", 'iifname "br9" reject') == v6[-1]


def test_ipv6_is_routed_not_masqueraded_by_default() -> None:
    xml = NAT.replace("</network>", "<ip family='ipv6' address='fd00:9::1' prefix='64'/>"
                                    "</network>")
    v6 = rules(xml, "ip6")
    assert ("guest_output", 'iifname "virbr0" ip6 saddr fd00:9::/64 accept') in v6
    assert not [r for r in v6 if r[0] == "guest_nat"]


def test_script_replaces_in_one_transaction() -> None:
    text = firewall.script(parse_network(NAT), "ip", [("guest_nat", 7), ("host_input", 3)])
    lines = text.splitlines()
    # the table comes first, declared and so idempotent; its forward chain refilled
    assert lines[0] == "table ip aiovirtd {"
    jumps = lines.index("flush chain ip aiovirtd forward")
    assert lines[jumps + 1:jumps + 4] == [f"add rule ip aiovirtd forward jump guest_{c}"
                                          for c in ("cross", "input", "output")]
    assert lines[jumps + 4:jumps + 6] == ["delete rule ip aiovirtd guest_nat handle 7",
                                          "delete rule ip aiovirtd host_input handle 3"]
    assert lines[-1] == 'add rule ip aiovirtd guest_output iifname "virbr0" reject ' \
                        'comment "virbr0"'
