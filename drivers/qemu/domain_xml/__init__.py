"""The QEMU driver's domain definition: parse, fill defaults, format as libvirtd does.

``parse`` turns XML into a ``DomainDef`` with every default libvirtd would add;
``format`` prints it back exactly as ``virsh dumpxml`` shows it. Starting a guest,
the driver works on a copy, the live definition::

    live = copy.deepcopy(d)
    select_firmware(live, nvram_dir)   # <os firmware='efi'>: loader and NVRAM
    ensure_nvram(live)
    argv = command.build_argv(live, caps, monitor_path=..., channel_dir=...)
    ...                                # aliases and channel paths are now set
    format(live, inactive=False, live=LiveState(id=..., pty_paths=...))

Re-attaching after a restart, ``assign_aliases`` and ``fill_channel_paths`` give a
re-parsed live definition what ``build_argv`` gave it at start.
"""

from __future__ import annotations

from ..capabilities import QemuCaps
from . import defaults
from .aliases import assign_aliases, fill_channel_paths
from .firmware import ensure_nvram, select_firmware
from .format import format_domain as format
from .model import DomainDef, LiveState
from .parse import parse_document, parse_domain

__all__ = [
    "DomainDef",
    "LiveState",
    "assign_aliases",
    "ensure_nvram",
    "fill_channel_paths",
    "format",
    "parse",
    "select_firmware",
]


def parse(xml: str, caps: QemuCaps) -> DomainDef:
    """Parse, validate and complete a definition; raises VirError as libvirtd would."""
    d = parse_domain(parse_document(xml))
    defaults.fill(d, caps)
    return d
