"""Lexer, parser and code generator of protocol.xdr, one construct at a time."""

from __future__ import annotations

import struct

import pytest

from protocol.xdr import CompileError, XDRError, compile_files, compile_text
from protocol.xdr.lexer import tokenize
from protocol.xdr.parser import Enum, Struct, Typedef, Union, parse


# -- lexer ------------------------------------------------------------------------

def test_lexer_drops_passthrough_and_keeps_comments():
    toks = tokenize("%#include <x.h>\n  %foo\n#define X\nconst A = 0x10; /* c1 */ // c2\n", "f.x")
    assert [(t.kind, t.text) for t in toks] == [
        ("ident", "const"), ("ident", "A"), ("punct", "="), ("number", "0x10"),
        ("punct", ";"), ("comment", " c1 "), ("comment", " c2"), ("eof", ""),
    ]
    assert toks[0].line == 4


def test_lexer_counts_lines_through_comments():
    toks = tokenize("/* a\n b\n */\nconst", "f.x")
    assert toks[1].text == "const" and toks[1].line == 4


@pytest.mark.parametrize("text,message", [
    ("const A = 1; $", "f.x:1: unexpected character '$'"),
    ("\n/* never closed", "f.x:2: unterminated comment"),
])
def test_lexer_errors(text, message):
    with pytest.raises(CompileError, match=message.replace("$", r"\$")):
        tokenize(text, "f.x")


# -- parser -----------------------------------------------------------------------

def test_parse_numbers():
    consts = parse("const A = 10; const B = 0x1F; const C = -3; const D = 010; const E = B;", "f")
    assert [c.value for c in consts] == [10, 31, -3, 8, "B"]


def test_parse_enum_member_comments():
    (e,) = parse("""enum e {
        A = 1, /* @ro */
        B = 2,  /* one */ /* two */
        C = 3   /* last */
    };""", "f")
    assert isinstance(e, Enum)
    assert [(m.name, m.comments) for m in e.members] == [
        ("A", [" @ro "]), ("B", [" one ", " two "]), ("C", [" last "])]


def test_parse_declarations():
    (s,) = parse("""struct s {
        int a; unsigned b; unsigned int c; unsigned hyper d; long e; unsigned long f;
        opaque g[4]; opaque h<>; string i<10>; int j[3]; int k<N>; t *l;
        char m[32]; unsigned char n; short o; unsigned short p; struct t q;
    };""", "f")
    assert isinstance(s, Struct)
    got = [(d.type, d.name, d.kind, d.size) for d in s.fields]
    assert got == [
        ("int", "a", "scalar", None), ("unsigned int", "b", "scalar", None),
        ("unsigned int", "c", "scalar", None), ("unsigned hyper", "d", "scalar", None),
        ("int", "e", "scalar", None), ("unsigned int", "f", "scalar", None),
        ("opaque", "g", "fixed", 4), ("opaque", "h", "var", None),
        ("string", "i", "var", 10), ("int", "j", "fixed", 3), ("int", "k", "var", "N"),
        ("t", "l", "optional", None), ("char", "m", "fixed", 32),
        ("unsigned char", "n", "scalar", None), ("short", "o", "scalar", None),
        ("unsigned short", "p", "scalar", None), ("t", "q", "scalar", None),
    ]


def test_parse_union():
    (u,) = parse("""union u switch (int type) {
        case 1: int a;
        case 2: case X: void;
        default: hyper d;
    };""", "f")
    assert isinstance(u, Union)
    assert u.discriminant.name == "type"
    assert [(a.cases, a.decl.kind) for a in u.arms] == [([1], "scalar"), ([2, "X"], "void")]
    assert u.default is not None and u.default.type == "hyper"


def test_parse_typedef():
    (t,) = parse("typedef string name<>;", "f")
    assert isinstance(t, Typedef) and t.name == "name" and t.decl.kind == "var"


