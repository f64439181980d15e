"""Generate specialised Python encoders/decoders from parsed XDR definitions.

Every struct, union, enum and typedef becomes one *chunk* of Python source
(class + ``_p_T(value, out)`` + ``_u_T(data, pos)`` + ``T_codec``), compiled
only when first used (see ``runtime``). Speed comes from three choices:

* typedefs are inlined, so ``remote_nonnull_string name`` is a few lines of
  slicing, not a call;
* runs of consecutive fixed-size fields are read and written with one
  precompiled ``struct.Struct`` (``unpack_from`` / ``pack``);
* only structs and unions are called as functions; a struct's fields are
  decoded into locals and passed to the class constructor once.
"""

from __future__ import annotations

import keyword
import zlib
from collections import Counter
from dataclasses import dataclass

from .runtime import CompileError
from .parser import Const, Decl, Definition, Enum, Struct, Typedef, TypeDefinition, Union

__all__ = ["Unit", "generate"]

UNBOUNDED = 0xFFFFFFFF

# Builtins the generated code calls; a type or constant may not shadow them.
_RESERVED = frozenset({"bytes", "len", "list", "range", "str"})

# A struct or union with at most this many fields/arms is coded in place in
# the code of the types that contain it (saving a call per value), to this depth.
_INLINE_ITEMS = 8
_INLINE_DEPTH = 2


# -- shapes: what a declaration looks like on the wire, typedefs resolved ------

@dataclass(frozen=True, slots=True)
class Prim:
    """One scalar: kind is a struct format char, or bool/enum/char/uchar/short/ushort."""

    kind: str
    enum: str | None = None


@dataclass(frozen=True, slots=True)
class Opaque:
    fixed: bool
    size: int  # exact length, or maximum


@dataclass(frozen=True, slots=True)
class String:
    size: int  # maximum


@dataclass(frozen=True, slots=True)
class Chars:
    """rpcgen ``char x[N]`` / ``x<N>``: one 4-byte int per byte, exposed as bytes."""

    fixed: bool
    size: int
    signed: bool


@dataclass(frozen=True, slots=True)
class Array:
    elem: Shape
    fixed: bool
    size: int


@dataclass(frozen=True, slots=True)
class Optional:
    elem: Shape


@dataclass(frozen=True, slots=True)
class Named:
    """A struct or union, coded by its own functions."""

    name: str


Shape = Prim | Opaque | String | Chars | Array | Optional | Named
Sized = Opaque | String | Chars | Array  # shapes with a length

_PRIM_FORMAT = {
    "i": "i", "I": "I", "q": "q", "Q": "Q", "f": "f", "d": "d",
    "bool": "I", "enum": "i", "char": "i", "uchar": "I", "short": "i", "ushort": "I",
}
_PRIM_SIZE = {"q": 8, "Q": 8, "d": 8}
_BUILTIN_PRIM = {
    "int": "i", "unsigned int": "I", "hyper": "q", "unsigned hyper": "Q",
    "float": "f", "double": "d", "bool": "bool", "char": "char",
    "unsigned char": "uchar", "short": "short", "unsigned short": "ushort",
}
_RANGES = {"char": (-128, 127), "uchar": (0, 255), "short": (-32768, 32767), "ushort": (0, 65535)}


def _prim_size(p: Prim) -> int:
    return _PRIM_SIZE.get(p.kind, 4)


def _pad(n: int) -> int:
    return -n & 3


def fixed_size(shape: Shape) -> int | None:
    """Wire size if it never varies and the shape can join a ``struct`` run."""
    if isinstance(shape, Prim):
        return _prim_size(shape)
    if isinstance(shape, Opaque) and shape.fixed:
        return shape.size + _pad(shape.size)
    if isinstance(shape, Chars) and shape.fixed:
        return 4 * shape.size
    if isinstance(shape, Array) and shape.fixed and isinstance(shape.elem, Prim):
        return shape.size * _prim_size(shape.elem)
    return None


# consts, enums, enum member comments, {type name: (zlib'd source, deps)} and the
# chunks' preset zlib dictionary: plain data so that it can be cached with
# marshal. Compressed, the REMOTE unit's ~1.6 MB of source holds ~0.25 MB of
# memory until its types are used.
Unit = tuple[dict[str, int], dict[str, dict[str, int]], dict[str, dict[str, list[str]]],
             dict[str, tuple[bytes, tuple[str, ...]]], bytes]

