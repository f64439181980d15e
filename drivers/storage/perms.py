"""``<permissions>`` of a pool target or a volume: mode, owner, group, label."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.errors import ErrorCode, ErrorDomain, VirError


@dataclass
class Perms:
    """Unset fields are None: libvirt then leaves the file's own as they are."""

    mode: int | None = None
    owner: int | None = None
    group: int | None = None
    label: str | None = None

    def is_set(self) -> bool:
        return any(v is not None for v in (self.mode, self.owner, self.group, self.label))

    def format(self, indent: str) -> list[str]:
        if not self.is_set():
            return []
        inner = indent + "  "
        lines = [f"{indent}<permissions>"]
        if self.mode is not None:
            lines.append(f"{inner}<mode>0{self.mode:o}</mode>")
        if self.owner is not None:
            lines.append(f"{inner}<owner>{self.owner}</owner>")
        if self.group is not None:
            lines.append(f"{inner}<group>{self.group}</group>")
        if self.label is not None:
            lines.append(f"{inner}<label>{_escape(self.label)}</label>")
        lines.append(f"{indent}</permissions>")
        return lines


def parse_perms(node: Any) -> Perms:
    """``node`` is a ``<permissions>`` element or None."""
    perms = Perms()
    if node is None:
        return perms
    mode = node.findtext("mode")
    if mode is not None:
        try:
            perms.mode = int(mode.strip(), 8)
        except ValueError:
            perms.mode = -1
        if not 0 <= perms.mode <= 0o777:
            raise VirError(ErrorCode.XML_ERROR, "XML error: malformed octal mode",
                           ErrorDomain.STORAGE)
    for field in ("owner", "group"):
        text = node.findtext(field)
        if text is not None:
            try:
                value = int(text.strip())
            except ValueError:
                raise VirError(ErrorCode.XML_ERROR, f"XML error: malformed {field} element",
                               ErrorDomain.STORAGE) from None
            setattr(perms, field, None if value == -1 else value)
    perms.label = node.findtext("label")
    return perms


def _escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("'", "&apos;").replace('"', "&quot;"))
