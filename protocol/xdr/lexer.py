"""Tokenizer for XDR definition files.

Comments are kept as tokens (the parser attaches them to enum members, where
``protocol.programs`` reads its annotations); ``%`` pass-through lines and
preprocessor lines are rpcgen's business and are dropped here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .runtime import CompileError

__all__ = ["CompileError", "Token", "tokenize"]


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # "ident", "number", "punct", "comment", "eof"
    text: str
    path: str
    line: int

    def where(self) -> str:
        return f"{self.path}:{self.line}"


_TOKEN_RE = re.compile(
    r"""
    (?P<ws>[ \t\r\f\v]+)
  | (?P<nl>\n)
  | (?P<block>/\*.*?\*/)
  | (?P<line>//[^\n]*)
  | (?P<number>-?(?:0[xX][0-9a-fA-F]+|[0-9]+))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[{}()\[\]<>;,=*:])
    """,
    re.VERBOSE | re.DOTALL,
)


def tokenize(text: str, path: str) -> list[Token]:
    """Split *text* into tokens, ending with one ``eof`` token."""
    tokens: list[Token] = []
    line = 1
    pos = 0
    at_line_start = True
    end = len(text)
    while pos < end:
        if at_line_start:
            # rpcgen pass-through (%...) and cpp (#...) lines: skip whole line.
            stripped = pos
            while stripped < end and text[stripped] in " \t":
                stripped += 1
            if stripped < end and text[stripped] in "%#":
                nl = text.find("\n", stripped)
                pos = end if nl < 0 else nl
                at_line_start = False
                continue
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            if text.startswith("/*", pos):
                raise CompileError(f"{path}:{line}: unterminated comment")
            raise CompileError(f"{path}:{line}: unexpected character {text[pos]!r}")
        kind = m.lastgroup
        value = m.group()
        at_line_start = kind == "nl"
        if kind == "block":
            tokens.append(Token("comment", value[2:-2], path, line))
        elif kind == "line":
            tokens.append(Token("comment", value[2:], path, line))
        elif kind in ("number", "ident", "punct"):
            tokens.append(Token(kind, value, path, line))
        line += value.count("\n")
        pos = m.end()
    tokens.append(Token("eof", "", path, line))
    return tokens
