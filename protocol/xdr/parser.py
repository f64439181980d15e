"""Parser from tokens to a small syntax tree of XDR definitions.

Sizes and case labels stay unresolved (``int`` or constant name) so that a
constant may be used before, or in another file than, its definition; the code
generator resolves them once the whole compile unit is parsed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .lexer import CompileError, Token, tokenize

__all__ = [
    "Const", "Decl", "Definition", "Enum", "EnumMember", "Struct", "TypeDefinition", "Typedef",
    "Union", "UnionArm",
    "parse", "parse_files",
]

Value = int | str  # literal or constant name

# Base types spelled with keywords; "unsigned" forms are normalised below.
BUILTIN_TYPES = frozenset({
    "int", "unsigned int", "hyper", "unsigned hyper", "float", "double", "bool",
    "char", "unsigned char", "short", "unsigned short", "opaque", "string", "void",
})


@dataclass(slots=True)
class Decl:
    """``type name``, ``type name[N]``, ``type name<N>``, ``type *name`` or ``void``.

    kind: "scalar", "fixed", "var" (size None for ``<>``), "optional", "void".
    """

    type: str
    name: str
    kind: str
    size: Value | None
    where: str


@dataclass(slots=True)
class Const:
    name: str
    value: Value
    where: str


@dataclass(slots=True)
class EnumMember:
    name: str
    value: Value
    where: str
    comments: list[str] = field(default_factory=list)  # comments that follow it


@dataclass(slots=True)
class Enum:
    name: str
    members: list[EnumMember]
    where: str


@dataclass(slots=True)
class Struct:
    name: str
    fields: list[Decl]
    where: str


@dataclass(slots=True)
class UnionArm:
    cases: list[Value]  # empty for the default arm
    decl: Decl


@dataclass(slots=True)
class Union:
    name: str
    discriminant: Decl
    arms: list[UnionArm]
    default: Decl | None
    where: str

    def decls(self) -> list[Decl]:
        """Every arm's declaration, the default's last."""
        return [a.decl for a in self.arms] + ([self.default] if self.default else [])


@dataclass(slots=True)
class Typedef:
    name: str
    decl: Decl
    where: str


TypeDefinition = Enum | Struct | Union | Typedef
Definition = Const | TypeDefinition


class _Parser:
    def __init__(self, tokens: list[Token]):
        self.tokens = tokens
        self.pos = 0
        self.pending_comments: list[str] = []

    # -- token access ----------------------------------------------------

    def _skip_comments(self) -> None:
        while self.tokens[self.pos].kind == "comment":
            self.pending_comments.append(self.tokens[self.pos].text)
            self.pos += 1

    def peek(self) -> Token:
        self._skip_comments()
        return self.tokens[self.pos]

    def take(self) -> Token:
        tok = self.peek()
        if tok.kind != "eof":
            self.pos += 1
        return tok

    def error(self, tok: Token, message: str) -> CompileError:
        found = "end of file" if tok.kind == "eof" else repr(tok.text)
        return CompileError(f"{tok.where()}: {message} (found {found})")

    def expect(self, text: str) -> Token:
        tok = self.take()
        if tok.text != text or tok.kind not in ("punct", "ident"):
            raise self.error(tok, f"expected {text!r}")
        return tok

    def accept(self, text: str) -> bool:
        tok = self.peek()
        if tok.text == text and tok.kind in ("punct", "ident"):
            self.pos += 1
            return True
        return False

    def ident(self, what: str = "identifier") -> Token:
        tok = self.take()
        if tok.kind != "ident" or tok.text in _KEYWORDS:
            raise self.error(tok, f"expected {what}")
        return tok

    def value(self) -> Value:
        tok = self.take()
        if tok.kind == "number":
            return int(tok.text, 0) if not _is_octal(tok.text) else int(tok.text, 8)
        if tok.kind == "ident" and tok.text not in _KEYWORDS:
            return tok.text
        raise self.error(tok, "expected a number or constant name")

    # -- grammar -----------------------------------------------------------

    def definitions(self) -> list[Definition]:
        out: list[Definition] = []
        while True:
            tok = self.peek()
            self.pending_comments.clear()
            if tok.kind == "eof":
                return out
            if tok.text == "const":
                self.take()
                name = self.ident("constant name")
                self.expect("=")
                out.append(Const(name.text, self.value(), name.where()))
            elif tok.text == "enum":
                self.take()
                name = self.ident("enum name")
                out.append(Enum(name.text, self.enum_body(), name.where()))
            elif tok.text == "struct":
                self.take()
                name = self.ident("struct name")
                out.append(Struct(name.text, self.struct_body(), name.where()))
            elif tok.text == "union":
                self.take()
                name = self.ident("union name")
                disc, arms, default = self.union_body()
                out.append(Union(name.text, disc, arms, default, name.where()))
            elif tok.text == "typedef":
                self.take()
                decl = self.declaration()
                if decl.kind == "void":
                    raise self.error(tok, "typedef of void")
                out.append(Typedef(decl.name, decl, decl.where))
            else:
                raise self.error(tok, "expected const, enum, struct, union or typedef")
            self.expect(";")

    def enum_body(self) -> list[EnumMember]:
        self.expect("{")
        members: list[EnumMember] = []
        while True:
            name = self.ident("enum member name")
            self.expect("=")
            member = EnumMember(name.text, self.value(), name.where())
            members.append(member)
            # Comments between this member and the next (or the brace) are its own.
            self.pending_comments.clear()
            more = self.accept(",")
            self.peek()
            member.comments.extend(self.pending_comments)
            self.pending_comments.clear()
            if not more:
                break
            if self.peek().text == "}":  # tolerate a trailing comma
                break
        self.expect("}")
        return members

    def struct_body(self) -> list[Decl]:
        self.expect("{")
        fields: list[Decl] = []
        while not self.accept("}"):
            decl = self.declaration()
            if decl.kind == "void":
                raise self.error(self.peek(), "void is not allowed in a struct")
            fields.append(decl)
            self.expect(";")
        if not fields:
            raise self.error(self.peek(), "empty struct")
        return fields

    def union_body(self) -> tuple[Decl, list[UnionArm], Decl | None]:
        self.expect("switch")
        self.expect("(")
        disc = self.declaration()
        if disc.kind != "scalar":
            raise CompileError(f"{disc.where}: union discriminant must be a plain declaration")
        self.expect(")")
        self.expect("{")
        arms: list[UnionArm] = []
        default: Decl | None = None
        while not self.accept("}"):
            tok = self.peek()
            if tok.text == "case":
                cases: list[Value] = []
                while self.accept("case"):
                    cases.append(self.value())
                    self.expect(":")
                decl = self.declaration()
                self.expect(";")
                arms.append(UnionArm(cases, decl))
            elif tok.text == "default":
                self.take()
                self.expect(":")
                if default is not None:
                    raise self.error(tok, "second default arm")
                default = self.declaration()
                self.expect(";")
            else:
                raise self.error(tok, "expected case or default")
        if not arms and default is None:
            raise self.error(self.peek(), "union without arms")
        return disc, arms, default

    def type_spec(self) -> tuple[str, Token]:
        tok = self.take()
        text = tok.text
        if tok.kind != "ident":
            raise self.error(tok, "expected a type")
        if text == "unsigned":
            nxt = self.peek()
            if nxt.kind == "ident" and nxt.text in ("int", "hyper", "char", "short", "long"):
                self.take()
                base = "int" if nxt.text == "long" else nxt.text
                return f"unsigned {base}", tok
            return "unsigned int", tok
        if text == "long":
            return "int", tok
        if text in ("struct", "enum", "union"):
            if self.peek().text == "{":
                raise self.error(self.peek(), f"anonymous inline {text} is not supported")
            return self.ident(f"{text} name").text, tok
        if text in ("quadruple",):
            raise self.error(tok, "quadruple is not supported")
        if text in BUILTIN_TYPES or text not in _KEYWORDS:
            return text, tok
        raise self.error(tok, "expected a type")

    def declaration(self) -> Decl:
        type_name, tok = self.type_spec()
        where = tok.where()
        if type_name == "void":
            return Decl("void", "", "void", None, where)
        if self.accept("*"):
            name = self.ident("field name")
            if type_name in ("opaque", "string"):
                raise self.error(name, f"{type_name} cannot be optional")
            return Decl(type_name, name.text, "optional", None, where)
        name = self.ident("field name")
        if self.accept("["):
            size = self.value()
            self.expect("]")
            if type_name == "string":
                raise self.error(name, "string needs <N>, not [N]")
            return Decl(type_name, name.text, "fixed", size, where)
        if self.accept("<"):
            bound = None if self.peek().text == ">" else self.value()
            self.expect(">")
            return Decl(type_name, name.text, "var", bound, where)
        if type_name in ("opaque", "string"):
            raise self.error(self.peek(), f"{type_name} {name.text} needs a length")
        return Decl(type_name, name.text, "scalar", None, where)


_KEYWORDS = frozenset({
    "bool", "case", "char", "const", "default", "double", "enum", "float", "hyper",
    "int", "long", "opaque", "quadruple", "short", "string", "struct", "switch",
    "typedef", "union", "unsigned", "void",
})


def _is_octal(text: str) -> bool:
    digits = text.lstrip("-")
    return len(digits) > 1 and digits[0] == "0" and digits[1] not in "xX"


def parse(text: str, path: str) -> list[Definition]:
    """Parse one XDR file."""
    return _Parser(tokenize(text, path)).definitions()


def parse_files(paths: list[str]) -> list[Definition]:
    """Parse several files as one compile unit, in order."""
    out: list[Definition] = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            out.extend(parse(f.read(), str(path)))
    return out