@pytest.mark.parametrize("text,message", [
    ("const A = ;", r"f.x:1: expected a number or constant name \(found ';'\)"),
    ("struct s { int a }", r"f.x:1: expected ';' \(found '}'\)"),
    ("struct s {\n int a;\n string b;\n};", r"f.x:3: string b needs a length"),
    ("struct s { opaque *a; };", "opaque cannot be optional"),
    ("struct s { string a[3]; };", r"string needs <N>, not \[N\]"),
    ("struct s { struct { int a; } b; };", "anonymous inline struct"),
    ("program P { };", "expected const, enum, struct, union or typedef"),
    ("union u switch (int t) { int a; };", "expected case or default"),
    ("struct s { };", "empty struct"),
    ("struct s { int a; }", r"expected ';' \(found end of file\)"),
])
def test_parse_errors_name_file_and_line(text, message):
    with pytest.raises(CompileError, match=message):
        parse(text, "f.x")


# -- code generation: semantic errors -----------------------------------------------

@pytest.mark.parametrize("text,message", [
    ("struct s { foo a; };", "x.x:1: unknown type foo"),
    ("struct s { int a<N>; };", "x.x:1: unknown constant N"),
    ("const A = 1;\nconst A = 2;", "x.x:2: constant A already defined at x.x:1"),
    ("struct s { int a; };\nstruct s { int b; };", "x.x:2: type s already defined at x.x:1"),
    ("const A = B; const B = A;", "defined in terms of itself"),
    ("typedef t t;", "typedef t refers to itself"),
    ("union u switch (hyper t) { case 1: int a; };", "discriminant must be"),
    ("union u switch (int t) { case 1: int a; case 1: int b; };", "case 1 repeated"),
    ("struct s { int a; int a; };", "duplicate field names"),
    ("typedef int len;", "x.x:1: the name len is reserved"),
    ("const _X = 1;", "the name _X is reserved"),
    ("const s = 1; struct s { int a; };", "s is both a type and a constant"),
])
def test_semantic_errors(text, message):
    with pytest.raises(CompileError, match=message):
        compile_text(text, path="x.x")


def test_same_constant_twice_with_same_value_is_allowed():
    m = compile_text("const A = 16; enum e { A = 16, B = 2 };")
    assert m.A == 16


def test_constants_forward_and_across_files(tmp_path):
    (tmp_path / "a.x").write_text("const MAX = LATER; struct s { opaque d<MAX>; int x[OTHER]; };")
    (tmp_path / "b.x").write_text("const LATER = 3; const OTHER = 2;")
    m = compile_files([tmp_path / "a.x", tmp_path / "b.x"], "two", cache=False)
    assert m.MAX == 3
    assert m.s_codec.encode(m.s(b"abc", [1, 2])) == b"\0\0\0\3abc\0" + struct.pack(">ii", 1, 2)
    with pytest.raises(XDRError, match="exceeds 3"):
        m.s_codec.encode(m.s(b"abcd", [1, 2]))


def test_errors_name_the_file(tmp_path):
    (tmp_path / "bad.x").write_text("const A = 1;\n\nstruct s { nope a; };\n")
    with pytest.raises(CompileError, match=r"bad\.x:3: unknown type nope"):
        compile_files([tmp_path / "bad.x"], "bad", cache=False)


# -- generated module API -----------------------------------------------------------

