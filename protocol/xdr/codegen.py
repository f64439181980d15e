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
from dataclasses import dataclass

from .lexer import CompileError
from .parser import Const, Decl, Definition, Enum, Struct, Typedef, Union

__all__ = ["CompiledUnit", "generate", "COMPILER_VERSION"]

# Bump when the generated code changes, so cached units are rebuilt.
COMPILER_VERSION = "1"

UNBOUNDED = 0xFFFFFFFF


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
    elem: "Shape"
    fixed: bool
    size: int


@dataclass(frozen=True, slots=True)
class Optional:
    elem: "Shape"


@dataclass(frozen=True, slots=True)
class Named:
    """A struct or union, coded by its own functions."""

    name: str


Shape = Prim | Opaque | String | Chars | Array | Optional | Named

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


@dataclass(slots=True)
class CompiledUnit:
    """Everything a module needs, in plain data so it can be cached with marshal."""

    consts: dict[str, int]
    enums: dict[str, dict[str, int]]
    comments: dict[str, dict[str, list[str]]]
    chunks: dict[str, tuple[str, tuple[str, ...]]]  # type name -> (source, deps)

    def to_data(self) -> tuple:
        return (self.consts, self.enums, self.comments, self.chunks)

    @classmethod
    def from_data(cls, data: tuple) -> "CompiledUnit":
        return cls(*data)


# -- the generator ---------------------------------------------------------------

