"""protocol.packet: header layout, limits, keepalive packets, error bodies."""

from __future__ import annotations

from protocol import packet

def test_limits_match_virnetprotocol() -> None:
    assert packet.MESSAGE_MAX == 16 * 1024 * 1024
    assert packet.MESSAGE_HEADER_MAX == 24
    assert packet.MESSAGE_PAYLOAD_MAX == packet.MESSAGE_MAX - 24
    assert packet.PACKET_MIN == 28
    assert packet.PACKET_MAX == packet.MESSAGE_MAX + 4


def test_packet_layout() -> None:
    data = packet.packet(0x20008086, 1, 157, packet.REPLY, 7, packet.OK, b"\0\0\0\0\0\x89T@")
    assert len(data) == 36
    assert packet.LENGTH.unpack_from(data)[0] == 36
    assert packet.HEADER.unpack_from(data, 4) == (0x20008086, 1, 157, 1, 7, 0)


def test_procedure_is_signed() -> None:
    data = packet.packet(1, 1, -1, packet.CALL, 1, packet.OK)
    assert data[12:16] == b"\xff\xff\xff\xff"
    assert packet.HEADER.unpack_from(data, 4)[2] == -1


def test_keepalive_packets() -> None:
    assert packet.PING == bytes.fromhex(
        "0000001c6b65657000000001000000010000000200000000" "00000000")
    assert packet.HEADER.unpack_from(packet.PONG, 4)[2] == packet.KEEPALIVE_PROC_PONG


def test_error_body_is_what_libvirtd_sends() -> None:
    # Captured from libvirtd 9.0: GET_LIB_VERSION before CONNECT_OPEN.
    expected = bytes.fromhex(
        "00000001" "00000007"
        "00000001" "0000002e" "696e7465726e616c206572726f723a2068797065727669736f7220"
        "636f6e6e656374696f6e206e6f74206f70656e" "0000"
        "00000002" "00000000"
        "00000001" "00000012" "696e7465726e616c206572726f723a202573" "0000"
        "00000001" "0000001e" "68797065727669736f7220636f6e6e656374696f6e206e6f74206f70656e"
        "0000"
        "00000000" "ffffffff" "ffffffff" "00000000")
    assert packet.error_body(1, 7, "internal error: hypervisor connection not open") == expected


def test_error_body_rpc_has_plain_format() -> None:
    body = packet.error_body(39, 7, "authentication required")
    assert packet.decode_error(body) == (39, 7, "authentication required", 2)
    assert b"\x00\x00\x00\x02%s\x00\x00" in body


def test_split_message() -> None:
    assert packet.split_message(42, "Domain not found: no domain with matching name 'x'") == \
        ("Domain not found: %s", "no domain with matching name 'x'")
    assert packet.split_message(28, "domain 'x' exists already") == \
        ("domain %s exists already", "'x'")
    # A message that does not follow its code's format travels whole.
    assert packet.split_message(8, "unsupported flags (0x1) in function f") == \
        ("%s", "unsupported flags (0x1) in function f")
    assert packet.split_message(39, "unknown procedure: 5") == ("%s", "unknown procedure: 5")


def test_decode_error_roundtrip_unicode() -> None:
    body = packet.error_body(9, 10, "operation failed: ünïcode")
    assert packet.decode_error(body) == (9, 10, "operation failed: ünïcode", 2)