SAMPLE = """
const MAXS = 8;
enum color { RED = 0, GREEN = 1, BLUE = -2 };
typedef string nstr<MAXS>;
typedef nstr *ostr;
typedef opaque uuid[16];
struct dom { nstr name; uuid uuid; int id; };
typedef dom *odom;
union val switch (int type) {
  case 1: int i;
  case 2: case 3: hyper h;
  case 7: nstr s;
  default: void;
};
union strict switch (color c) { case RED: void; case BLUE: unsigned hyper u; };
union boolsw switch (bool b) { case 1: int yes; case 0: void; };
struct node { int v; node *next; };
struct kw { int from; int class; };
struct lots { dom d<>; };
typedef int pair[2];
typedef opaque blob<4>;
typedef string word<3>;
struct nest { pair p<3>; pair q[2]; blob bs<2>; word ws[2]; ostr os<2>; val vv[1]; };
struct all {
  int i; unsigned int u; hyper h; unsigned hyper uh; float f; double d; bool b;
  color c; char ch; unsigned char uc; short sh; unsigned short us;
  opaque fo[5]; opaque vo<6>; opaque uo<>; string s<5>; string us2<>;
  char model[3]; unsigned char umodel[2]; char lab<4>;
  int fi[2]; bool fb[2]; color fc[2]; hyper vh<3>; bool vb<>; color vc<2>;
  dom fd[1]; dom vd<2>; ostr os; odom od; uuid *ou; val v; val vl<>;
};
"""


@pytest.fixture(scope="module")
def m():
    mod = compile_text(SAMPLE, "sample")
    mod.__xdr_materialize_all__()
    return mod


def test_constants_and_enums(m):
    assert m.MAXS == 8 and m.BLUE == -2
    assert m.color == {"RED": 0, "GREEN": 1, "BLUE": -2}
    assert m.color_codec.encode(m.BLUE) == b"\xff\xff\xff\xfe"
    assert m.color_codec.decode(b"\0\0\0\1") == 1
    with pytest.raises(XDRError, match="bad color value 5"):
        m.color_codec.decode(b"\0\0\0\5")
    with pytest.raises(XDRError):
        m.color_codec.encode(5)


def test_struct_class(m):
    d = m.dom("a", b"u" * 16, 3)
    assert m.dom.__slots__ == ("name", "uuid", "id")
    assert d == m.dom(name="a", uuid=b"u" * 16, id=3)
    assert d != m.dom("b", b"u" * 16, 3)
    assert repr(d) == "dom(name='a', uuid=b'uuuuuuuuuuuuuuuu', id=3)"
    with pytest.raises(TypeError):
        m.dom("a", b"u" * 16)
    with pytest.raises(AttributeError):
        d.other = 1


def test_keyword_field_names_get_underscore(m):
    v = m.kw(from_=1, class_=2)
    assert m.kw_codec.decode(m.kw_codec.encode(v)) == v


def test_struct_wire_format(m):
    d = m.dom("abcde", bytes(range(16)), -1)
    assert m.dom_codec.encode(d) == (b"\0\0\0\5abcde\0\0\0" + bytes(range(16))
                                     + b"\xff\xff\xff\xff")


def test_typedef_codecs(m):
    assert m.nstr_codec.encode("ab") == b"\0\0\0\2ab\0\0"
    assert m.ostr_codec.encode(None) == b"\0\0\0\0"
    assert m.ostr_codec.encode("") == b"\0\0\0\1\0\0\0\0"
    assert m.uuid_codec.decode(bytes(16)) == bytes(16)
    assert m.odom_codec.decode(b"\0\0\0\0") is None


def test_union_values(m):
    c = m.val_codec
    assert c.encode((1, 5)) == b"\0\0\0\1\0\0\0\5"
    assert c.encode((3, -1)) == b"\0\0\0\3" + b"\xff" * 8
    assert c.decode(b"\0\0\0\7\0\0\0\1x\0\0\0") == (7, "x")
    assert c.decode(b"\0\0\0\x63") == (99, None)  # default: void
    assert c.encode((99, None)) == b"\0\0\0\x63"
    s = m.strict_codec
    assert s.decode(b"\0\0\0\0") == (0, None)
    with pytest.raises(XDRError, match="bad discriminant"):
        s.decode(b"\0\0\0\1")  # GREEN is a color but has no arm
    with pytest.raises(XDRError):
        s.encode((1, None))
    assert m.boolsw_codec.decode(b"\0\0\0\1\0\0\0\2") == (1, 2)
    with pytest.raises(XDRError):
        m.boolsw_codec.decode(b"\0\0\0\2")


