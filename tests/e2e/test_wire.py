"""The daemon on the wire: raw packets and libvirt-python against a real aiovirtd.

What matters here is what libvirtd does at the protocol level: pipelining,
errors for unknown programs and procedures, broken framing closing only the
offending connection, keepalive, connection limits, read-only sockets.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable, Iterator

import pytest

from e2e.daemon import DaemonProcess
from protocol import packet

REMOTE = 0x20008086
AUTH_LIST, CONNECT_OPEN, SUPPORTS_FEATURE, GET_LIB_VERSION = 66, 1, 60, 157
DOMAIN_DEFINE_XML, DOMAIN_CREATE = 11, 9
FEATURE_PROGRAM_KEEPALIVE = 10


class Wire:
    """A raw connection speaking packets."""

    def __init__(self, path: os.PathLike[str] | str, timeout: float = 5) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.serial = 0

    def close(self) -> None:
        self.sock.close()

    def send(self, proc: int, body: bytes = b"", *, prog: int = REMOTE, vers: int = 1,
             type_: int = packet.CALL, serial: int | None = None) -> int:
        if serial is None:
            self.serial += 1
            serial = self.serial
        self.sock.sendall(packet.packet(prog, vers, proc, type_, serial, packet.OK, body))
        return serial

    def recv(self) -> tuple[tuple[int, ...], bytes] | None:
        head = self._exactly(4)
        if head is None:
            return None
        (length,) = struct.unpack(">I", head)
        rest = self._exactly(length - 4)
        if rest is None:
            return None
        return packet.HEADER.unpack_from(rest, 0), rest[24:]

    def reply(self) -> tuple[tuple[int, ...], bytes]:
        """The next packet that is not a keepalive."""
        while True:
            msg = self.recv()
            assert msg is not None, "connection closed"
            if msg[0][0] != packet.KEEPALIVE_PROGRAM:
                return msg

    def call(self, proc: int, body: bytes = b"") -> tuple[tuple[int, ...], bytes]:
        self.send(proc, body)
        return self.reply()

    def open(self, uri: str = "qemu:///system") -> None:
        assert self.call(AUTH_LIST)[0][5] == packet.OK
        assert self.call(CONNECT_OPEN, _opt_string(uri) + b"\0\0\0\0")[0][5] == packet.OK

    def closed(self, within: float = 5) -> bool:
        """True once the daemon has closed this connection (data is discarded)."""
        self.sock.settimeout(within)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            pass
        return True

    def _exactly(self, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            data += chunk
        return data


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">I", len(data)) + data + b"\0" * (-len(data) & 3)


def _opt_string(text: str) -> bytes:
    return b"\0\0\0\1" + _string(text)


def _error(body: bytes) -> tuple[int, int, str | None, int]:
    return packet.decode_error(body)


@pytest.fixture
def configured() -> Iterator[Callable[[str], DaemonProcess]]:
    """Start daemons with a libvirtd.conf of the test's own."""
    started: list[DaemonProcess] = []

    def start(conf: str) -> DaemonProcess:
        d = DaemonProcess()
        started.append(d)
        conf_dir = d.root / "etc/libvirt"
        conf_dir.mkdir(parents=True)
        (conf_dir / "libvirtd.conf").write_text(conf)
        return d.start()

    yield start
    for d in started:
        d.cleanup()


def test_pipelined_calls_answered_by_serial(module_daemon: DaemonProcess) -> None:
    w = Wire(module_daemon.sock)
    w.open()
    batch = b"".join(packet.packet(REMOTE, 1, GET_LIB_VERSION if s % 2 else 9999,
                                   packet.CALL, s, packet.OK) for s in range(100, 150))
    w.sock.sendall(batch)
    replies = {}
    for _ in range(50):
        header, body = w.reply()
        replies[header[4]] = (header, body)
    assert sorted(replies) == list(range(100, 150))
    for serial, (header, body) in replies.items():
        if serial % 2:
            assert header[2:] == (GET_LIB_VERSION, packet.REPLY, serial, packet.OK)
            assert struct.unpack(">Q", body) == (9000000,)
        else:
            assert header[5] == packet.ERROR
            assert _error(body) == (39, 7, "unknown procedure: 9999", 2)
    w.close()


