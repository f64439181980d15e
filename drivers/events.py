"""A tiny synchronous event bus between drivers and whoever listens (the daemon).

Drivers call :meth:`EventBus.emit` with a kind such as ``"domain-lifecycle"`` and
keyword data; the daemon turns that into MESSAGE packets. Listeners must not block.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Listener = Callable[..., None]


class EventBus:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    def emit(self, kind: str, obj: Any, **data: Any) -> None:
        for listener in list(self._listeners):
            try:
                listener(kind, obj, **data)
            except Exception:  # one broken listener must not stop the others
                log.exception("event listener failed for %s", kind)
