"""Which definitions a call changes: libvirt's AFFECT flags, and one way to change them.

A setter may change the running guest (live), its persistent definition
(config), or whichever the domain's state means (current). ``modify`` is the
one skeleton they all share: hold the domain's job lock, decide what the
flags touch, hand out the live definition and an edited copy of the config,
and when the body has succeeded make both last. Definitions are never changed
in place: the copy replaces the persistent definition only at the end.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from protocol.errors import ErrorCode, ErrorDomain, VirError

if TYPE_CHECKING:
    from drivers.qemu.domain import Domain
    from drivers.qemu.domain_xml import DomainDef
    from drivers.qemu.driver import QemuDriver

AFFECT_LIVE = 1 << 0
AFFECT_CONFIG = 1 << 1


def _invalid(text: str) -> VirError:
    message = f"Requested operation is not valid: {text}"
    return VirError(ErrorCode.OPERATION_INVALID, message, ErrorDomain.DOMAIN)


def impact(dom: Domain, flags: int) -> tuple[bool, bool]:
    """(live, config) for libvirt's AFFECT flags, with its errors."""
    live, config = bool(flags & AFFECT_LIVE), bool(flags & AFFECT_CONFIG)
    if not live and not config:
        live, config = dom.active, not dom.active
    if live and not dom.active:
        raise _invalid("domain is not running")
    if config and not dom.persistent:
        raise _invalid("transient domains do not have any persistent config")
    return live, config


def one_def(dom: Domain, flags: int) -> DomainDef:
    """The one definition a getter reads: live or config, never both."""
    if flags & AFFECT_LIVE and flags & AFFECT_CONFIG:
        raise VirError(
            ErrorCode.INVALID_ARG,
            "Flags 'VIR_DOMAIN_AFFECT_LIVE' and 'VIR_DOMAIN_AFFECT_CONFIG' are mutually exclusive",
            ErrorDomain.DOMAIN,
        )
    live, _config = impact(dom, flags)
    if live:
        assert dom.live is not None
        return dom.live
    return dom.config or dom.definition


@dataclass
class Edit:
    """What one call may change: the running guest's definition, and a copy of
    the persistent one that becomes it; each None when the flags leave it alone."""

    live: DomainDef | None
    config: DomainDef | None

    def defs(self) -> list[DomainDef]:
        """The definitions to change, live first: the order every setter applies them in."""
        return [d for d in (self.live, self.config) if d is not None]


def live_changed(driver: QemuDriver, dom: Domain) -> None:
    """The live definition says what is in force: its XML anew, and in the status file."""
    dom.xml_cache.clear()
    driver._save_status(dom)  # written atomically


@asynccontextmanager
async def modify(driver: QemuDriver, dom: Domain, flags: int) -> AsyncIterator[Edit]:
    """Change ``dom`` as ``flags`` say, under its job lock.

    The body changes the guest first, then ``edit.live`` and ``edit.config``.
    If it returns, the copy is saved as the persistent definition and a live
    change goes into the status file; if it raises, nothing is saved (a body
    that leaves a half-done live change behind calls ``live_changed`` itself).
    The body may also replace ``edit.config`` with a new definition of its own.
    """
    async with dom.lock:
        driver._check_present(dom)
        live, config = impact(dom, flags)
        if live:
            assert dom.live is not None
        if config:
            assert dom.config is not None
        edit = Edit(dom.live if live else None, copy.deepcopy(dom.config) if config else None)
        yield edit
        if edit.config is not None:
            driver._save_config(edit.config)
            dom.set_config(edit.config)
        if edit.live is not None:
            live_changed(driver, dom)
