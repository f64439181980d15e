"""What generated code runs against: the error, the codec object and the module builder.

A compiled unit becomes a module whose constants and enums exist at once, but
whose types are compiled on first attribute access (PEP 562 ``__getattr__``):
the REMOTE program has about a thousand types and a daemon uses a few dozen,
so this keeps both start-up time and idle memory small.
"""

from __future__ import annotations

import struct
import threading
import types
import zlib
from collections.abc import Callable
from typing import Any

__all__ = ["CompileError", "XDRError", "Codec", "build_module", "GENERATED_VERSION"]

# Version of the generated code's conventions (prelude names, chunk layout);
# part of the cache key, so bump it whenever codegen output changes.
GENERATED_VERSION = "4"


class XDRError(ValueError):
    """Data does not match its XDR definition (malformed, truncated, too long, bad value)."""


class CompileError(Exception):
    """A definition file is not valid XDR; the message starts with ``file:line:``."""


# Anything generated code can raise on bad input or on a value of the wrong type.
_BAD_DATA = (struct.error, ValueError, TypeError, IndexError, OverflowError,
             AttributeError, KeyError, RecursionError, MemoryError)


class Codec:
    """Encoder/decoder of one named type (``T_codec`` in a compiled module)."""

    __slots__ = ("name", "_pack", "_unpack")

    def __init__(self, name: str, pack: Callable[[Any, bytearray], None],
                 unpack: Callable[[Any, int], tuple[Any, int]]):
        self.name = name
        self._pack = pack
        self._unpack = unpack

    def __repr__(self) -> str:
        return f"<Codec {self.name}>"

    def encode(self, value: Any) -> bytes:
        """Serialise *value*; raises XDRError if it does not fit the type."""
        out = bytearray()
        try:
            self._pack(value, out)
        except XDRError:
            raise
        except _BAD_DATA as e:
            raise XDRError(f"{self.name}: cannot encode: {e}") from None
        return bytes(out)

    def pack(self, value: Any, out: bytearray) -> None:
        """Append the encoding of *value* to *out* (left unchanged on error)."""
        start = len(out)
        try:
            self._pack(value, out)
        except XDRError:
            del out[start:]
            raise
        except _BAD_DATA as e:
            del out[start:]
            raise XDRError(f"{self.name}: cannot encode: {e}") from None

    def decode(self, data: bytes | bytearray | memoryview) -> Any:
        """Decode a value that fills *data* exactly."""
        try:
            value, pos = self._unpack(data, 0)
        except XDRError as e:
            raise XDRError(f"{self.name}: {e}") from None
        except _BAD_DATA:
            raise XDRError(f"{self.name}: truncated or malformed data") from None
        if pos != len(data):
            raise XDRError(f"{self.name}: {len(data) - pos} trailing bytes")
        return value

    def unpack(self, data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[Any, int]:
        """Decode one value at *offset*; returns it and the offset after it."""
        try:
            return self._unpack(data, offset)
        except XDRError as e:
            raise XDRError(f"{self.name}: {e}") from None
        except _BAD_DATA:
            raise XDRError(f"{self.name}: truncated or malformed data") from None


_U32 = struct.Struct(">I").unpack_from
_PRELUDE: dict[str, Any] = {
    "_Struct": struct.Struct,
    "_pack": struct.pack,
    "_unpack_from": struct.unpack_from,
    "_memoryview": memoryview,
    "_XE": XDRError,
    "_Codec": Codec,
    "_U32": _U32,
    "_UI": _U32,
    "_Ui": struct.Struct(">i").unpack_from,
    "_P32": struct.Struct(">I").pack,
    "_PI": struct.Struct(">I").pack,
    "_Pi": struct.Struct(">i").pack,
    "_PADS": (b"", b"\0", b"\0\0", b"\0\0\0"),
    "_ZERO": b"\0\0\0\0",
    "_ONE": b"\0\0\0\1",
}


def build_module(unit: tuple, name: str) -> types.ModuleType:
    """A module exposing a compiled unit (``codegen.Unit``).

    Type chunks are compiled on first use.
    """
    consts, enums, comments, chunks, zdict = unit
    module = types.ModuleType(name, f"XDR codecs compiled by protocol.xdr ({name})")
    ns = module.__dict__
    ns.update(_PRELUDE)
    ns.update(consts)
    for enum, members in enums.items():
        ns[enum] = dict(members)
        ns[f"_EV_{enum}"] = frozenset(members.values())
    done: set[str] = set()
    lock = threading.RLock()  # a type must be compiled once, or it has two classes

    def source(type_name: str) -> bytes:
        z = zlib.decompressobj(zdict=zdict)
        return z.decompress(chunks[type_name][0]) + z.flush()

    def materialize(type_name: str) -> None:
        if type_name in done:
            return
        done.add(type_name)  # first, so that recursive types terminate
        try:
            for dep in chunks[type_name][1]:
                materialize(dep)
            exec(compile(source(type_name), f"<xdr {name}:{type_name}>", "exec"), ns)
        except BaseException:
            done.discard(type_name)
            raise

    def __getattr__(attr: str) -> Any:
        type_name = attr[:-6] if attr.endswith("_codec") else attr
        if type_name not in chunks:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        with lock:
            materialize(type_name)
        try:
            return ns[attr]
        except KeyError:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}") from None

    def materialize_all() -> None:
        """Compile every type now (tests; or to front-load the cost)."""
        with lock:
            for type_name in chunks:
                materialize(type_name)

    ns["__getattr__"] = __getattr__
    ns["__xdr_types__"] = frozenset(chunks)
    ns["__xdr_comments__"] = comments
    ns["__xdr_source__"] = lambda type_name: source(type_name).decode()
    ns["__xdr_materialize_all__"] = materialize_all
    return module