def test_nested_arrays(m):
    v = m.nest([[1, 2], [3, 4]], [[5, 6], [7, 8]], [b"a", b"bcde"], ["x", "yz"],
               [None, "q"], [(1, 9)])
    data = m.nest_codec.encode(v)
    assert data[:20] == b"\0\0\0\2\0\0\0\1\0\0\0\2\0\0\0\3\0\0\0\4"
    assert m.nest_codec.decode(data) == v
    with pytest.raises(XDRError, match="need length 2"):
        m.nest_codec.encode(m.nest([[1]], [[5, 6], [7, 8]], [], ["", ""], [], [(1, 1)]))


def test_recursive_struct(m):
    lst = m.node(1, m.node(2, None))
    data = m.node_codec.encode(lst)
    assert data == b"\0\0\0\1\0\0\0\1\0\0\0\2\0\0\0\0"
    assert m.node_codec.decode(data) == lst


def sample_all(m, **over):
    d = m.dom("n", bytes(16), 1)
    fields = dict(
        i=-1, u=2**32 - 1, h=-2**63, uh=2**64 - 1, f=1.5, d=-2.25, b=True, c=m.BLUE,
        ch=-128, uc=255, sh=-32768, us=65535, fo=b"12345", vo=b"123456", uo=b"",
        s="héé", us2="x" * 100, model=b"\xffA\0", umodel=b"\x80\x01", lab=b"ab",
        fi=[1, 2], fb=[True, False], fc=[m.RED, m.BLUE], vh=[1, -1], vb=[False],
        vc=[], fd=[d], vd=[d, d], os="o", od=d, ou=bytes(range(16)), v=(7, "s"),
        vl=[(1, 1), (2, 2), (0, None)])
    fields.update(over)
    return m.all(**fields)


def test_round_trip_everything(m):
    v = sample_all(m)
    data = m.all_codec.encode(v)
    assert m.all_codec.decode(data) == v
    assert m.all_codec.decode(memoryview(data)) == v
    assert m.all_codec.decode(bytearray(data)) == v
    assert m.all_codec.unpack(b"xxxx" + data + b"yy", 4) == (v, 4 + len(data))


def test_rpcgen_char_arrays_are_one_int_per_byte(m):
    v = sample_all(m)
    data = m.all_codec.encode(v)
    # model follows 12 scalars (14*4 bytes incl. two hypers), 3 opaques and 2 strings.
    off = 4 + 4 + 8 + 8 + 4 + 8 + 4 + 4 + 4 + 4 + 4 + 4 + 8 + (4 + 8) + 4 + (4 + 8) + (4 + 100)
    assert data[off:off + 12] == b"\xff\xff\xff\xff\0\0\0A\0\0\0\0"
    assert data[off + 12:off + 20] == b"\0\0\0\x80\0\0\0\1"
    assert data[off + 20:off + 32] == b"\0\0\0\2\0\0\0a\0\0\0b"


def test_pack_appends_and_rolls_back(m):
    out = bytearray(b"head")
    m.dom_codec.pack(m.dom("a", bytes(16), 1), out)
    assert out.startswith(b"head") and len(out) == 4 + 8 + 16 + 4
    with pytest.raises(XDRError):
        m.dom_codec.pack(m.dom("a" * 9, bytes(16), 1), out)
    assert len(out) == 32


