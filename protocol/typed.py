"""virTypedParameter lists as the wire carries them (``remote_typed_param``).

Many calls pass "typed parameters": named values whose type travels with them.
On the wire each is a ``remote_typed_param(field, (type, value))``; handlers
build replies with :func:`encode` and check what a client sent with
:func:`validate`, which gives libvirt's errors for unknown names, wrong types
and repeats.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from protocol.errors import ErrorCode, ErrorDomain, VirError
from protocol.programs import remote

INT = 1
UINT = 2
LLONG = 3
ULLONG = 4
DOUBLE = 5
BOOLEAN = 6
STRING = 7
# Or-ed into a type in a validate() table: the name may appear several times.
MULTIPLE = 1 << 31

TYPE_NAMES = {0: "unknown", INT: "int", UINT: "uint", LLONG: "llong", ULLONG: "ullong",
              DOUBLE: "double", BOOLEAN: "boolean", STRING: "string"}


def param(field: str, type: int, value: Any) -> Any:
    """One ``remote_typed_param``; booleans go as ints, as libvirt sends them."""
    if type == BOOLEAN:
        value = int(bool(value))
    return remote().module.remote_typed_param(field, (type, value))


def encode(items: Iterable[tuple[str, int, Any]]) -> list[Any]:
    """``(field, type, value)`` triples as wire parameters, in order."""
    return [param(field, type, value) for field, type, value in items]


def truncate(params: list[Any], nparams: int) -> tuple[list[Any], int]:
    """The reply of the older get-calls: with ``nparams`` 0 the client only asks
    how many there are; otherwise it gets at most ``nparams`` of them."""
    if nparams == 0:
        return [], len(params)
    kept = params[: max(nparams, 0)]
    return kept, len(kept)


def validate(params: Iterable[Any], allowed: Mapping[str, int]) -> dict[str, Any]:
    """The values of ``params`` by field name, after libvirt's checks.

    ``allowed`` maps each accepted name to its type (| MULTIPLE for names
    that may repeat: their value is then a list). Checked in sorted order of
    names, as libvirt does, so the first complaint is the one it would make.
    """
    values: dict[str, Any] = {}
    for p in sorted(params, key=lambda p: p.field):
        want = allowed.get(p.field)
        if want is None:
            raise VirError(
                ErrorCode.ARGUMENT_UNSUPPORTED,
                f"argument unsupported: parameter '{p.field}' not supported",
                ErrorDomain.NONE,
            )
        got, value = p.value
        multiple = bool(want & MULTIPLE)
        if p.field in values and not multiple:
            raise VirError(
                ErrorCode.INVALID_ARG,
                f"invalid argument: parameter '{p.field}' occurs multiple times",
                ErrorDomain.NONE,
            )
        if got != want & ~MULTIPLE:
            raise VirError(
                ErrorCode.INVALID_ARG,
                f"invalid argument: invalid type '{TYPE_NAMES.get(got, 'unknown')}'"
                f" for parameter '{p.field}', expected '{TYPE_NAMES[want & ~MULTIPLE]}'",
                ErrorDomain.NONE,
            )
        if multiple:
            values.setdefault(p.field, []).append(value)
        else:
            values[p.field] = value
    return values
