"""Property tests of generated codecs: round trips, and bad input only ever raises XDRError.

Value strategies are derived from the same resolved shapes the generator uses,
so every type of a definition file can be exercised without hand-written data.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.xdr import XDRError, compile_text
from protocol.xdr.codegen import (
    UNBOUNDED, Array, Chars, Named, Opaque, Optional, Prim, String, _Gen, attr_name,
)
from protocol.xdr.parser import Enum, Struct, Union, parse

from test_xdr_compiler import SAMPLE

_INTS = {
    "i": (-2**31, 2**31 - 1), "I": (0, 2**32 - 1), "q": (-2**63, 2**63 - 1),
    "Q": (0, 2**64 - 1), "char": (-128, 127), "uchar": (0, 255),
    "short": (-32768, 32767), "ushort": (0, 65535),
}
_LIST_CAP = 4  # keep generated lists small; limits are tested separately


class Strategies:
    """Hypothesis strategies for every type of a parsed compile unit."""

    def __init__(self, defs, module):
        self.gen = _Gen(defs)
        self.module = module
        self.named: dict[str, st.SearchStrategy] = {}

    def cap(self, size: int) -> int:
        return min(size, _LIST_CAP) if size != UNBOUNDED else _LIST_CAP

    def shape(self, s) -> st.SearchStrategy:
        if isinstance(s, Prim):
            if s.kind in _INTS:
                return st.integers(*_INTS[s.kind])
            if s.kind == "f":
                return st.floats(width=32, allow_nan=False)
            if s.kind == "d":
                return st.floats(allow_nan=False)
            if s.kind == "bool":
                return st.booleans()
            return st.sampled_from(sorted(self.gen.enums[s.enum].values()))
        if isinstance(s, (Opaque, Chars)):
            if s.fixed:
                return st.binary(min_size=s.size, max_size=s.size)
            return st.binary(max_size=self.cap(s.size) * 4 if s.size > 16 else s.size)
        if isinstance(s, String):
            # max bytes / 4 characters always fits, whatever UTF-8 makes of them
            return st.text(max_size=min(s.size // 4, 16))
        if isinstance(s, Array):
            n = s.size if s.fixed else self.cap(s.size)
            return st.lists(self.shape(s.elem), min_size=n if s.fixed else 0, max_size=n)
        if isinstance(s, Optional):
            return st.none() | self.shape(s.elem)
        assert isinstance(s, Named)
        return st.deferred(lambda: self.type(s.name))

    def type(self, name: str) -> st.SearchStrategy:
        if name in self.named:
            return self.named[name]
        d = self.gen.types[name]
        if isinstance(d, Struct):
            cls = getattr(self.module, name)
            fields = {attr_name(f.name): self.shape(self.gen.shape(f)) for f in d.fields}
            result = st.builds(cls, **fields)
        elif isinstance(d, Union):
            options = []
            for arm in d.arms:
                cases = [self.gen.resolve(v, "") for v in arm.cases]
                arm_st = st.none() if arm.decl.kind == "void" else self.shape(
                    self.gen.shape(arm.decl))
                options.append(st.tuples(st.sampled_from(cases), arm_st))
            if d.default is not None:
                used = {self.gen.resolve(v, "") for a in d.arms for v in a.cases}
                disc = self.gen.base_shape(d.discriminant.type, "")
                if isinstance(disc, Prim) and disc.kind == "enum":
                    free = sorted(set(self.gen.enums[disc.enum].values()) - used)
                    keys = st.sampled_from(free) if free else st.nothing()
                else:
                    keys = st.integers(0, 1000).filter(lambda v: v not in used)
                arm_st = st.none() if d.default.kind == "void" else self.shape(
                    self.gen.shape(d.default))
                options.append(st.tuples(keys, arm_st))
            result = st.one_of(options)
        elif isinstance(d, Enum):
            result = st.sampled_from(sorted(self.gen.enums[name].values()))
        else:
            result = self.shape(self.gen.shape(d.decl))
        self.named[name] = result
        return result


def _sample_module():
    defs = parse(SAMPLE, "sample.x")
    module = compile_text(SAMPLE, "hsample")
    return module, Strategies(defs, module), sorted(module.__xdr_types__)


MODULE, STRATS, TYPES = _sample_module()


def _round_trip(module, name, value):
    codec = getattr(module, name + "_codec")
    data = codec.encode(value)
    assert len(data) % 4 == 0
    assert codec.decode(data) == value
    assert codec.unpack(b"pad!" + data, 4) == (value, len(data) + 4)


def _decode_only_raises_xdr_error(codec, data):
    try:
        codec.decode(data)
    except XDRError:
        pass


@pytest.mark.parametrize("name", TYPES)
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data())
def test_round_trip(name, data):
    _round_trip(MODULE, name, data.draw(STRATS.type(name)))


@pytest.mark.parametrize("name", TYPES)
@settings(max_examples=60, deadline=None)
@given(garbage=st.binary(max_size=200))
def test_garbage_raises_only_xdr_error(name, garbage):
    _decode_only_raises_xdr_error(getattr(MODULE, name + "_codec"), garbage)


@pytest.mark.parametrize("name", TYPES)
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data())
def test_damaged_encodings_raise_only_xdr_error(name, data):
    codec = getattr(MODULE, name + "_codec")
    good = codec.encode(data.draw(STRATS.type(name)))
    cut = data.draw(st.integers(0, len(good)))
    if cut < len(good):
        with pytest.raises(XDRError):
            codec.decode(good[:cut])  # truncated: never silently accepted
    with pytest.raises(XDRError, match="trailing"):
        codec.decode(good + data.draw(st.binary(min_size=1, max_size=8)))
    if good:
        pos = data.draw(st.integers(0, len(good) - 1))
        flipped = bytearray(good)
        flipped[pos] ^= data.draw(st.integers(1, 255))
        _decode_only_raises_xdr_error(codec, bytes(flipped))
        _decode_only_raises_xdr_error(codec, memoryview(bytes(flipped)))


# -- the real REMOTE definitions, sampled ---------------------------------------------

DEFS = Path(__file__).resolve().parents[2] / "protocol" / "defs"
REMOTE_FILES = [DEFS / n for n in ("libvirt.x", "remote.x", "remote_domain.x")]


@pytest.fixture(scope="module")
def remote():
    if not all(p.exists() for p in REMOTE_FILES):
        pytest.skip("remote definitions not present")
    text = "\n".join(p.read_text() for p in REMOTE_FILES)
    defs = []
    for p in REMOTE_FILES:
        defs.extend(parse(p.read_text(), str(p)))
    module = compile_text(text, "hremote")
    return module, Strategies(defs, module)


def _round_trip_check(module, strats, name):
    @settings(max_examples=3, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strats.type(name))
    def check(value):
        _round_trip(module, name, value)
    return check


def test_every_remote_type_round_trips_and_rejects_garbage(remote):
    """One drawn value per type (a full search over ~700 types would be slow)."""
    module, strats = remote
    garbage = [b"", b"\0" * 3, b"\xff" * 64, bytes(range(256)), b"\0\0\0\1" * 40]
    for name in sorted(module.__xdr_types__):
        codec = getattr(module, name + "_codec")
        for blob in garbage:
            _decode_only_raises_xdr_error(codec, blob)
        _round_trip_check(module, strats, name)()