class _Gen:
    def __init__(self, defs: list[Definition]):
        self.types: dict[str, Definition] = {}
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
        self.consts: dict[str, int] = {}
        for name in self.const_defs:
            self.resolve(name, "")
        for d in defs:
            if isinstance(d, Enum):
                self.enums[d.name] = {m.name: self.consts[m.name] for m in d.members}
                self.comments[d.name] = {m.name: m.comments for m in d.members if m.comments}
        self._resolving: set[str] = set()
        self._min_sizes: dict[str, int] = {}

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
                    arms = [a.decl for a in d.arms] + ([d.default] if d.default else [])
                    n = 4 + min(0 if a.kind == "void" else self.min_size(self.shape(a))
                                for a in arms)
                self._min_sizes[name] = n
            return self._min_sizes[name]
        return 4  # a length or a presence flag at least

    # -- output -------------------------------------------------------------

    def unit(self) -> CompiledUnit:
        chunks: dict[str, tuple[str, tuple[str, ...]]] = {}
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
            chunks[name] = chunk.finish()
        return CompiledUnit(self.consts, self.enums, self.comments, chunks)


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

    def finish(self) -> tuple[str, tuple[str, ...]]:
        self.deps.discard(self.name)
        return "\n".join(self.head + self.body) + "\n", tuple(sorted(self.deps))

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
                       f"raise _XE({what + ': bad ' + p.enum + ' value %d'!r} % {var})")
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
            offset += fixed_size(shape)
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
        for shape, target, what, n, off in plan:
            if isinstance(shape, Chars):
                start = f"pos + {off + 3}"
                out.append(f"{ind}{target} = bytes(data[{start}:pos + {off + 4 * shape.size}:4])")
            elif isinstance(shape, Prim):
                self.dec_checks(shape, target, what, ind, out)
            elif isinstance(shape, Array) and self.needs_check(shape.elem):
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

    def dec_length(self, shape: Shape, what: str, ind: str, out: list[str]) -> str:
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
            self.deps.add(shape.name)
            out.append(f"{ind}{target}, pos = _u_{shape.name}(data, pos)")

    # -- encoding -------------------------------------------------------------

    def enc_prim_arg(self, p: Prim, expr: str, what: str, ind: str, out: list[str]) -> str:
        """Checks for one scalar; returns the expression to pack."""
        if p.kind == "bool":
            return f"1 if {expr} else 0"
        if p.kind == "enum":
            out.append(f"{ind}if {expr} not in _EV_{p.enum}: "
                       f"raise _XE({what + ': bad ' + p.enum + ' value %r'!r} % ({expr},))")
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

    def enc_length(self, shape: Shape, var: str, what: str, ind: str, out: list[str]) -> str:
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
            self.deps.add(shape.name)
            out.append(f"{ind}_p_{shape.name}({expr}, out)")
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
        for item in fields + [None]:  # type: ignore[list-item]
            if item is not None and fixed_size(item[0]) is not None:
                run.append(item)
                continue
            if run:
                (self.enc_run if enc else self.dec_run)(run, ind, out)
                run = []
            if item is not None:
                (self.enc if enc else self.dec)(item[0], item[1], item[2], ind, out)

    def codec(self, name: str) -> None:
        self.body.append(f"{name}_codec = _Codec({name!r}, _p_{name}, _u_{name})")

    def struct(self, d: Struct) -> None:
        name = d.name
        attrs = [attr_name(f.name) for f in d.fields]
        if len(set(attrs)) != len(attrs):
            raise CompileError(f"{d.where}: struct {name} has duplicate field names")
        shapes = [self.gen.shape(f) for f in d.fields]
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
        self.fields_code([(s, f"v.{a}", f"{name}.{a}") for s, a in zip(shapes, attrs)],
                         True, "    ", b)
        b.append(f"def _u_{name}(data, pos):")
        targets = [f"_f{i}" for i in range(len(attrs))]
        self.fields_code([(s, t, f"{name}.{a}") for s, t, a in zip(shapes, targets, attrs)],
                         False, "    ", b)
        b.append(f"    return {name}({', '.join(targets)}), pos")
        self.codec(name)

    def union(self, d: Union) -> None:
        name = d.name
        disc = self.gen.base_shape(d.discriminant.type, d.discriminant.where) \
            if d.discriminant.type not in ("opaque", "string") else None
        if not isinstance(disc, Prim) or disc.kind not in ("i", "I", "enum", "bool"):
            raise CompileError(f"{d.where}: union {name} discriminant must be int, "
                               f"unsigned int, bool or an enum")
        arms: list[tuple[list[int], Decl]] = []
        seen: set[int] = set()
        for arm in d.arms:
            values = [self.gen.resolve(v, arm.decl.where) for v in arm.cases]
            for v in values:
                if v in seen:
                    raise CompileError(f"{arm.decl.where}: case {v} repeated in union {name}")
                seen.add(v)
            arms.append((values, arm.decl))
        b = self.body
        dfmt = "I" if disc.kind in ("I", "bool") else "i"
        b.append(f"def _p_{name}(v, out):")
        b.append("    _d, _a = v")
        b.append(f"    out += _P{dfmt}(_d)")
        self.union_arms(arms, d.default, disc, True, b)
        b.append(f"def _u_{name}(data, pos):")
        b.append(f"    _d, = _U{dfmt}(data, pos)")
        b.append("    pos += 4")
        if d.default is not None:
            self.dec_checks(disc, "_d", f"{name} discriminant", "    ", b, convert=False)
        self.union_arms(arms, d.default, disc, False, b)
        b.append("    return (_d, _a), pos")
        self.codec(name)

    def union_arms(self, arms: list[tuple[list[int], Decl]], default: Decl | None,
                   disc: Prim, enc: bool, b: list[str]) -> None:
        what = f"{self.name}"
        first = True
        for values, decl in arms:
            cond = f"_d == {values[0]}" if len(values) == 1 else f"_d in {tuple(values)!r}"
            b.append(f"    {'if' if first else 'elif'} {cond}:")
            first = False
            self.union_arm(decl, enc, what, b)
        if default is not None:
            if first:
                self.union_arm(default, enc, what, b, "    ")
            else:
                b.append("    else:")
                self.union_arm(default, enc, what, b)
        else:
            if first:
                b.append("    if True:")
            b.append("    else:")
            b.append(f"        raise _XE({what + ': bad discriminant %r'!r} % (_d,))")

    def union_arm(self, decl: Decl, enc: bool, what: str, b: list[str],
                  ind: str = "        ") -> None:
        if decl.kind == "void":
            b.append(f"{ind}{'pass' if enc else '_a = None'}")
            return
        shape = self.gen.shape(decl)
        if enc:
            self.enc(shape, "_a", f"{what}.{decl.name}", ind, b)
        else:
            self.dec(shape, "_a", f"{what}.{decl.name}", ind, b)

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


def generate(defs: list[Definition]) -> CompiledUnit:
    """Check a parsed compile unit and generate its chunks."""
    return _Gen(defs).unit()