def test_slow_call_does_not_hold_up_a_fast_one(module_daemon: DaemonProcess) -> None:
    conn = module_daemon.conn()
    name = "h4-wire-order"
    dom = conn.defineXML(f"<domain type='qemu'><name>{name}</name><memory>65536</memory>"
                         f"<os><type>hvm</type></os></domain>")
    try:
        w = Wire(module_daemon.sock)
        w.open()
        handle = _string(name) + dom.UUID() + struct.pack(">i", -1)
        slow = w.send(DOMAIN_CREATE, handle)
        fast = w.send(GET_LIB_VERSION)
        first, second = w.reply(), w.reply()
        if {first[0][4]: first, second[0][4]: second}[slow][0][5] != packet.OK:
            pytest.skip("guests cannot be started here: " + str(_error(
                {first[0][4]: first, second[0][4]: second}[slow][1])))
        assert first[0][4] == fast and second[0][4] == slow
        w.close()
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()


def test_unknown_program_version_and_procedure(module_daemon: DaemonProcess) -> None:
    w = Wire(module_daemon.sock)
    w.send(1, prog=0x1234)
    header, body = w.reply()
    assert header == (0x1234, 1, 1, packet.REPLY, 1, packet.ERROR)
    assert _error(body) == (39, 7, "Cannot find program 4660 version 1", 2)
    w.send(1, vers=2)
    assert _error(w.reply()[1]) == (39, 7, f"Cannot find program {REMOTE} version 2", 2)
    assert _error(w.call(4242)[1]) == (39, 7, "unknown procedure: 4242", 2)
    assert _error(w.call(GET_LIB_VERSION)[1]) == \
        (1, 7, "internal error: hypervisor connection not open", 2)
    w.close()


@pytest.mark.parametrize("length", [0, 3, 27, packet.PACKET_MAX + 1, 0xFFFFFFFF])
def test_bad_length_closes_only_that_connection(module_daemon: DaemonProcess,
                                                length: int) -> None:
    good = Wire(module_daemon.sock)
    good.open()
    bad = Wire(module_daemon.sock)
    bad.sock.sendall(struct.pack(">I", length) + b"\0" * 28)
    assert bad.closed()
    assert good.call(GET_LIB_VERSION)[0][5] == packet.OK
    good.close()


def test_garbage_flood_leaves_others_served(module_daemon: DaemonProcess) -> None:
    good = Wire(module_daemon.sock)
    good.open()
    for seed in range(3):
        bad = Wire(module_daemon.sock)
        rnd = os.urandom(1 << 20)
        if seed == 1:  # plausible lengths, random headers and bodies
            rnd = b"".join(struct.pack(">I", 28 + 64) + os.urandom(24 + 64) for _ in range(5000))
        try:
            bad.sock.sendall(rnd)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert good.call(GET_LIB_VERSION)[0][5] == packet.OK
        bad.close()
    assert module_daemon.running()
    good.close()


def test_keepalive_ping_pong_and_silent_client_dropped(configured) -> None:
    d = configured("keepalive_interval = 1\nkeepalive_count = 2\n")
    w = Wire(d.sock)
    w.open()
    w.sock.sendall(packet.PING)
    assert w.recv()[0] == (packet.KEEPALIVE_PROGRAM, 1, packet.KEEPALIVE_PROC_PONG,
                           packet.MESSAGE, 0, packet.OK)
    # No PINGs before the client says it speaks keepalive ...
    w.sock.settimeout(1.5)
    with pytest.raises(TimeoutError):
        w.recv()
    # ... then one per silent interval, answered PONGs keep the connection alive ...
    reply = w.call(SUPPORTS_FEATURE, struct.pack(">i", FEATURE_PROGRAM_KEEPALIVE))
    assert reply[1] == b"\0\0\0\1"
    w.sock.settimeout(3)
    for _ in range(3):
        assert w.recv()[0][2] == packet.KEEPALIVE_PROC_PING
        w.sock.sendall(packet.PONG)
    # ... and a client that stops answering is dropped after count PINGs.
    start = time.monotonic()
    pings = 0
    while (msg := w.recv()) is not None:
        assert msg[0][2] == packet.KEEPALIVE_PROC_PING
        pings += 1
    assert pings == 2
    assert time.monotonic() - start < 5
    other = Wire(d.sock)
    other.open()
    other.close()


