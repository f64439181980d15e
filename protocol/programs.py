"""libvirt's RPC programs, built from protocol/defs/*.x and their procedure annotations.

Each program's procedures are the members of its ``<prefix>_procedure`` enum;
the comment after a member (``/* @acl=domain:read @ro ... */``) says how the
daemon treats the call (docs/architecture.md, "Procedure annotations").
Programs are compiled on first use and then shared; codecs of a procedure are
looked up when first asked for, so an unused procedure costs nothing.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.xdr import Codec, compile_files

__all__ = [
    "Procedure", "Program", "AnnotationError", "api_name", "parse_annotation",
    "remote", "qemu", "admin", "keepalive", "virnet", "load_all",
]

DEFS = Path(__file__).parent / "defs"


class AnnotationError(ValueError):
    """A procedure annotation comment is malformed."""


# Words that libvirt's public API names do not spell as simple Capitalised words.
_API_WORDS = {
    "XML": "XML", "UUID": "UUID", "ID": "ID", "URI": "URI", "CPU": "CPU", "OS": "OS",
    "FSFREEZE": "FSFreeze", "FSTHAW": "FSThaw", "FSTRIM": "FSTrim", "FSINFO": "FSInfo",
    "IOTHREAD": "IOThread", "SEV": "SEV", "DHCP": "DHCP", "PM": "PM", "SCSI": "SCSI",
    "WWN": "WWN", "NWFILTER": "NWFilter", "MAC": "MAC", "FD": "FD", "SSH": "SSH",
    "THREADPOOL": "ThreadPool",
}


def api_name(name: str, prefix: str = "vir") -> str:
    """libvirt API name for a procedure name: ``DOMAIN_GET_XML_DESC`` -> ``virDomainGetXMLDesc``."""
    return prefix + "".join(_api_word(w) for w in name.split("_"))


def _api_word(word: str) -> str:
    if word in _API_WORDS:
        return _API_WORDS[word]
    if word.endswith("S") and word[:-1] in _API_WORDS:  # NWFILTERS -> NWFilters
        return _API_WORDS[word[:-1]] + "s"
    return word.capitalize()


_FLAGS = {"ro", "high", "readstream", "writestream", "event"}
_VALUED = {"acl", "aclfilter", "api"}


def parse_annotation(text: str) -> dict[str, Any]:
    """Parse ``@key[=value] ...``; returns {} for comments that are not annotations."""
    words = text.split()
    if not words or not words[0].startswith("@"):
        return {}
    out: dict[str, Any] = {"acl": []}
    for word in words:
        if not word.startswith("@"):
            raise AnnotationError(f"expected @key[=value], got {word!r}")
        key, eq, value = word[1:].partition("=")
        if key in _FLAGS and not eq:
            out[key] = True
        elif key in _VALUED and eq and value:
            if key == "acl":
                out["acl"].extend(v for v in value.split(",") if v)
            elif key in out:
                raise AnnotationError(f"@{key} given twice")
            else:
                out[key] = value
        else:
            raise AnnotationError(f"unknown or malformed annotation {word!r}")
    if out.get("readstream") and out.get("writestream"):
        raise AnnotationError("a procedure cannot be both @readstream and @writestream")
    return out


_UNSET: Any = object()


class Procedure:
    """One RPC procedure of a program; ``args``/``ret`` are codecs or None."""

    __slots__ = ("number", "name", "api", "acl", "aclfilter", "readonly_ok",
                 "high_priority", "stream", "event", "_module", "_names", "_codecs")

    def __init__(self, number: int, name: str, api: str, module: types.ModuleType,
                 args_name: str | None, ret_name: str | None, *, acl: tuple[str, ...] = (),
                 aclfilter: str | None = None, readonly_ok: bool = False,
                 high_priority: bool = False, stream: str | None = None, event: bool = False):
        self.number = number
        self.name = name
        self.api = api
        self.acl = acl
        self.aclfilter = aclfilter
        self.readonly_ok = readonly_ok
        self.high_priority = high_priority
        self.stream = stream
        self.event = event
        self._module = module
        self._names = (args_name, ret_name)
        self._codecs = [_UNSET, _UNSET]

    def _codec(self, i: int) -> Codec | None:
        codec = self._codecs[i]
        if codec is _UNSET:
            name = self._names[i]
            codec = None if name is None else getattr(self._module, name + "_codec")
            self._codecs[i] = codec
        return codec

    @property
    def args(self) -> Codec | None:
        """Codec of the call's arguments (of the message body, for an @event)."""
        return self._codec(0)

    @property
    def ret(self) -> Codec | None:
        """Codec of the reply body."""
        return self._codec(1)

    def __repr__(self) -> str:
        return f"<Procedure {self.number} {self.name} ({self.api})>"


