"""Validation of pool and volume XML against libvirt's RelaxNG schemas (the
VALIDATE flags), with libvirtd's error text and libxml2's own messages."""

from __future__ import annotations

import functools
from pathlib import Path

from lxml import etree

from protocol.errors import ErrorCode, ErrorDomain, VirError

SCHEMA_DIR = Path("/usr/share/libvirt/schemas")


@functools.cache
def _schema(name: str) -> etree.RelaxNG:
    return etree.RelaxNG(etree.parse(str(SCHEMA_DIR / f"{name}.rng")))


def validate(xml: str, name: str) -> None:
    """Raise libvirt's XML_INVALID_SCHEMA error unless ``xml`` fits schema ``name``
    (``storagepool``, ``storagevol``)."""
    path = SCHEMA_DIR / f"{name}.rng"
    try:
        schema = _schema(name)
    except (OSError, etree.LxmlError):
        raise VirError(ErrorCode.INTERNAL_ERROR,
                       f"internal error: Unable to parse RNG {path}", ErrorDomain.NONE) from None
    try:
        doc = etree.fromstring(xml.encode(), etree.XMLParser(resolve_entities=False))
    except etree.XMLSyntaxError:
        return  # the parser after us reports syntax errors with its own text
    if schema.validate(doc):
        return
    details = "".join(f"{e.message}\n" for e in schema.error_log)
    raise VirError(ErrorCode.XML_INVALID_SCHEMA,
                   f"XML document failed to validate against schema: Unable to validate doc "
                   f"against {path}\n{details}", ErrorDomain.NONE)