@pytest.mark.parametrize("field,value,message", [
    ("s", "x" * 6, "all.s: length 6 exceeds 5"),
    ("s", "ééé", "all.s: length 6 exceeds 5"),
    ("vo", b"1234567", "all.vo: length 7 exceeds 6"),
    ("fo", b"1234", "all.fo: need length 5, got 4"),
    ("model", b"ab", "all.model: need length 3"),
    ("lab", b"abcde", "all.lab: length 5 exceeds 4"),
    ("fi", [1], "all.fi: need length 2"),
    ("vh", [1, 2, 3, 4], "all.vh: length 4 exceeds 3"),
    ("vd", [None] * 3, "all.vd: length 3 exceeds 2"),
    ("c", 7, "all.c: bad color value 7"),
    ("fc", [0, 7], "bad color value 7"),
    ("uc", 256, "all.uc: value 256 out of range"),
    ("ch", 128, "out of range"),
    ("sh", -32769, "out of range"),
    ("i", 2**31, "cannot encode"),
    ("uh", -1, "cannot encode"),
    ("s", 5, "cannot encode"),
    ("v", (42,), "cannot encode"),
    ("v", (7, "x" * 9), "val.s: length 9 exceeds 8"),
])
def test_encode_rejects_bad_values(m, field, value, message):
    with pytest.raises(XDRError, match=message):
        m.all_codec.encode(sample_all(m, **{field: value}))


def test_decode_enforces_limits(m):
    c = m.all_codec
    good = c.encode(sample_all(m))
    with pytest.raises(XDRError, match="trailing"):
        c.decode(good + b"\0\0\0\0")
    for n in range(len(good)):
        with pytest.raises(XDRError):
            c.decode(good[:n])
    # bool must be 0 or 1
    b_at = 4 + 4 + 8 + 8 + 4 + 8
    bad = good[:b_at] + b"\0\0\0\2" + good[b_at + 4:]
    with pytest.raises(XDRError, match="all.b: bad bool 2"):
        c.decode(bad)
    # string longer than its maximum
    with pytest.raises(XDRError, match="nstr: length 9 exceeds 8"):
        m.nstr_codec.decode(b"\0\0\0\x09" + b"x" * 12)
    # optional flag other than 0/1
    with pytest.raises(XDRError, match="bad optional flag 2"):
        m.ostr_codec.decode(b"\0\0\0\2")
    # huge element count with little data: rejected before building a list
    with pytest.raises(XDRError, match="lots.d: truncated"):
        m.lots_codec.decode(b"\xff\xff\xff\xff" + bytes(64))
    with pytest.raises(XDRError):
        m.all_codec.unpack(b"\xff" * 8, 0)


def test_decode_accepts_nonzero_padding(m):
    assert m.nstr_codec.decode(b"\0\0\0\1a\1\2\3") == "a"


def test_strings_use_surrogateescape(m):
    assert m.nstr_codec.decode(b"\0\0\0\2\xff\xfe\0\0") == "\udcff\udcfe"
    assert m.nstr_codec.encode("\udcff\udcfe") == b"\0\0\0\2\xff\xfe\0\0"


def test_lazy_materialisation():
    mod = compile_text(SAMPLE, "lazy")
    assert "dom" not in vars(mod)
    assert "all" in mod.__xdr_types__
    mod.all_codec  # noqa: B018 - pulls in the dom class it builds
    assert "dom" in vars(mod) and "node" not in vars(mod)
    with pytest.raises(AttributeError):
        mod.nothing_codec  # noqa: B018


def test_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    src = tmp_path / "c.x"
    src.write_text(SAMPLE)
    first = compile_files([src], "cached")
    files = list((tmp_path / "cache" / "aiovirtd").glob("xdr-cached-*.marshal"))
    assert len(files) == 1
    second = compile_files([src], "cached")
    assert second.__xdr_source__("all") == first.__xdr_source__("all")
    src.write_text(SAMPLE + "const EXTRA = 1;")
    compile_files([src], "cached")
    assert len(list(files[0].parent.glob("xdr-cached-*.marshal"))) == 1  # stale one removed


def test_unwritable_cache_is_skipped(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # a file, so mkdir fails
    src = tmp_path / "c.x"
    src.write_text("const A = 1;")
    assert compile_files([src], "nocache").A == 1
