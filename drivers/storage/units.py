"""Sizes in storage XML: a number and a ``unit`` attribute, scaled as libvirt does."""

from __future__ import annotations

from protocol.errors import ErrorCode, ErrorDomain, VirError

_POWERS = "kmgtpe"


def scale(value: str, unit: str | None, element: str = "capacity") -> int:
    """Bytes for ``value`` in ``unit`` (default bytes); K, KiB are 1024, KB is 1000.

    ``element`` names the XML element in the error for a malformed number."""
    text = value.strip()
    if not (text.isascii() and text.isdigit()):
        raise VirError(ErrorCode.XML_ERROR, f"XML error: malformed {element} element",
                       ErrorDomain.STORAGE)
    number = int(text)
    u = (unit or "b").strip().lower()
    if u in ("b", "byte", "bytes"):
        factor = 1
    elif u and u[0] in _POWERS and u[1:] in ("", "ib", "b"):
        base = 1000 if u[1:] == "b" else 1024
        factor = base ** (_POWERS.index(u[0]) + 1)
    else:
        raise VirError(ErrorCode.INVALID_ARG, f"invalid argument: unknown suffix '{unit}'")
    result = number * factor
    if result >= 1 << 64:
        raise VirError(ErrorCode.OVERFLOW,
                       f"numerical overflow: value too large: {text}{unit or ''}")
    return result
