"""Guest power and guest agent calls of the REMOTE program.

Shutdown, reboot and reset go to ``drivers.qemu.lifecycle``; hostname, guest
time and the agent's view of the network go to the guest agent. Agent calls
never take the domain's lock: a silent agent costs its caller a timeout and
nobody else anything.
"""

from __future__ import annotations

from typing import Any

from daemon.dispatch import Call
from daemon.remote._common import check_flags, dom_of
from drivers.qemu import agent, lifecycle, netif
from drivers.qemu.domain import Domain, not_running
from protocol.errors import ErrorCode, ErrorDomain, VirError
from protocol.programs import remote

R = remote().module

HOSTNAME_LEASE = 1 << 0
HOSTNAME_AGENT = 1 << 1
TIME_SYNC = 1 << 0
# virDomainInterfaceAddressesSource
SRC_LEASE, SRC_AGENT, SRC_ARP = 0, 1, 2
IP_ADDR_IPV4, IP_ADDR_IPV6 = 0, 1


def _malformed() -> VirError:
    return VirError(ErrorCode.INTERNAL_ERROR, "internal error: malformed return value",
                    ErrorDomain.QEMU)


# -- power -------------------------------------------------------------------------


async def domain_shutdown(call: Call, args: Any) -> None:
    await lifecycle.shutdown(call.driver, dom_of(call, args.dom))


_POWER = lifecycle.POWER_ACPI | lifecycle.POWER_AGENT


async def domain_shutdown_flags(call: Call, args: Any) -> None:
    dom = dom_of(call, args.dom)
    check_flags(args.flags, _POWER, "qemuDomainShutdownFlags")
    await lifecycle.shutdown(call.driver, dom, args.flags)


async def domain_reboot(call: Call, args: Any) -> None:
    dom = dom_of(call, args.dom)
    check_flags(args.flags, _POWER, "qemuDomainReboot")
    await lifecycle.reboot(call.driver, dom, args.flags)


async def domain_reset(call: Call, args: Any) -> None:
    dom = dom_of(call, args.dom)
    check_flags(args.flags, 0, "qemuDomainReset")
    await lifecycle.reset(call.driver, dom)


# -- through the guest agent -------------------------------------------------------


async def domain_get_hostname(call: Call, args: Any) -> Any:
    check_flags(args.flags, HOSTNAME_LEASE | HOSTNAME_AGENT, "qemuDomainGetHostname")
    if args.flags & HOSTNAME_LEASE and args.flags & HOSTNAME_AGENT:
        raise VirError(
            ErrorCode.INVALID_ARG,
            "invalid argument: Flags 'VIR_DOMAIN_GET_HOSTNAME_LEASE' and"
            " 'VIR_DOMAIN_GET_HOSTNAME_AGENT' are mutually exclusive",
            ErrorDomain.QEMU,
        )
    dom = dom_of(call, args.dom)
    if args.flags & HOSTNAME_LEASE:
        # Leases come from libvirt networks, which no interface here uses.
        if not dom.active:
            raise not_running()
        raise VirError(ErrorCode.NO_HOSTNAME,
                       f"no hostname found: no hostname found for domain {dom.name}",
                       ErrorDomain.QEMU)
    reply = await agent.agent_for(dom).execute("guest-get-host-name")
    if not isinstance(reply, dict):
        raise _malformed()
    name = reply.get("host-name")
    if not isinstance(name, str):
        raise VirError(
            ErrorCode.INTERNAL_ERROR,
            "internal error: 'host-name' missing in guest-get-host-name reply",
            ErrorDomain.QEMU,
        )
    return R.remote_domain_get_hostname_ret(name)


