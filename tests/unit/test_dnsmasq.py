"""dnsmasq of a virtual network: the files libvirtd writes, and the leases it keeps."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.paths import Paths
from drivers.network import dnsmasq, runtime
from drivers.network.leases import IPV4, IPV6, Lease, duid_mac, parse
from drivers.network.network_xml import parse_network
from protocol.errors import ErrorCode, VirError

STATE = Path("/run/libvirt/network")

DEFAULT = """<network>
  <name>default</name>
  <forward mode='nat'/>
  <bridge name='virbr0' stp='on' delay='0'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.2' end='192.168.122.254'/>
    </dhcp>
  </ip>
</network>"""

# Everything dnsmasq is told about, on an isolated network (libvirtd 9.0's own
# conf file for this definition was the reference, below its header).
FULL = """<network>
  <name>full</name>
  <bridge name='fullbr0'/>
  <mtu size='1400'/>
  <domain name='example.test'/>
  <dns>
    <forwarder addr='10.213.0.53'/>
    <forwarder domain='ex.test' addr='10.213.0.54'/>
    <forwarder domain='local.test'/>
    <txt name='t1' value='hello world'/>
    <srv service='ldap' protocol='tcp' domain='example.test' target='srv.example.test'
         port='389' priority='10' weight='5'/>
    <srv service='www' protocol='tcp'/>
    <host ip='10.213.77.5'><hostname>h5</hostname><hostname>h5b</hostname></host>
  </dns>
  <ip address='10.213.77.1' prefix='24'>
    <dhcp>
      <range start='10.213.77.100' end='10.213.77.150'><lease expiry='2' unit='hours'/></range>
      <host mac='52:54:00:00:00:01' name='g1' ip='10.213.77.11'/>
      <host mac='52:54:00:00:00:02' ip='10.213.77.12'><lease expiry='0'/></host>
      <host name='g3' ip='10.213.77.13'/>
    </dhcp>
  </ip>
  <ip family='ipv6' address='fd21:3:77::1' prefix='64'>
    <dhcp>
      <range start='fd21:3:77::100' end='fd21:3:77::1ff'/>
      <host id='0:3:0:1:0:16:3e:11:22:33' name='g6' ip='fd21:3:77::11'/>
      <host name='g7' ip='fd21:3:77::12'/>
    </dhcp>
  </ip>
</network>"""


def body(text: str) -> str:
    """The options, without our two comment lines at the top."""
    lines = text.splitlines(keepends=True)
    assert lines[0].startswith("## ") and lines[1].startswith("## ")
    return "".join(lines[2:])


def render(xml: str) -> str:
    net = parse_network(xml)
    return body(dnsmasq.conf(net, dnsmasq.Files(STATE, net.name)))


def test_default_network() -> None:
    assert render(DEFAULT) == """strict-order
pid-file=/run/libvirt/network/default.pid
except-interface=lo
bind-dynamic
interface=virbr0
dhcp-range=192.168.122.2,192.168.122.254,255.255.255.0
dhcp-no-override
dhcp-authoritative
dhcp-lease-max=253
dhcp-hostsfile=/run/libvirt/network/default.hostsfile
addn-hosts=/run/libvirt/network/default.addnhosts
"""


def test_everything_on_an_isolated_network() -> None:
    assert render(FULL) == """strict-order
server=10.213.0.53
server=/ex.test/10.213.0.54
server=/local.test/#
no-resolv
domain=example.test
expand-hosts
pid-file=/run/libvirt/network/full.pid
except-interface=lo
bind-dynamic
interface=fullbr0
dhcp-option=3
no-resolv
ra-param=*,0,0
txt-record=t1,hello world
srv-host=_ldap._tcp.example.test,srv.example.test,389,10,5
srv-host=_www._tcp
dhcp-range=10.213.77.100,10.213.77.150,255.255.255.0,2h
dhcp-no-override
dhcp-authoritative
dhcp-range=fd21:3:77::100,fd21:3:77::1ff,64
dhcp-lease-max=307
dhcp-hostsfile=/run/libvirt/network/full.hostsfile
addn-hosts=/run/libvirt/network/full.addnhosts
dhcp-option=option:mtu,1400
enable-ra
"""


def test_hosts_files() -> None:
    net = parse_network(FULL)
    assert dnsmasq.hostsfile(net) == (
        "52:54:00:00:00:01,10.213.77.11,g1\n"
        "52:54:00:00:00:02,10.213.77.12,infinite\n"
        "g3,10.213.77.13\n"
        "id:0:3:0:1:0:16:3e:11:22:33,g6,[fd21:3:77::11]\n"
        "g7,[fd21:3:77::12]\n")
    assert dnsmasq.addnhosts(net) == "10.213.77.5\th5\th5b\t\n"
    assert dnsmasq.hostsfile(parse_network(DEFAULT)) == ""
    assert dnsmasq.addnhosts(parse_network(DEFAULT)) == ""


def test_dns_off_static_hosts_only_and_lease_units() -> None:
    text = render("""<network><name>n</name><forward mode='route'/><bridge name='br9'/>
      <dns enable='no'/>
      <ip address='10.1.0.1' prefix='16'><dhcp>
        <host mac='52:54:00:00:00:09' ip='10.1.0.9'><lease expiry='30'/></host>
      </dhcp></ip></network>""")
    assert text.startswith("strict-order\nport=0\npid-file=")
    assert "dhcp-range=10.1.0.1,static\n" in text
    assert "dhcp-lease-max" not in text and "addn-hosts" not in text
    assert "dhcp-option=3" not in text  # only isolated networks lose their route
    net = parse_network("""<network><name>n</name><bridge name='br9'/><ip address='10.1.0.1'
      prefix='16'><dhcp><host mac='52:54:00:00:00:09' ip='10.1.0.9'>
      <lease expiry='30'/></host></dhcp></ip></network>""")
    assert dnsmasq.hostsfile(net) == "52:54:00:00:00:09,10.1.0.9,30m\n"


def test_plain_names_local_ptr_domain_and_ra_only() -> None:
    text = render("""<network><name>n</name><forward mode='nat'/><bridge name='br9'/>
      <domain name='lab.test' localOnly='yes'/>
      <dns forwardPlainNames='no'/>
      <ip address='10.2.3.1' prefix='24' localPtr='yes'/>
      <ip family='ipv6' address='fd00:1:2::1' prefix='64' localPtr='yes'/></network>""")
    assert text == """strict-order
