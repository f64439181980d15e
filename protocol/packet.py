"""libvirt's packet framing: a length word, a fixed 24-byte header, a body.

Every packet on the wire is ``length(4) | prog vers proc type serial status (24) | body``
with ``length`` counting itself. This module is on the hot path of every call, so
it is a handful of precompiled structs and constants, plus the error-reply body
(``virNetMessageError``) which is encoded by hand: it is fixed and tiny.
"""

from __future__ import annotations

import struct

# Sizes (virnetprotocol.x).
MESSAGE_INITIAL = 65536
MESSAGE_LEGACY_PAYLOAD_MAX = 262144
MESSAGE_MAX = 16777216  # header + body, without the length word
MESSAGE_HEADER_MAX = 24
MESSAGE_PAYLOAD_MAX = MESSAGE_MAX - MESSAGE_HEADER_MAX
MESSAGE_LEN_MAX = 4
MESSAGE_STRING_MAX = 4194304
MESSAGE_NUM_FDS_MAX = 32

#: Smallest and largest acceptable value of the length word.
PACKET_MIN = MESSAGE_LEN_MAX + MESSAGE_HEADER_MAX
PACKET_MAX = MESSAGE_LEN_MAX + MESSAGE_MAX

# virNetMessageType
CALL = 0
REPLY = 1
MESSAGE = 2
STREAM = 3
CALL_WITH_FDS = 4
REPLY_WITH_FDS = 5
STREAM_HOLE = 6

# virNetMessageStatus
OK = 0
ERROR = 1
CONTINUE = 2

# Programs handled by the framing layer itself.
KEEPALIVE_PROGRAM = 0x6B656570
KEEPALIVE_VERSION = 1
KEEPALIVE_PROC_PING = 1
KEEPALIVE_PROC_PONG = 2

#: The length word alone.
LENGTH = struct.Struct(">I")
#: The header alone: prog, vers, proc (signed), type, serial, status.
HEADER = struct.Struct(">IIiiIi")
#: Length word and header together, for building a packet in one call.
PREFIX = struct.Struct(">IIIiiIi")


def packet(prog: int, vers: int, proc: int, type_: int, serial: int, status: int,
           body: bytes = b"") -> bytes:
    """One whole packet, length word included."""
    return PREFIX.pack(PACKET_MIN + len(body), prog, vers, proc, type_, serial, status) + body


def keepalive(proc: int) -> bytes:
    """A keepalive PING or PONG (a bodiless MESSAGE of the KEEPALIVE program)."""
    return packet(KEEPALIVE_PROGRAM, KEEPALIVE_VERSION, proc, MESSAGE, 0, OK)


PING = keepalive(KEEPALIVE_PROC_PING)
PONG = keepalive(KEEPALIVE_PROC_PONG)


# --- Error bodies -------------------------------------------------------------

# How libvirt formats a message from its detail, per error code (virErrorMsg with
# info). The client gets the format in ``str1`` and the detail in ``str2``; only the
# codes the daemon and its drivers raise are listed, the rest travel as "%s".
_FORMATS: dict[int, str] = {
    1: "internal error: %s",
    3: "this function is not supported by the connection driver: %s",
    5: "no connection driver available for %s",
    8: "invalid argument: %s",
    9: "operation failed: %s",
    27: "XML error: %s",
    28: "domain %s exists already",
    29: "operation forbidden: %s",
    42: "Domain not found: %s",
    43: "Network not found: %s",
    45: "authentication failed: %s",
    49: "Storage pool not found: %s",
    50: "Storage volume not found: %s",
    53: "Node device not found: %s",
    55: "Requested operation is not valid: %s",
    66: "Secret not found: %s",
    67: "unsupported configuration: %s",
    68: "Timed out during operation: %s",
    74: "argument unsupported: %s",
    78: "operation aborted: %s",
    84: "Operation not supported: %s",
    87: "resource busy: %s",
    88: "access denied: %s",
    90: "storage volume %s exists already",
}
_SPLIT = {code: tuple(fmt.split("%s")) for code, fmt in _FORMATS.items()}

_INT2 = struct.Struct(">ii")
_TAIL = struct.Struct(">Iii I")  # str3 absent, int1, int2, net absent


def _string(text: str) -> bytes:
    """An optional XDR string that is present: flag, length, bytes, padding."""
    data = text.encode()
    n = len(data)
    return struct.pack(">II", 1, n) + data + b"\0" * (-n & 3)


def split_message(code: int, message: str) -> tuple[str, str]:
    """(format, detail) as libvirt sends them in ``str1`` and ``str2``."""
    parts = _SPLIT.get(code)
    if parts is not None:
        head, tail = parts
        if message.startswith(head) and message.endswith(tail) and \
                len(message) >= len(head) + len(tail):
            return _FORMATS[code], message[len(head):len(message) - len(tail)]
    return "%s", message


def error_body(code: int, domain: int, message: str, level: int = 2, int1: int = -1) -> bytes:
    """A ``virNetMessageError`` (``remote_error``) as libvirtd fills it; ``int1``
    carries the errno of a system error."""
    str1, str2 = split_message(code, message)
    return b"".join((
        _INT2.pack(code, domain), _string(message),
        _INT2.pack(level, 0),  # level, dom absent
        _string(str1), _string(str2),
        _TAIL.pack(0, int1, -1, 0),
    ))


def decode_error(body: bytes) -> tuple[int, int, str | None, int]:
    """(code, domain, message, level) of an error body; for tests and tools."""
    code, domain = _INT2.unpack_from(body, 0)
    offset = 8
    message = None
    if LENGTH.unpack_from(body, offset)[0]:
        (n,) = LENGTH.unpack_from(body, offset + 4)
        message = bytes(body[offset + 8:offset + 8 + n]).decode()
        offset += 8 + n + (-n & 3)
    else:
        offset += 4
    (level,) = LENGTH.unpack_from(body, offset)
    return code, domain, message, level
