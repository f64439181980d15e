"""The tiny Linux guest the QEMU end-to-end tests boot: build it with ``ensure_guest``."""

from .image import BANNER, CMDLINE, PROMPT, Guest, ensure_guest

__all__ = ["BANNER", "CMDLINE", "PROMPT", "Guest", "ensure_guest"]