local=/lab.test/
domain=lab.test
expand-hosts
local=/3.2.10.in-addr.arpa/
local=/0.0.0.0.2.0.0.0.1.0.0.0.0.0.d.f.ip6.arpa/
domain-needed
local=//
pid-file=/run/libvirt/network/n.pid
except-interface=lo
bind-dynamic
interface=br9
addn-hosts=/run/libvirt/network/n.addnhosts
dhcp-range=fd00:1:2::1,ra-only
"""


def test_local_ptr_needs_whole_octets() -> None:
    with pytest.raises(VirError) as err:
        render("""<network><name>n</name><bridge name='br9'/>
          <ip address='10.2.3.1' prefix='20' localPtr='yes'/></network>""")
    assert err.value.code == ErrorCode.CONFIG_UNSUPPORTED
    assert err.value.message == ("unsupported configuration: PTR domain for IPv4 network "
                                 "with prefix 20 cannot be automatically created")


def test_tftp_and_bootp() -> None:
    text = render("""<network><name>n</name><forward mode='nat'/><bridge name='br9'/>
      <ip address='10.2.3.1' prefix='24'><tftp root='/srv/tftp'/><dhcp>
      <range start='10.2.3.10' end='10.2.3.19'/>
      <bootp file='pxelinux.0' server='10.2.3.2'/></dhcp></ip></network>""")
    assert "enable-tftp\ntftp-root=/srv/tftp\ndhcp-range=10.2.3.10,10.2.3.19,255.255.255.0\n" \
        "dhcp-no-override\ndhcp-authoritative\ndhcp-boot=pxelinux.0,,10.2.3.2\n" \
        "dhcp-lease-max=10\n" in text


def test_when_dnsmasq_runs() -> None:
    assert dnsmasq.needed(parse_network(DEFAULT))
    assert not dnsmasq.needed(parse_network(
        "<network><name>n</name><bridge name='br9'/></network>"))
    assert not dnsmasq.needed(parse_network(
        """<network><name>n</name><bridge name='br9'/><dns enable='no'/>
        <ip address='10.2.3.1' prefix='24'/></network>"""))


def test_running_wants_a_dnsmasq_on_this_conf(tmp_path: Path) -> None:
    files = dnsmasq.Files(tmp_path, "n")
    assert dnsmasq.running(files) is None
    files.pid.write_text(f"{os.getpid()}\n")  # alive, but pytest is no dnsmasq
    assert dnsmasq.running(files) is None
    files.pid.write_text("garbage\n")
    assert dnsmasq.running(files) is None


V4_V6_LEASES = """\
0 52:54:00:aa:bb:01 192.168.122.10 forever *
2000 52:54:00:AA:BB:02 192.168.122.11 * 01:52:54:00:aa:bb:02
500 52:54:00:aa:bb:03 192.168.122.12 gone *
duid 00:01:00:01:2c:5e:1f:3a:52:54:00:00:00:01
2000 1193046 fd21:3:77::105 g6 00:03:00:01:52:54:00:aa:bb:04
2000 T7 fd21:3:77::106 * 00:02:00:00:ab:11:01:02
"""


def test_lease_file(tmp_path: Path) -> None:
    net = parse_network(FULL)
    dirs = Paths(tmp_path).driver("network")
    assert runtime.leases(net, dirs) == []
    dirs.state_dir.mkdir(parents=True)
    dnsmasq.Files(dirs.state_dir, net.name).leases.write_text(V4_V6_LEASES)
    got = parse(V4_V6_LEASES, "fullbr0", [ip.network for ip in net.ips], now=1000)
    assert got == [
        Lease("fullbr0", 0, IPV4, "52:54:00:aa:bb:01", None,
              "192.168.122.10", 24, "forever", None),
        Lease("fullbr0", 2000, IPV4, "52:54:00:aa:bb:02", None,
              "192.168.122.11", 24, None, "01:52:54:00:aa:bb:02"),
        Lease("fullbr0", 2000, IPV6, "52:54:00:aa:bb:04", "1193046",
              "fd21:3:77::105", 64, "g6", "00:03:00:01:52:54:00:aa:bb:04"),
        Lease("fullbr0", 2000, IPV6, None, "7",
              "fd21:3:77::106", 64, None, "00:02:00:00:ab:11:01:02"),
    ]
    # against the clock: only the one that never expires is left
    assert [lease.ipaddr for lease in runtime.leases(net, dirs)] == ["192.168.122.10"]


def test_duid_mac() -> None:
    assert duid_mac("00:01:00:01:2c:5e:1f:3a:52:54:00:00:00:01") == "52:54:00:00:00:01"
    assert duid_mac("00:03:00:01:52:54:00:AA:BB:04") == "52:54:00:aa:bb:04"
    assert duid_mac("00:02:00:00:ab:11:01:02") is None
