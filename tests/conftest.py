"""Fixtures shared by all tests: test daemons with their own roots.

Every test under tests/e2e/ is marked ``slow``, so ``pytest -m "not slow"``
runs the unit tests alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2e.access import run_event_loop
from e2e.daemon import DaemonProcess, cleanup_all, sweep_stale
from e2e.netns import NetNS

E2E = Path(__file__).parent / "e2e"

try:
    import libvirt
except ImportError:  # the unit tests run without libvirt-python
    libvirt = None
else:
    # libvirt prints every error to stderr unless a handler takes it; the
    # tests look at the raised libvirtError instead.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    run_event_loop()  # before any connection opens: streams and event callbacks need it


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if E2E in Path(item.fspath).parents:
            item.add_marker(pytest.mark.slow)


def pytest_sessionstart(session: pytest.Session) -> None:
    sweep_stale()


def pytest_sessionfinish(session: pytest.Session) -> None:
    cleanup_all()


@pytest.fixture
def start_daemon() -> Iterator[Callable[..., DaemonProcess]]:
    """Start daemons with extra command-line arguments: ``start_daemon("-t", "2")``.

    ``wait=False`` returns before the socket is up. All are torn down at the end.
    """
    started: list[DaemonProcess] = []

    def start(*args: str, wait: bool = True) -> DaemonProcess:
        d = DaemonProcess(args)
        started.append(d)
        return d.start(wait=wait)

    yield start
    for d in started:
        d.cleanup()


@pytest.fixture
def daemon(start_daemon: Callable[..., DaemonProcess]) -> DaemonProcess:
    """A fresh daemon for this test alone."""
    return start_daemon()


@pytest.fixture(scope="module")
def module_daemon() -> Iterator[DaemonProcess]:
    """One daemon shared by the tests of a module (they must not leave state behind)."""
    d = DaemonProcess()
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


@pytest.fixture
def netns() -> Iterator[NetNS]:
    """A network namespace of this test's own, deleted (with its processes) at teardown."""
    with NetNS() as ns:
        yield ns


@pytest.fixture
def netns_daemon(netns: NetNS) -> Iterator[DaemonProcess]:
    """A fresh daemon running inside ``netns``: its networks never touch the host's."""
    d = DaemonProcess(netns=netns.name)
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


@pytest.fixture(scope="module")
def module_netns_daemon() -> Iterator[DaemonProcess]:
    """``module_daemon`` in a network namespace of its own, for guests with NICs."""
    with NetNS() as ns:
        d = DaemonProcess(netns=ns.name)
        try:
            d.start()
            yield d
        finally:
            d.cleanup()
