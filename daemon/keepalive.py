"""libvirt's keepalive on the server side: detect peers that went away silently.

Once a client has said it speaks the KEEPALIVE program, every ``interval``
seconds without a packet from it we send a PING; any packet at all counts as a
sign of life. After ``count`` PINGs in a row went unanswered the connection is
dead. A non-positive interval disables it, as in libvirtd.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class KeepAlive:
    __slots__ = ("interval", "count", "_left", "_last", "_loop", "_timer", "_ping", "_dead")

    def __init__(self, interval: float, count: int, ping: Callable[[], None],
                 dead: Callable[[], None]) -> None:
        self.interval = interval
        self.count = count
        self._left = count
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._ping = ping
        self._dead = dead

    def seen(self) -> None:
        """The peer sent something: it is alive."""
        self._last = self._loop.time()
        self._left = self.count

    def start(self) -> None:
        if self._timer is None and self.interval > 0:
            self._arm(self._last + self.interval)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, when: float) -> None:
        self._timer = self._loop.call_at(when, self._tick)

    def _tick(self) -> None:
        now = self._loop.time()
        due = self._last + self.interval
        if now < due:  # heard from the peer since we armed: wait a full interval
            self._arm(due)
            return
        if self._left <= 0:
            self._timer = None
            self._dead()
            return
        self._left -= 1
        self._ping()
        self._last = now  # the next PING one interval after this one
        self._arm(now + self.interval)