# Each chunk is compressed on its own, so that using a type inflates only its
# code; the lines most chunks share (class boilerplate, bounds checks) go in a
# preset dictionary, which halves the compressed size of small chunks.
_ZDICT_SIZE = 16384


def _zdict(sources: list[bytes]) -> bytes:
    """The most common lines of ``sources``, the most common last (nearest)."""
    counts = Counter(line for source in sources
                     for line in dict.fromkeys(source.splitlines(keepends=True)))
    picked: list[bytes] = []
    size = 0
    for line, n in counts.most_common():
        if n < 3 or size + len(line) > _ZDICT_SIZE:
            break
        picked.append(line)
        size += len(line)
    return b"".join(reversed(picked))


def _compress(source: bytes, zdict: bytes) -> bytes:
    z = zlib.compressobj(9, zdict=zdict)
    return z.compress(source) + z.flush()


# -- the generator ---------------------------------------------------------------

class _Gen:
    def __init__(self, defs: list[Definition]):
        self.types: dict[str, TypeDefinition] = {}
        self.const_defs: dict[str, tuple[int | str, str]] = {}
        self.enums: dict[str, dict[str, int]] = {}
        self.comments: dict[str, dict[str, list[str]]] = {}
        for d in defs:
            if isinstance(d, Const):
                self._add_const(d.name, d.value, d.where)
            else:
                if d.name in self.types:
                    raise CompileError(f"{d.where}: type {d.name} already defined at "
                                       f"{self.types[d.name].where}")
                self.types[d.name] = d
                if isinstance(d, Enum):
                    for m in d.members:
                        self._add_const(m.name, m.value, m.where)
        for name, where in [(n, v[1]) for n, v in self.const_defs.items()] + \
                [(n, t.where) for n, t in self.types.items()]:
            if name.startswith("_") or name in _RESERVED:
                raise CompileError(f"{where}: the name {name} is reserved in generated code")
            if name in self.types and name in self.const_defs:
                raise CompileError(f"{where}: {name} is both a type and a constant")
        self.consts: dict[str, int] = {}
        for name in self.const_defs:
            self.resolve(name, "")
        for d in defs:
            if isinstance(d, Enum):
                self.enums[d.name] = {m.name: self.consts[m.name] for m in d.members}
                self.comments[d.name] = {m.name: m.comments for m in d.members if m.comments}
        self._min_sizes: dict[str, int] = {}
        self._unions: dict[str, tuple[Prim, list[tuple[list[int], Decl]]]] = {}
        self._recursive: dict[str, bool] = {}

    def _add_const(self, name: str, value: int | str, where: str) -> None:
        old = self.const_defs.get(name)
        if old is not None and old[0] != value:
            raise CompileError(f"{where}: constant {name} already defined at {old[1]} "
                               f"with another value")
        if old is None:
            self.const_defs[name] = (value, where)

    def resolve(self, value: int | str, where: str, _seen: frozenset = frozenset()) -> int:
        """A number, or the value of the named constant (defined anywhere in the unit)."""
        if isinstance(value, int):
            return value
        if value in self.consts:
            return self.consts[value]
        if value not in self.const_defs:
            raise CompileError(f"{where}: unknown constant {value}")
        if value in _seen:
            raise CompileError(f"{where}: constant {value} is defined in terms of itself")
        raw, def_where = self.const_defs[value]
        result = self.resolve(raw, def_where, _seen | {value})
        self.consts[value] = result
        return result

    def size(self, decl: Decl) -> int:
        if decl.size is None:
            return UNBOUNDED
        n = self.resolve(decl.size, decl.where)
        if not 0 <= n <= UNBOUNDED:
            raise CompileError(f"{decl.where}: bad size {n} for {decl.name}")
        return n

    # -- shapes -----------------------------------------------------------

    def shape(self, decl: Decl, _seen: frozenset = frozenset()) -> Shape:
        t = decl.type
        if t == "opaque":
            return Opaque(decl.kind == "fixed", self.size(decl))
        if t == "string":
            return String(self.size(decl))
        base = self.base_shape(t, decl.where, _seen)
        if decl.kind == "scalar":
            return base
        if decl.kind == "optional":
            return Optional(base)
        fixed = decl.kind == "fixed"
        if isinstance(base, Prim) and base.kind in ("char", "uchar"):
            return Chars(fixed, self.size(decl), base.kind == "char")
        return Array(base, fixed, self.size(decl))

    def base_shape(self, t: str, where: str, _seen: frozenset = frozenset()) -> Shape:
        if t in _BUILTIN_PRIM:
            return Prim(_BUILTIN_PRIM[t])
        if t == "void":
            raise CompileError(f"{where}: void used as a type")
        d = self.types.get(t)
        if d is None:
            raise CompileError(f"{where}: unknown type {t}")
        if isinstance(d, Enum):
            return Prim("enum", t)
        if isinstance(d, Typedef):
            if t in _seen:
                raise CompileError(f"{where}: typedef {t} refers to itself")
            return self.shape(d.decl, _seen | {t})
        return Named(t)

    def attrs(self, d: Struct) -> list[str]:
        attrs = [attr_name(f.name) for f in d.fields]
        if len(set(attrs)) != len(attrs):
            raise CompileError(f"{d.where}: struct {d.name} has duplicate field names")
        return attrs

    def union_info(self, d: Union) -> tuple[Prim, list[tuple[list[int], Decl]]]:
        """Discriminant shape and arms with resolved case values (checked once)."""
        if d.name in self._unions:
            return self._unions[d.name]
        t = d.discriminant.type
        disc = self.base_shape(t, d.discriminant.where) if t not in ("opaque", "string") else None
        if not isinstance(disc, Prim) or disc.kind not in ("i", "I", "enum", "bool"):
            raise CompileError(f"{d.where}: union {d.name} discriminant must be int, "
                               f"unsigned int, bool or an enum")
        arms: list[tuple[list[int], Decl]] = []
        seen: set[int] = set()
        for arm in d.arms:
            values = [self.resolve(v, arm.decl.where) for v in arm.cases]
            for v in values:
                if v in seen:
                    raise CompileError(f"{arm.decl.where}: case {v} repeated in union {d.name}")
                seen.add(v)
            arms.append((values, arm.decl))
        self._unions[d.name] = (disc, arms)
        return disc, arms

    def named_refs(self, name: str) -> set[str]:
        """Structs and unions that *name*'s encoding refers to directly."""
        d = self.types[name]
        assert isinstance(d, (Struct, Union))
        decls = d.fields if isinstance(d, Struct) else d.decls()
        refs: set[str] = set()

        def walk(shape: Shape) -> None:
            if isinstance(shape, Named):
                refs.add(shape.name)
            elif isinstance(shape, (Array, Optional)):
                walk(shape.elem)
        for decl in decls:
            if decl.kind != "void":
                walk(self.shape(decl))
        return refs

    def recursive(self, name: str) -> bool:
        """Whether *name* can contain itself (such types are never inlined)."""
        if name not in self._recursive:
            seen: set[str] = set()
            todo = list(self.named_refs(name))
            while todo:
                ref = todo.pop()
                if ref not in seen:
                    seen.add(ref)
                    todo.extend(self.named_refs(ref))
            self._recursive[name] = name in seen
        return self._recursive[name]

    def min_size(self, shape: Shape) -> int:
        fs = fixed_size(shape)
        if fs is not None:
            return fs
        if isinstance(shape, Array) and shape.fixed:
            return shape.size * self.min_size(shape.elem)
        if isinstance(shape, Named):
            name = shape.name
            if name not in self._min_sizes:
                self._min_sizes[name] = 0  # breaks cycles through fixed arrays
                d = self.types[name]
                if isinstance(d, Struct):
                    n = sum(self.min_size(self.shape(f)) for f in d.fields)
                else:
                    assert isinstance(d, Union)
                    n = 4 + min(0 if a.kind == "void" else self.min_size(self.shape(a))
                                for a in d.decls())
                self._min_sizes[name] = n
            return self._min_sizes[name]
        return 4  # a length or a presence flag at least

    # -- output -------------------------------------------------------------

    def unit(self) -> Unit:
        generated: dict[str, tuple[bytes, tuple[str, ...]]] = {}
        for name, d in self.types.items():
            chunk = _Chunk(self, name)
            if isinstance(d, Struct):
                chunk.struct(d)
            elif isinstance(d, Union):
                chunk.union(d)
            elif isinstance(d, Enum):
                chunk.enum(d)
            else:
                chunk.typedef(d)
            generated[name] = chunk.finish()
        zdict = _zdict([source for source, _ in generated.values()])
        chunks = {name: (_compress(source, zdict), deps)
                  for name, (source, deps) in generated.items()}
        return self.consts, self.enums, self.comments, chunks, zdict