def test_max_clients_queues_the_extra_connection(configured) -> None:
    d = configured("max_clients = 2\n")
    first, second = Wire(d.sock), Wire(d.sock)
    assert first.call(AUTH_LIST)[0][5] == packet.OK
    assert second.call(AUTH_LIST)[0][5] == packet.OK
    third = Wire(d.sock)  # connects into the backlog, is not served yet
    third.send(AUTH_LIST)
    third.sock.settimeout(0.5)
    with pytest.raises(TimeoutError):
        third.recv()
    first.close()
    third.sock.settimeout(5)
    assert third.reply()[0][5] == packet.OK
    second.close()
    third.close()


def test_readonly_socket_refuses_state_changes(module_daemon: DaemonProcess) -> None:
    import libvirt

    ro = module_daemon.conn(readonly=True)
    with pytest.raises(libvirt.libvirtError) as info:
        ro.defineXML("<domain type='qemu'><name>h4-ro</name><memory>65536</memory>"
                     "<os><type>hvm</type></os></domain>")
    err = info.value
    assert err.get_error_code() == libvirt.VIR_ERR_OPERATION_DENIED
    assert err.get_error_domain() == libvirt.VIR_FROM_DOMAIN
    assert err.get_error_message() == \
        "operation forbidden: read only access prevents virDomainDefineXML"
    assert ro.getLibVersion() == 9000000
    # The same through raw packets on the read-only socket.
    w = Wire(module_daemon.ro_sock)
    w.open()
    header, body = w.call(DOMAIN_DEFINE_XML, _string("<domain/>"))
    assert _error(body) == (29, 20, "operation forbidden: read only access prevents "
                                    "virDomainDefineXML", 2)
    w.close()


def test_readonly_open_flag_on_the_rw_socket(module_daemon: DaemonProcess) -> None:
    w = Wire(module_daemon.sock)
    assert w.call(AUTH_LIST)[0][5] == packet.OK
    assert w.call(CONNECT_OPEN, _opt_string("qemu:///system") + b"\0\0\0\1")[0][5] == packet.OK
    assert _error(w.call(DOMAIN_DEFINE_XML, _string("<domain/>"))[1])[0] == 29
    w.close()


def test_lifecycle_events_reach_registered_clients(module_daemon: DaemonProcess) -> None:
    import libvirt  # its callbacks run on the session's event loop (tests/conftest.py)

    seen: list[tuple[str, str, int, int]] = []
    conn = libvirt.open(module_daemon.uri)
    try:
        cb = conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
            lambda c, dom, event, detail, _: seen.append(("any", dom.name(), event, detail)),
            None)
        conn.domainEventRegister(
            lambda c, dom, event, detail, _: seen.append(("old", dom.name(), event, detail)),
            None)
        dom = conn.defineXML("<domain type='qemu'><name>h4-events</name>"
                             "<memory>65536</memory><os><type>hvm</type></os></domain>")
        dom.undefine()
        deadline = time.monotonic() + 5
        while len(seen) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        defined, undefined = libvirt.VIR_DOMAIN_EVENT_DEFINED, libvirt.VIR_DOMAIN_EVENT_UNDEFINED
        assert sorted(seen) == sorted([("any", "h4-events", defined, 0),
                                       ("old", "h4-events", defined, 0),
                                       ("any", "h4-events", undefined, 0),
                                       ("old", "h4-events", undefined, 0)])
        conn.domainEventDeregisterAny(cb)
    finally:
        conn.close()


def test_event_registration_errors(module_daemon: DaemonProcess) -> None:
    w = Wire(module_daemon.sock)
    w.open()
    assert _error(w.call(317, struct.pack(">i", 77))[1]) == \
        (1, 7, "internal error: domain event callback 77 not registered", 2)
    assert _error(w.call(168, struct.pack(">i", 0))[1]) == \
        (1, 7, "internal error: domain event 0 not registered", 2)
    assert _error(w.call(167, struct.pack(">i", 1000))[1]) == \
        (1, 7, "internal error: unsupported event ID 1000", 2)
    header, body = w.call(316, struct.pack(">iI", 5, 0))  # an event we never emit
    assert header[5] == packet.OK
    assert _error(w.call(316, struct.pack(">iI", 5, 0))[1]) == \
        (8, 0, "invalid argument: event callback already tracked", 2)
    (callback_id,) = struct.unpack(">i", body)
    assert w.call(317, struct.pack(">i", callback_id))[0][5] == packet.OK
    w.close()


def test_connect_close_ends_the_connection(module_daemon: DaemonProcess) -> None:
    w = Wire(module_daemon.sock)
    w.open()
    assert w.call(2)[0][5] == packet.OK
    assert w.closed()