async def domain_get_time(call: Call, args: Any) -> Any:
    check_flags(args.flags, 0, "qemuDomainGetTime")
    value = await agent.agent_for(dom_of(call, args.dom)).execute("guest-get-time")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _malformed()
    return R.remote_domain_get_time_ret(value // 1_000_000_000, value % 1_000_000_000)


_MAX_SECONDS = (2**63 - 1) // 1_000_000_000


async def domain_set_time(call: Call, args: Any) -> None:
    check_flags(args.flags, TIME_SYNC, "qemuDomainSetTime")
    dom = dom_of(call, args.dom)
    if not dom.active:  # libvirtd asks the caps of a QEMU that is not there
        raise VirError(
            ErrorCode.OPERATION_UNSUPPORTED,
            "Operation not supported: cannot set time:"
            " qemu doesn't support rtc-reset-reinjection command",
            ErrorDomain.QEMU,
        )
    client = agent.agent_for(dom)
    if args.flags & TIME_SYNC:
        await client.execute("guest-set-time")
    else:
        if args.seconds > _MAX_SECONDS:
            raise VirError(
                ErrorCode.INVALID_ARG,
                f"invalid argument: Time '{args.seconds}' is too big for guest agent",
                ErrorDomain.QEMU,
            )
        await client.execute("guest-set-time",
                             {"time": args.seconds * 1_000_000_000 + args.nseconds})
    # The RTC ticks it missed while the guest's clock was wrong need not be caught up.
    proc = dom.process
    if proc is not None and dom.active:
        await proc.monitor.execute("rtc-reset-reinjection")


async def domain_interface_addresses(call: Call, args: Any) -> Any:
    check_flags(args.flags, 0, "qemuDomainInterfaceAddresses")
    dom = dom_of(call, args.dom)
    if not dom.active:
        raise not_running()
    if args.source == SRC_AGENT:
        ifaces = _agent_interfaces(await agent.agent_for(dom).execute(
            "guest-network-get-interfaces"))
    elif args.source == SRC_ARP:
        ifaces = _arp_interfaces(dom)
    elif args.source == SRC_LEASE:
        ifaces = [
            R.remote_domain_interface(name, mac, [
                R.remote_domain_ip_addr(lease.type, lease.ipaddr, lease.prefix)
                for lease in leases
            ])
            for name, mac, leases in netif.lease_interfaces(call.driver, dom.definition)
        ]
    else:
        raise VirError(
            ErrorCode.ARGUMENT_UNSUPPORTED,
            f"argument unsupported: Unknown IP address data source {args.source}",
            ErrorDomain.QEMU,
        )
    return R.remote_domain_interface_addresses_ret(ifaces)


def _agent_interfaces(reply: Any) -> list[Any]:
    """guest-network-get-interfaces as virDomainInterface list; aliases (eth0:1) join eth0."""
    if not isinstance(reply, list):
        raise VirError(
            ErrorCode.INTERNAL_ERROR,
            "internal error: qemu agent didn't return an array of interfaces",
            ErrorDomain.QEMU,
        )
    by_name: dict[str, Any] = {}
    for entry in reply:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise VirError(
                ErrorCode.INTERNAL_ERROR,
                "internal error: qemu agent didn't provide 'name' field",
                ErrorDomain.QEMU,
            )
        name = entry["name"].split(":", 1)[0]
        iface = by_name.get(name)
        if iface is None:
            hwaddr = entry.get("hardware-address")
            iface = by_name[name] = R.remote_domain_interface(
                name, hwaddr if isinstance(hwaddr, str) else None, [])
        for ip in entry.get("ip-addresses") or []:
            kind = ip.get("ip-address-type")
            if kind == "ipv4":
                family = IP_ADDR_IPV4
            elif kind == "ipv6":
                family = IP_ADDR_IPV6
            else:
                raise VirError(ErrorCode.INTERNAL_ERROR,
                               f"internal error: unknown IP address type '{kind}'",
                               ErrorDomain.QEMU)
            iface.addrs.append(R.remote_domain_ip_addr(
                family, str(ip.get("ip-address", "")), int(ip.get("prefix", 0))))
    return list(by_name.values())


def _arp_interfaces(dom: Domain) -> list[Any]:
    """The host's ARP table entries for the guest's MAC addresses."""
    try:
        with open("/proc/net/arp") as f:
            rows = [line.split() for line in f.readlines()[1:]]
    except OSError:
        rows = []
    ifaces = []
    for net in dom.definition.devices.interfaces:
        mac = (net.mac or "").lower()
        for row in rows:
            if len(row) >= 4 and row[3].lower() == mac:
                name = net.target_dev or net.info.alias or ""
                ifaces.append(R.remote_domain_interface(
                    name, mac, [R.remote_domain_ip_addr(IP_ADDR_IPV4, row[0], 0)]))
    return ifaces