def attr_name(field: str) -> str:
    """Python attribute for an XDR field name (keywords get a trailing underscore)."""
    return field + "_" if keyword.iskeyword(field) else field


class _Chunk:
    """Source for one named type; helper names are suffixed to stay unique per module."""

    def __init__(self, gen: _Gen, name: str):
        self.gen = gen
        self.name = name
        self.head: list[str] = []  # module-level precompiled Structs
        self.body: list[str] = []
        self.deps: set[str] = set()
        self.counter = 0
        self.structs: dict[tuple[str, str], str] = {}
        self.inlining: list[str] = []

    def inlinable(self, name: str) -> Struct | Union | None:
        """The definition to inline in place of a call, if it is small and not recursive."""
        d = self.gen.types[name]
        if (not isinstance(d, (Struct, Union)) or name == self.name or name in self.inlining
                or len(self.inlining) >= _INLINE_DEPTH or self.gen.recursive(name)):
            return None
        size = len(d.fields) if isinstance(d, Struct) else len(d.arms) + 1
        return d if size <= _INLINE_ITEMS else None

    def finish(self) -> tuple[bytes, tuple[str, ...]]:
        """Source (compressed by ``unit``, kept so until first use) and dependencies."""
        self.deps.discard(self.name)
        source = "\n".join(self.head + self.body) + "\n"
        return source.encode(), tuple(sorted(self.deps))

    def tmp(self, stem: str) -> str:
        self.counter += 1
        return f"_{stem}{self.counter}"

    def struct_const(self, fmt: str, method: str) -> str:
        """A module-level bound ``Struct(fmt).method``, shared within the chunk."""
        key = (fmt, method)
        if key not in self.structs:
            ident = f"_{'D' if method == 'unpack_from' else 'E'}{len(self.structs)}_{self.name}"
            self.head.append(f"{ident} = _Struct({fmt!r}).{method}")
            self.structs[key] = ident
        return self.structs[key]

    # -- decoding -----------------------------------------------------------

    def dec_checks(self, p: Prim, var: str, what: str, ind: str, out: list[str],
                   convert: bool = True) -> None:
        """Validate a decoded scalar in *var* (and turn a bool into ``bool``)."""
        if p.kind == "bool":
            out.append(f"{ind}if {var} > 1: raise _XE({what + ': bad bool %d'!r} % {var})")
            if convert:
                out.append(f"{ind}{var} = {var} == 1")
        elif p.kind == "enum":
            out.append(f"{ind}if {var} not in _EV_{p.enum}: "
                       f"raise _XE({f'{what}: bad {p.enum} value %d'!r} % {var})")
        elif p.kind in _RANGES:
            lo, hi = _RANGES[p.kind]
            cond = f"{var} > {hi}" if lo == 0 else f"not {lo} <= {var} <= {hi}"
            out.append(f"{ind}if {cond}: raise _XE({what + ': value %d out of range'!r} % {var})")

    def dec_run(self, items: list[tuple[Shape, str, str]], ind: str, out: list[str]) -> None:
        """Decode consecutive fixed-size items with one ``unpack_from``."""
        fmt = ">"
        offset = 0
        plan: list[tuple[Shape, str, str, int, int]] = []  # shape, target, what, values, offset
        for shape, target, what in items:
            if isinstance(shape, Prim):
                fmt += _PRIM_FORMAT[shape.kind]
                plan.append((shape, target, what, 1, offset))
            elif isinstance(shape, Opaque):
                fmt += f"{shape.size}s" + (f"{_pad(shape.size)}x" if _pad(shape.size) else "")
                plan.append((shape, target, what, 1, offset))
            elif isinstance(shape, Chars):
                fmt += f"{4 * shape.size}x"
                plan.append((shape, target, what, 0, offset))
            else:
                assert isinstance(shape, Array) and isinstance(shape.elem, Prim)
                fmt += f"{shape.size}{_PRIM_FORMAT[shape.elem.kind]}"
                plan.append((shape, target, what, shape.size, offset))
            size = fixed_size(shape)
            assert size is not None
            offset += size
        unpack = self.struct_const(fmt, "unpack_from")
        if all(n <= 1 for _, _, _, n, _ in plan):
            targets = [t for _, t, _, n, _ in plan if n == 1]
            if targets:
                out.append(f"{ind}{', '.join(targets)}, = {unpack}(data, pos)")
            else:
                out.append(f"{ind}{unpack}(data, pos)")
        else:
            out.append(f"{ind}_t = {unpack}(data, pos)")
            k = 0
            for shape, target, _, n, _ in plan:
                if n == 1:
                    out.append(f"{ind}{target} = _t[{k}]")
                elif n > 1 or isinstance(shape, Array):
                    out.append(f"{ind}{target} = list(_t[{k}:{k + n}])")
                k += n
        for shape, target, what, _, off in plan:
            if isinstance(shape, Chars):
                start = f"pos + {off + 3}"
                out.append(f"{ind}{target} = bytes(data[{start}:pos + {off + 4 * shape.size}:4])")
            elif isinstance(shape, Prim):
                self.dec_checks(shape, target, what, ind, out)
            elif (isinstance(shape, Array) and isinstance(shape.elem, Prim)
                  and self.needs_check(shape.elem)):
                self.dec_list_checks(shape.elem, target, what, ind, out)
        out.append(f"{ind}pos += {offset}")

    @staticmethod
    def needs_check(p: Prim) -> bool:
        return p.kind in ("bool", "enum") or p.kind in _RANGES

    def dec_list_checks(self, p: Prim, target: str, what: str, ind: str, out: list[str]) -> None:
        e = self.tmp("e")
        out.append(f"{ind}for {e} in {target}:")
        self.dec_checks(p, e, what, ind + "    ", out, convert=False)
        if p.kind == "bool":
            out.append(f"{ind}{target} = [{e} == 1 for {e} in {target}]")

    def dec_length(self, shape: Sized, what: str, ind: str, out: list[str]) -> str:
        """Read a length word into a fresh local; check it against the maximum."""
        n = self.tmp("n")
        out.append(f"{ind}{n}, = _U32(data, pos)")
        if shape.size != UNBOUNDED:
            out.append(f"{ind}if {n} > {shape.size}: "
                       f"raise _XE({what + ': length %d exceeds ' + str(shape.size)!r} % {n})")
        return n

    def dec(self, shape: Shape, target: str, what: str, ind: str, out: list[str]) -> None:
        """Decode one item of any shape into *target*, advancing ``pos``."""
        if fixed_size(shape) is not None:
            self.dec_run([(shape, target, what)], ind, out)
        elif isinstance(shape, (Opaque, String)):
            n = self.dec_length(shape, what, ind, out)
            s = self.tmp("s")
            out.append(f"{ind}{s} = pos + 4")
            out.append(f"{ind}pos = {s} + {n} + (-{n} & 3)")
            out.append(f"{ind}if pos > len(data): raise _XE({what + ': truncated'!r})")
            if isinstance(shape, String):
                out.append(f"{ind}{target} = str(data[{s}:{s} + {n}], 'utf-8', 'surrogateescape')")
            else:
                out.append(f"{ind}{target} = bytes(data[{s}:{s} + {n}])")
        elif isinstance(shape, Chars):
            n = self.dec_length(shape, what, ind, out)
            s = self.tmp("s")
            out.append(f"{ind}{s} = pos + 4")
            out.append(f"{ind}pos = {s} + 4 * {n}")
            out.append(f"{ind}if pos > len(data): raise _XE({what + ': truncated'!r})")
            out.append(f"{ind}{target} = bytes(data[{s} + 3:pos:4])")
        elif isinstance(shape, Array) and not shape.fixed and isinstance(shape.elem, Prim):
            n = self.dec_length(shape, what, ind, out)
            size = _prim_size(shape.elem)
            c = _PRIM_FORMAT[shape.elem.kind]
            s = self.tmp("s")
            out.append(f"{ind}{s} = pos + 4")
            out.append(f"{ind}pos = {s} + {size} * {n}")
            out.append(f"{ind}if pos > len(data): raise _XE({what + ': truncated'!r})")
            out.append(f"{ind}{target} = list(_unpack_from(f'>{{{n}}}{c}', data, {s}))")
            if self.needs_check(shape.elem):
                self.dec_list_checks(shape.elem, target, what, ind, out)
        elif isinstance(shape, Array):
            if shape.fixed:
                count = str(shape.size)
            else:
                count = self.dec_length(shape, what, ind, out)
                out.append(f"{ind}pos += 4")
                min_size = self.gen.min_size(shape.elem)
                if min_size:
                    out.append(f"{ind}if {count} * {min_size} > len(data) - pos: "
                               f"raise _XE({what + ': truncated'!r})")
            x = self.tmp("x")
            out.append(f"{ind}{target} = []")
            out.append(f"{ind}for _ in range({count}):")
            self.dec(shape.elem, x, what + "[]", ind + "    ", out)
            out.append(f"{ind}    {target}.append({x})")
        elif isinstance(shape, Optional):
            k = self.tmp("k")
            out.append(f"{ind}{k}, = _U32(data, pos)")
            out.append(f"{ind}pos += 4")
            out.append(f"{ind}if {k} == 1:")
            self.dec(shape.elem, target, what, ind + "    ", out)
            out.append(f"{ind}elif {k}: raise _XE({what + ': bad optional flag %d'!r} % {k})")
            out.append(f"{ind}else: {target} = None")
        else:
            assert isinstance(shape, Named)
            d = self.inlinable(shape.name)
            if d is None:
                self.deps.add(shape.name)
                out.append(f"{ind}{target}, pos = _u_{shape.name}(data, pos)")
                return
            self.inlining.append(d.name)
            if isinstance(d, Struct):
                value = self.struct_dec(d, ind, out)
            else:
                value = self.union_dec(d, ind, out)
            self.inlining.pop()
            out.append(f"{ind}{target} = {value}")

    # -- encoding -------------------------------------------------------------

    def enc_prim_arg(self, p: Prim, expr: str, what: str, ind: str, out: list[str]) -> str:
        """Checks for one scalar; returns the expression to pack."""
        if p.kind == "bool":
            return f"1 if {expr} else 0"
        if p.kind == "enum":
            out.append(f"{ind}if {expr} not in _EV_{p.enum}: "
                       f"raise _XE({f'{what}: bad {p.enum} value %r'!r} % ({expr},))")
        elif p.kind in _RANGES:
            lo, hi = _RANGES[p.kind]
            out.append(f"{ind}if not {lo} <= {expr} <= {hi}: "
                       f"raise _XE({what + ': value %r out of range'!r} % ({expr},))")
        return expr

    def enc_run(self, items: list[tuple[Shape, str, str]], ind: str, out: list[str]) -> None:
        """Encode consecutive fixed-size items with one ``pack``."""
        fmt = ">"
        args: list[str] = []
        for shape, expr, what in items:
            if isinstance(shape, Prim):
                fmt += _PRIM_FORMAT[shape.kind]
                if self.needs_check(shape) and not expr.isidentifier():
                    var = self.tmp("a")
                    out.append(f"{ind}{var} = {expr}")
                    expr = var
                args.append(self.enc_prim_arg(shape, expr, what, ind, out))
                continue
            assert isinstance(shape, (Opaque, Chars, Array))
            var = self.tmp("a")
            out.append(f"{ind}{var} = {expr}")
            out.append(f"{ind}if len({var}) != {shape.size}: "
                       f"raise _XE({what + ': need length ' + str(shape.size) + ', got %d'!r}"
                       f" % len({var}))")
            if isinstance(shape, Opaque):
                fmt += f"{shape.size}s" + (f"{_pad(shape.size)}x" if _pad(shape.size) else "")
                args.append(var)
            elif isinstance(shape, Chars):
                fmt += f"{shape.size}{'i' if shape.signed else 'I'}"
                if shape.size:
                    args.append(f"*_memoryview({var}).cast('b')" if shape.signed else f"*{var}")
            else:
                assert isinstance(shape, Array) and isinstance(shape.elem, Prim)
                fmt += f"{shape.size}{_PRIM_FORMAT[shape.elem.kind]}"
                if shape.size:
                    args.append(self.enc_list_arg(shape.elem, var, what, ind, out))
        pack = self.struct_const(fmt, "pack")
        out.append(f"{ind}out += {pack}({', '.join(args)})")

    def enc_list_arg(self, p: Prim, var: str, what: str, ind: str, out: list[str]) -> str:
        if p.kind == "bool":
            return f"*[1 if _b else 0 for _b in {var}]"
        if self.needs_check(p):
            e = self.tmp("e")
            out.append(f"{ind}for {e} in {var}:")
            self.enc_prim_arg(p, e, what, ind + "    ", out)
        return f"*{var}"

    def enc_length(self, shape: Sized, var: str, what: str, ind: str, out: list[str]) -> str:
        n = self.tmp("n")
        out.append(f"{ind}{n} = len({var})")
        if shape.size != UNBOUNDED:
            out.append(f"{ind}if {n} > {shape.size}: "
                       f"raise _XE({what + ': length %d exceeds ' + str(shape.size)!r} % {n})")
        return n

    def enc(self, shape: Shape, expr: str, what: str, ind: str, out: list[str]) -> None:
        """Encode the value of *expr* (evaluated once) onto ``out``."""
        if fixed_size(shape) is not None:
            self.enc_run([(shape, expr, what)], ind, out)
            return
        if isinstance(shape, Named):
            d = self.inlinable(shape.name)
            if d is None:
                self.deps.add(shape.name)
                out.append(f"{ind}_p_{shape.name}({expr}, out)")
                return
            if not expr.isidentifier():
                var = self.tmp("v")
                out.append(f"{ind}{var} = {expr}")
                expr = var
            self.inlining.append(d.name)
            if isinstance(d, Struct):
                self.struct_enc(d, expr, ind, out)
            else:
                self.union_enc(d, expr, ind, out)
            self.inlining.pop()
            return
        var = self.tmp("v")
        if isinstance(shape, String):
            out.append(f"{ind}{var} = {expr}.encode('utf-8', 'surrogateescape')")
        else:
            out.append(f"{ind}{var} = {expr}")
        if isinstance(shape, (Opaque, String)):
            n = self.enc_length(shape, var, what, ind, out)
            out.append(f"{ind}out += _P32({n})")
            out.append(f"{ind}out += {var}")
            out.append(f"{ind}out += _PADS[-{n} & 3]")
        elif isinstance(shape, Chars):
            n = self.enc_length(shape, var, what, ind, out)
            if shape.signed:
                out.append(f"{ind}out += _pack(f'>I{{{n}}}i', {n}, *_memoryview({var}).cast('b'))")
            else:
                out.append(f"{ind}out += _pack(f'>I{{{n}}}I', {n}, *{var})")
        elif isinstance(shape, Array) and not shape.fixed and isinstance(shape.elem, Prim):
            n = self.enc_length(shape, var, what, ind, out)
            c = _PRIM_FORMAT[shape.elem.kind]
            arg = self.enc_list_arg(shape.elem, var, what, ind, out)
            out.append(f"{ind}out += _pack(f'>I{{{n}}}{c}', {n}, {arg})")
        elif isinstance(shape, Array):
            if shape.fixed:
                out.append(f"{ind}if len({var}) != {shape.size}: "
                           f"raise _XE({what + ': need length ' + str(shape.size) + ', got %d'!r}"
                           f" % len({var}))")
            else:
                n = self.enc_length(shape, var, what, ind, out)
                out.append(f"{ind}out += _P32({n})")
            e = self.tmp("e")
            out.append(f"{ind}for {e} in {var}:")
            self.enc(shape.elem, e, what + "[]", ind + "    ", out)
        else:
            assert isinstance(shape, Optional)
            out.append(f"{ind}if {var} is None:")
            out.append(f"{ind}    out += _ZERO")
            out.append(f"{ind}else:")
            out.append(f"{ind}    out += _ONE")
            self.enc(shape.elem, var, what, ind + "    ", out)

    # -- per-definition chunks -----------------------------------------------

    def fields_code(self, fields: list[tuple[Shape, str, str]], enc: bool,
                    ind: str, out: list[str]) -> None:
        """Code for a sequence of items, batching fixed-size runs."""
        run: list[tuple[Shape, str, str]] = []
        for item in fields:
            if fixed_size(item[0]) is not None:
                run.append(item)
                continue
            if run:
                (self.enc_run if enc else self.dec_run)(run, ind, out)
                run = []
            (self.enc if enc else self.dec)(*item, ind, out)
        if run:
            (self.enc_run if enc else self.dec_run)(run, ind, out)

    def codec(self, name: str) -> None:
        self.body.append(f"{name}_codec = _Codec({name!r}, _p_{name}, _u_{name})")

    def struct(self, d: Struct) -> None:
        name = d.name
        attrs = self.gen.attrs(d)
        b = self.body
        b.append(f"class {name}:")
        b.append(f"    __slots__ = {tuple(attrs)!r}")
        b.append(f"    def __init__(self, {', '.join(attrs)}):")
        b.extend(f"        self.{a} = {a}" for a in attrs)
        b.append("    def __eq__(self, other):")
        b.append("        if other.__class__ is not self.__class__: return NotImplemented")
        b.append("        return " + " and ".join(f"self.{a} == other.{a}" for a in attrs))
        b.append("    def __repr__(self):")
        b.append(f"        return f'{name}(" + ", ".join(f"{a}={{self.{a}!r}}" for a in attrs)
                 + ")'")
        b.append("    __hash__ = None")
        b.append(f"def _p_{name}(v, out):")
        self.struct_enc(d, "v", "    ", b)
        b.append(f"def _u_{name}(data, pos):")
        b.append(f"    return {self.struct_dec(d, '    ', b)}, pos")
        self.codec(name)

    def struct_enc(self, d: Struct, var: str, ind: str, out: list[str]) -> None:
        items = [(self.gen.shape(f), f"{var}.{a}", f"{d.name}.{a}")
                 for f, a in zip(d.fields, self.gen.attrs(d), strict=True)]
        self.fields_code(items, True, ind, out)

    def struct_dec(self, d: Struct, ind: str, out: list[str]) -> str:
        """Decode the fields into fresh locals; returns the constructor call."""
        targets = [self.tmp("f") for _ in d.fields]
        items = [(self.gen.shape(f), t, f"{d.name}.{a}")
                 for f, t, a in zip(d.fields, targets, self.gen.attrs(d), strict=True)]
        self.fields_code(items, False, ind, out)
        if d.name != self.name:
            self.deps.add(d.name)  # its class
        return f"{d.name}({', '.join(targets)})"

    def union(self, d: Union) -> None:
        name = d.name
        b = self.body
        b.append(f"def _p_{name}(v, out):")
        self.union_enc(d, "v", "    ", b)
        b.append(f"def _u_{name}(data, pos):")
        b.append(f"    return {self.union_dec(d, '    ', b)}, pos")
        self.codec(name)

    def union_enc(self, d: Union, value: str, ind: str, out: list[str]) -> None:
        disc, arms = self.gen.union_info(d)
        dv, av = self.tmp("d"), self.tmp("a")
        out.append(f"{ind}{dv}, {av} = {value}")
        out.append(f"{ind}out += _P{'I' if disc.kind in ('I', 'bool') else 'i'}({dv})")
        self.union_arms(d, arms, dv, av, True, ind, out)

    def union_dec(self, d: Union, ind: str, out: list[str]) -> str:
        """Decode into fresh locals; returns the ``(discriminant, arm)`` expression."""
        disc, arms = self.gen.union_info(d)
        dv, av = self.tmp("d"), self.tmp("a")
        out.append(f"{ind}{dv}, = _U{'I' if disc.kind in ('I', 'bool') else 'i'}(data, pos)")
        out.append(f"{ind}pos += 4")
        if d.default is not None:
            self.dec_checks(disc, dv, f"{d.name} discriminant", ind, out, convert=False)
        self.union_arms(d, arms, dv, av, False, ind, out)
        return f"({dv}, {av})"

    def union_arms(self, d: Union, arms: list[tuple[list[int], Decl]], dv: str, av: str,
                   enc: bool, ind: str, out: list[str]) -> None:
        first = True
        for values, decl in arms:
            cond = f"{dv} == {values[0]}" if len(values) == 1 else f"{dv} in {tuple(values)!r}"
            out.append(f"{ind}{'if' if first else 'elif'} {cond}:")
            first = False
            self.union_arm(d, decl, av, enc, ind + "    ", out)
        if d.default is not None and first:
            self.union_arm(d, d.default, av, enc, ind, out)
        elif d.default is not None:
            out.append(f"{ind}else:")
            self.union_arm(d, d.default, av, enc, ind + "    ", out)
        else:
            out.append(f"{ind}else:")
            out.append(f"{ind}    raise _XE({d.name + ': bad discriminant %r'!r} % ({dv},))")

    def union_arm(self, d: Union, decl: Decl, av: str, enc: bool, ind: str,
                  out: list[str]) -> None:
        if decl.kind == "void":
            out.append(f"{ind}{'pass' if enc else av + ' = None'}")
            return
        shape = self.gen.shape(decl)
        if enc:
            self.enc(shape, av, f"{d.name}.{decl.name}", ind, out)
        else:
            self.dec(shape, av, f"{d.name}.{decl.name}", ind, out)

    def enum(self, d: Enum) -> None:
        p = Prim("enum", d.name)
        b = self.body
        b.append(f"def _p_{d.name}(v, out):")
        self.enc(p, "v", d.name, "    ", b)
        b.append(f"def _u_{d.name}(data, pos):")
        self.dec(p, "_v", d.name, "    ", b)
        b.append("    return _v, pos")
        self.codec(d.name)

    def typedef(self, d: Typedef) -> None:
        shape = self.gen.shape(d.decl)
        b = self.body
        b.append(f"def _p_{d.name}(v, out):")
        self.enc(shape, "v", d.name, "    ", b)
        b.append(f"def _u_{d.name}(data, pos):")
        self.dec(shape, "_v", d.name, "    ", b)
        b.append("    return _v, pos")
        self.codec(d.name)


def generate(defs: list[Definition]) -> Unit:
    """Check a parsed compile unit and generate its chunks."""
    return _Gen(defs).unit()
