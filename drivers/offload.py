"""Blocking work on files and helper programs, kept off the event loop and bounded.

A mount that stops answering (NFS, FUSE) blocks every system call on it in
the kernel, and no thread stuck there can be taken back. So file system work
on a pool, or on a guest's disk image, runs on worker threads of that
directory's own (``lane``), a few at most, under a timeout: a hung mount fails
its own calls with libvirt's timeout error while its stuck threads stay its
own, and the loop, the other pools and guests and the other drivers go on. Long data work (copies, wipes, streams) runs on a second
lane of the pool, untimed, so a big clone does not make its pool's refresh
wait. The threads are daemon threads outside the loop's default executor, so
one stuck in the kernel keeps neither other callers nor the daemon's exit
waiting. Helper programs get the same bound: killed and reaped once it passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from protocol.errors import ErrorCode, ErrorDomain, VirError

T = TypeVar("T")

#: Seconds a file system call or a quick helper program may take. The
#: environment variable is for tests, which want a hung pool to fail fast.
TIMEOUT = float(os.environ.get("AIOVIRTD_STORAGE_TIMEOUT", "30"))
#: Seconds a helper program that copies or writes data (qemu-img convert,
#: mkfs, scrub) may take.
LONG_TIMEOUT = 6 * 3600.0
#: Threads one lane runs at most: a hung pool holds no more than these.
WORKERS = 4
#: Seconds an idle worker waits for more work before it ends.
_IDLE = 60.0
#: Seconds to wait for a killed helper to be reaped before leaving it to the
#: child watcher (a process stuck in the kernel dies only when it returns).
_REAP_WAIT = 5.0


def timed_out(what: str, domain: ErrorDomain = ErrorDomain.STORAGE) -> VirError:
    """libvirt's error for a wait that ran out."""
    return VirError(ErrorCode.OPERATION_TIMEOUT, f"Timed out during operation: {what}", domain)


class _Lane:
    """Up to WORKERS daemon threads taking jobs from one queue, started as needed
    and ended when idle, so a daemon at rest keeps none."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    def submit(self, func: Callable[..., T], args: Sequence[Any]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, fut, func, args))
        with self._lock:
            if self._jobs.qsize() > self._idle and self._threads < WORKERS:
                self._threads += 1
                threading.Thread(target=self._work, name=f"offload {self._name}",
                                 daemon=True).start()
        return fut

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            try:
                loop, fut, func, args = self._jobs.get(timeout=_IDLE)
            except queue.Empty:
                with self._lock:
                    if self._jobs.empty():  # else a job came as the wait ended
                        self._idle -= 1
                        self._threads -= 1
                        return
                    self._idle -= 1
                continue
            with self._lock:
                self._idle -= 1
            if fut.cancelled():  # its caller gave up while it waited in the queue
                continue
            try:
                result, error = func(*args), None
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                result, error = None, e
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(_settle, fut, result, error)


def _settle(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if fut.cancelled():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


_lanes: dict[str, _Lane] = {}


def _lane(key: str) -> _Lane:
    lane = _lanes.get(key)
    if lane is None:
        lane = _lanes[key] = _Lane(key)
    return lane


def submit(key: str, func: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """``func(*args)`` on the lane of ``key``, untimed: for a caller that bounds
    its own wait and wants to see whether the work is still under way."""
    return _lane(key).submit(func, args)


async def run(key: str, func: Callable[..., T], *args: Any,
              domain: ErrorDomain = ErrorDomain.STORAGE) -> T:
    """``func(*args)`` on the lane of ``key`` (a pool's target path, an image's
    directory), failing with libvirt's timeout error (of ``domain``) after
    TIMEOUT seconds; the thread is left to finish."""
    try:
        return await asyncio.wait_for(_lane(key).submit(func, args), TIMEOUT)
    except TimeoutError:
        raise timed_out(f"no answer from '{key}' in {TIMEOUT:g} seconds", domain) from None


async def run_long(key: str, func: Callable[..., T], *args: Any) -> T:
    """``func(*args)`` on the data lane of ``key``, for as long as it takes. A
    cancelled caller still waits for the thread, so the descriptors it uses stay
    open (and are not reused) until it is done."""
    job = _lane(f"{key} (data)").submit(func, args)
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        await asyncio.wait([job])
        raise


async def communicate(proc: asyncio.subprocess.Process, argv: Sequence[str],
                      input: bytes | None = None,
                      timeout: float | None = None) -> tuple[bytes, bytes]:
    """``proc.communicate`` bounded by ``timeout`` (TIMEOUT by default): past it
    the child is killed and reaped, and the call fails with libvirt's error."""
    try:
        return await asyncio.wait_for(proc.communicate(input), timeout or TIMEOUT)
    except TimeoutError:
        await _kill(proc)
        raise timed_out(f"child process ({' '.join(argv)}) did not finish in "
                        f"{timeout or TIMEOUT:g} seconds") from None
    except BaseException:
        await _kill(proc)
        raise


async def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(proc.wait()), _REAP_WAIT)
