"""The QEMU driver's domain definition: parse, fill defaults, format as libvirtd does.

``parse`` turns XML into a ``DomainDef`` with every default libvirtd would add;
``format`` prints it back exactly as ``virsh dumpxml`` shows it.
"""

from __future__ import annotations

from ..capabilities import QemuCaps
from . import defaults
from .format import format_domain as format
from .model import DomainDef, LiveState
from .parse import parse_document, parse_domain

__all__ = ["DomainDef", "LiveState", "format", "parse"]


def parse(xml: str, caps: QemuCaps) -> DomainDef:
    """Parse, validate and complete a definition; raises VirError as libvirtd would."""
    d = parse_domain(parse_document(xml))
    defaults.fill(d, caps)
    return d
