"""Changes to links, addresses and routes through pyroute2, on a thread of their own.

Two things shape this module. pyroute2's asyncio socket is a datagram endpoint
that uvloop cannot open for AF_NETLINK, so every request runs on one dedicated
thread with a blocking ``IPRoute`` over a plain selector loop. And importing
pyroute2 loads some 160 modules (~10 MiB of RSS), which a daemon that never
changes a link should not carry, so it is imported on that thread at first use.

Callers hand ``run`` a function of a ``Links`` object; pyroute2's errors come
out of it as our ``NetlinkError``, so no caller needs pyroute2's classes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

#: A request the kernel does not answer in this time fails instead of hanging.
TIMEOUT = 10.0

_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")


class NetlinkError(Exception):
    """The kernel refused a request; ``code`` is its errno."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or os.strerror(code))
        self.code = code

    def describe(self) -> str:
        return os.strerror(self.code) if self.code else str(self)


class Links:
    """pyroute2's ``IPRoute`` (``link``, ``addr``, ``route``, ``get_links``, ...),
    with its errors turned into ``NetlinkError``. Made and used on the thread only."""

    def __init__(self) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError as RawError

        self._raw_error = RawError
        self._loop = asyncio.SelectorEventLoop()
        self._ipr = IPRoute(use_event_loop=self._loop)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._ipr, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except self._raw_error as e:
                raise NetlinkError(e.code or 0, str(e)) from None

        return call

    def close(self) -> None:
        try:
            self._ipr.close()
        finally:
            self._loop.close()


_links: Links | None = None


def _on_thread(fn: Callable[[Links], T]) -> T:
    global _links
    if _links is None:
        _links = Links()
    try:
        return fn(_links)
    except NetlinkError:
        raise
    except Exception:
        # Not the kernel's answer: the socket may be in any state, start afresh.
        links, _links = _links, None
        links.close()
        raise


async def run(fn: Callable[[Links], T]) -> T:
    """``fn(links)`` on the netlink thread, failing after ``TIMEOUT`` seconds."""
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.run_in_executor(_THREAD, _on_thread, fn), TIMEOUT)
