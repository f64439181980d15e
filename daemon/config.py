"""libvirtd.conf: its syntax, the settings we honour and libvirtd's defaults.

The syntax is libvirt's ``virconf``: ``key = value`` lines, ``#`` comments, values
that are integers, quoted strings (``"..."``, ``'...'`` or ``\"\"\"...\"\"\"``) or
``[ ... ]`` lists of those, a list may span lines. Unknown keys are accepted and
ignored, as libvirtd does, so one file serves both daemons.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Value = int | str | list[Any]


class ConfigError(Exception):
    """The file cannot be used; the message names the file and line."""


_TOKEN = re.compile(r"""
    (?P<space>[ \t\r]+)
  | (?P<comment>\#[^\n]*)
  | (?P<newline>\n)
  | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<int>[+-]?[0-9]+)
  | (?P<tstring>\"\"\"(?P<tbody>.*?)\"\"\")
  | (?P<dstring>"(?P<dbody>[^"\n]*)")
  | (?P<sstring>'(?P<sbody>[^'\n]*)')
  | (?P<punct>[=\[\],;])
""", re.VERBOSE | re.DOTALL)


def parse(text: str, source: str = "<config>") -> dict[str, Value]:
    """``key = value`` pairs of a virconf text, in file order (later wins)."""
    tokens: list[tuple[str, Any, int]] = []
    line, pos = 1, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ConfigError(f"{source}:{line}: configuration file syntax error: "
                              f"unexpected character {text[pos]!r}")
        kind = m.lastgroup
        if kind == "newline" or kind == "punct" and m.group() == ";":
            tokens.append(("end", None, line))
        elif kind in ("name", "punct"):
            tokens.append((kind, m.group(), line))
        elif kind == "int":
            tokens.append(("value", int(m.group()), line))
        elif kind in ("tstring", "dstring", "sstring"):
            tokens.append(("value", m.group(kind[0] + "body"), line))
        line += m.group().count("\n")
        pos = m.end()
    tokens.append(("end", None, line))
    return _Parser(tokens, source).entries()


class _Parser:
    def __init__(self, tokens: list[tuple[str, Any, int]], source: str) -> None:
        self.tokens = tokens
        self.pos = 0
        self.source = source
        self.line = 1  # of the token read last

    def _error(self, what: str) -> ConfigError:
        return ConfigError(f"{self.source}:{self.line}: configuration file syntax error: {what}")

    def _next(self, skip_ends: bool = False) -> tuple[str, Any, int]:
        while skip_ends and self.tokens[self.pos][0] == "end" and \
                self.pos < len(self.tokens) - 1:
            self.pos += 1
        tok = self.tokens[self.pos]
        self.line = tok[2]
        if self.pos < len(self.tokens) - 1:
            self.pos += 1
        return tok

    def entries(self) -> dict[str, Value]:
        result: dict[str, Value] = {}
        while self.pos < len(self.tokens) - 1:
            kind, name, _ = self._next()
            if kind == "end":
                continue
            if kind != "name":
                raise self._error("expecting a name")
            if self._next()[1] != "=":
                raise self._error("expecting an assignment")
            result[name] = self._value()
            if self._next()[0] != "end":
                raise self._error("expecting a separator")
        return result

    def _value(self) -> Value:
        kind, value, _ = self._next()
        if kind == "value":
            return value
        if value != "[":
            raise self._error("expecting a value")
        items: list[Any] = []
        while True:
            kind, value, _ = self._next(skip_ends=True)
            if value == "]" and kind == "punct":
                return items
            if kind != "value":
                raise self._error("expecting a value")
            items.append(value)
            kind, value, _ = self._next(skip_ends=True)
            if value == "]":
                return items
            if value != ",":
                raise self._error("expecting a separator in list")


@dataclass
class Config:
    """The settings the daemon honours, with libvirtd 9.0's defaults.

    ``unix_sock_dir`` ``None`` means the run directory of the daemon's ``Paths``.
    """

    unix_sock_dir: str | None = None
    unix_sock_group: str | None = None
    unix_sock_ro_perms: str = "0777"
    unix_sock_rw_perms: str = "0700"
    unix_sock_admin_perms: str = "0700"
    auth_unix_ro: str = "none"
    auth_unix_rw: str = "none"
    max_clients: int = 5000
    max_queued_clients: int = 1000
    max_client_requests: int = 5
    keepalive_interval: int = 5
    keepalive_count: int = 5
    admin_max_clients: int = 5000
    admin_max_client_requests: int = 5
    admin_keepalive_interval: int = 5
    admin_keepalive_count: int = 5
    log_level: int = 3
    log_outputs: str = ""

    @classmethod
    def from_text(cls, text: str, source: str = "<config>") -> "Config":
        config = cls()
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        for key, value in parse(text, source).items():
            if key not in fields:
                log.debug("%s: ignoring unknown setting %s", source, key)
                continue
            wants_int = fields[key] == "int"
            if wants_int and not isinstance(value, int):
                raise ConfigError(f"{source}: expected an integer for '{key}' parameter")
            if not wants_int and not isinstance(value, str):
                raise ConfigError(f"{source}: expected a string for '{key}' parameter")
            setattr(config, key, value)
        for key in ("unix_sock_ro_perms", "unix_sock_rw_perms", "unix_sock_admin_perms"):
            try:
                int(getattr(config, key), 8)
            except ValueError:
                raise ConfigError(f"{source}: Failed to parse mode '{getattr(config, key)}'") \
                    from None
        return config

    @classmethod
    def load(cls, path: Path) -> "Config":
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
        return cls.from_text(text, str(path))

    def mode(self, key: str) -> int:
        """A ``unix_sock_*_perms`` setting as a number."""
        return int(getattr(self, key), 8)