@dataclass(frozen=True, slots=True)
class Program:
    """An RPC program: its identity, its procedures by number and its codec module."""

    name: str
    number: int
    version: int
    procedures: dict[int, Procedure]
    module: types.ModuleType

    def __repr__(self) -> str:
        return (f"<Program {self.name} {self.number:#x} v{self.version}: "
                f"{len(self.procedures)} procedures>")


def build_program(name: str, number: int, version: int, module: types.ModuleType,
                  prefix: str, api_prefix: str = "vir") -> Program:
    """Build the table from *module*'s ``<prefix>_procedure`` enum and its annotations."""
    enum_name = f"{prefix}_procedure"
    members: dict[str, int] = getattr(module, enum_name)
    comments: dict[str, list[str]] = module.__xdr_comments__.get(enum_name, {})
    known = module.__xdr_types__
    member_prefix = f"{prefix.upper()}_PROC_"
    procedures: dict[int, Procedure] = {}
    for member, proc_number in members.items():
        if not member.startswith(member_prefix):
            raise AnnotationError(f"{enum_name}: {member} does not start with {member_prefix}")
        if proc_number in procedures:
            raise AnnotationError(f"{enum_name}: {member} reuses number {proc_number}")
        proc_name = member[len(member_prefix):]
        found: list[dict[str, Any]] = []
        for text in comments.get(member, ()):
            try:
                parsed = parse_annotation(text)
            except AnnotationError as e:
                raise AnnotationError(f"{enum_name}: {member}: {e}") from None
            if parsed:
                found.append(parsed)
        if len(found) > 1:
            raise AnnotationError(f"{enum_name}: {member} has two annotation comments")
        notes: dict[str, Any] = found[0] if found else {"acl": []}
        stem = f"{prefix}_{proc_name.lower()}"
        event = bool(notes.get("event"))
        args = f"{stem}_msg" if event else f"{stem}_args"
        ret = f"{stem}_ret"
        stream = ("read" if notes.get("readstream")
                  else "write" if notes.get("writestream") else None)
        procedures[proc_number] = Procedure(
            proc_number, proc_name, notes.get("api") or api_name(proc_name, api_prefix), module,
            args if args in known else None, ret if ret in known else None,
            acl=tuple(notes["acl"]), aclfilter=notes.get("aclfilter"),
            readonly_ok=bool(notes.get("ro")), high_priority=bool(notes.get("high")),
            stream=stream, event=event)
    return Program(name, number, version, procedures, module)


def _compile(name: str, *files: str) -> types.ModuleType:
    return compile_files([DEFS / f for f in files], f"protocol.programs.{name}")


@functools.cache
def virnet() -> types.ModuleType:
    """The packet header types (virNetMessageHeader, virNetMessageError, ...)."""
    return _compile("virnet", "libvirt.x", "virnet.x")


@functools.cache
def _remote_unit() -> types.ModuleType:
    """The REMOTE and QEMU programs' types, one unit for both.

    qemu.x adds a dozen types built from REMOTE's; compiled apart, it held a
    second copy of all of REMOTE's constants, enums and type chunks (~0.8 MiB).
    """
    return _compile("remote", "libvirt.x", "remote.x", "remote_domain.x", "qemu.x")


@functools.cache
def remote() -> Program:
    """The REMOTE program (virsh and libvirt-python speak this)."""
    return build_program("REMOTE", 0x20008086, 1, _remote_unit(), "remote")


@functools.cache
def qemu() -> Program:
    """The QEMU program (virDomainQemu* calls)."""
    return build_program("QEMU", 0x20008087, 1, _remote_unit(), "qemu")


@functools.cache
def admin() -> Program:
    """The ADMIN program (virt-admin)."""
    module = _compile("admin", "libvirt.x", "admin.x")
    return build_program("ADMIN", 0x06900690, 1, module, "admin", "virAdm")


@functools.cache
def keepalive() -> Program:
    """The KEEPALIVE program (PING/PONG, no bodies)."""
    return build_program("KEEPALIVE", 0x6B656570, 1, _compile("keepalive", "keepalive.x"),
                         "keepalive")


def load_all() -> tuple[Program, ...]:
    """Every program the daemon serves."""
    return (remote(), qemu(), admin(), keepalive())
