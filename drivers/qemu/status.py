"""The status file of a running guest (``run/libvirt/qemu/NAME.xml``).

It is what a restarted daemon needs to find a guest again: the QEMU pid, the
monitor socket, the state, and the definition the guest was started from.
The layout follows libvirtd's ``<domstatus>`` so the file reads familiarly;
the live-only facts go in a ``<livestate>`` element of our own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from drivers.qemu.domain import Paused, Running, Shutoff, State

_REASONS: dict[State, type] = {
    State.RUNNING: Running,
    State.PAUSED: Paused,
    State.SHUTOFF: Shutoff,
}

HEADER = (
    "<!--\nRuntime state of a guest kept by aiovirtd; rewritten on every state change.\n"
    "Change the definition with virsh edit instead.\n-->\n"
)


@dataclass
class Status:
    state: State
    reason: int
    pid: int
    monitor_path: str
    id: int
    domain_xml: str
    vnc_port: int | None = None
    spice_port: int | None = None
    pty_paths: dict[str, str] = field(default_factory=dict)
    # NIC alias -> tap name: the definition forgets generated "vnetN" names.
    taps: dict[str, str] = field(default_factory=dict)
    # NIC alias -> network port UUID: a restarted daemon plugs the same port again.
    ports: dict[str, str] = field(default_factory=dict)
    # NIC alias -> the bridge its network gave: the live XML's until the port is plugged again.
    bridges: dict[str, str] = field(default_factory=dict)


def _attr(value: str) -> str:
    """``value`` as a double-quoted XML attribute (paths may hold any character).

    Written out here because ``xml.sax.saxutils`` pulls in ``urllib.request``
    and with it the HTTP and e-mail modules: 3.5 MB of the idle daemon.
    """
    for raw, ref in (("&", "&amp;"), ("<", "&lt;"), ('"', "&quot;"),
                     ("\n", "&#10;"), ("\r", "&#13;"), ("\t", "&#9;")):
        value = value.replace(raw, ref)
    return f'"{value}"'


def _opt(name: str, value: str | None) -> str:
    return f" {name}={_attr(value)}" if value else ""


def _reason_name(state: State, reason: int) -> str:
    enum = _REASONS.get(state)
    try:
        return enum(reason).name.lower() if enum else "unknown"
    except ValueError:
        return "unknown"


def _reason_value(state: State, name: str) -> int:
    enum = _REASONS.get(state)
    try:
        return int(enum[name.upper()]) if enum else 0
    except KeyError:
        return 0


def format_status(st: Status) -> str:
    ports = ""
    if st.vnc_port is not None:
        ports += f" vncport='{st.vnc_port}'"
    if st.spice_port is not None:
        ports += f" spiceport='{st.spice_port}'"
    out = [
        HEADER,
        f"<domstatus state='{st.state.name.lower()}'"
        f" reason='{_reason_name(st.state, st.reason)}' pid='{st.pid}'>\n",
        f"  <monitor path={_attr(st.monitor_path)} type='unix'/>\n",
        f"  <livestate id='{st.id}'{ports}>\n",
        *(
            f"    <pty alias={_attr(alias)} path={_attr(path)}/>\n"
            for alias, path in st.pty_paths.items()
        ),
        *(
            f"    <tap alias={_attr(alias)} dev={_attr(dev)}"
            f"{_opt('portid', st.ports.get(alias))}{_opt('bridge', st.bridges.get(alias))}/>\n"
            for alias, dev in st.taps.items()
        ),
        "  </livestate>\n",
        st.domain_xml,
        "</domstatus>\n",
    ]
    return "".join(out)


def parse_status(text: str) -> Status:
    """Read a status file back; raises ``ValueError`` on anything malformed."""
    try:
        root = etree.fromstring(text.encode())
    except etree.XMLSyntaxError as e:
        raise ValueError(f"bad status XML: {e}") from None
    if root.tag != "domstatus":
        raise ValueError("not a domstatus document")
    state = State[root.get("state", "").upper()]
    monitor = root.find("monitor")
    live = root.find("livestate")
    domain = root.find("domain")
    if monitor is None or live is None or domain is None:
        raise ValueError("status file lacks monitor, livestate or domain")
    vnc = live.get("vncport")
    spice = live.get("spiceport")
    return Status(
        state=state,
        reason=_reason_value(state, root.get("reason", "unknown")),
        pid=int(root.get("pid", "0")),
        monitor_path=monitor.get("path", ""),
        id=int(live.get("id", "-1")),
        domain_xml=etree.tostring(domain, encoding="unicode", with_tail=False),
        vnc_port=int(vnc) if vnc is not None else None,
        spice_port=int(spice) if spice is not None else None,
        pty_paths={p.get("alias", ""): p.get("path", "") for p in live.iter("pty")},
        taps={t.get("alias", ""): t.get("dev", "") for t in live.iter("tap")},
        ports={t.get("alias", ""): t.get("portid", "") for t in live.iter("tap")
               if t.get("portid")},
        bridges={t.get("alias", ""): t.get("bridge", "") for t in live.iter("tap")
                 if t.get("bridge")},
    )
