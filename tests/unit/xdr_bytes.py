"""XDR encodings written out by hand (RFC 4506), for tests that check wire layouts.

Independent of protocol/xdr on purpose: the expected bytes must not come from
the code under test.
"""

import struct

UUID = bytes(range(16))


def u32(v: int) -> bytes:
    return struct.pack(">I", v)


def i32(v: int) -> bytes:
    return struct.pack(">i", v)


def i64(v: int) -> bytes:
    return struct.pack(">q", v)


def u64(v: int) -> bytes:
    return struct.pack(">Q", v)


def s(text: str) -> bytes:
    """A string: its length, its UTF-8 bytes, zeros up to a multiple of four."""
    raw = text.encode()
    return u32(len(raw)) + raw + bytes(-len(raw) & 3)
