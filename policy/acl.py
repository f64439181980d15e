"""Access control: may this caller make this call?

One interface, :class:`daemon.dispatch.AccessControl`, checked by dispatch
before every handler. Today's policy is libvirt's read-only rule; polkit's
per-API checks become another implementation working from the same
``procedure.acl`` permissions (``object:perm[:FLAG|FLAG]`` or
``object:perm::field:VALUE``).
"""

from __future__ import annotations

import logging
from typing import Any

from daemon.dispatch import Call, api_error_domain
from protocol.errors import ErrorCode, VirError
from protocol.programs import Procedure

log = logging.getLogger(__name__)

# Values of the flags that make an otherwise read-only call privileged
# (libvirt-domain*.h of libvirt 9.0). Only names used by conditional
# permissions of @ro procedures are needed here.
FLAGS = {
    "VIR_DOMAIN_XML_SECURE": 1 << 0,
    "VIR_DOMAIN_XML_MIGRATABLE": 1 << 3,
    "VIR_DOMAIN_SNAPSHOT_XML_SECURE": 1 << 0,
    "VIR_DOMAIN_SAVE_IMAGE_XML_SECURE": 1 << 0,
    "VIR_DOMAIN_CHECKPOINT_XML_SECURE": 1 << 0,
    "VIR_DOMAIN_VCPU_GUEST": 1 << 3,
    "VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT": 1,
}

# A condition: (argument field, value, equal?, message). ``equal`` False means
# "any of the bits of value set in the field".
Condition = tuple[str, int, bool, str]
_DENY: list[Condition] = []  # marker: no read-only access at all


class ReadOnly:
    """A read-only connection may make only calls marked ``@ro``, and those
    not with an argument that reveals secrets or changes something (e.g.
    VIR_DOMAIN_XML_SECURE), with libvirt's messages."""

    def __init__(self) -> None:
        self._rules: dict[Procedure, list[Condition]] = {}

    def check(self, call: Call, args: Any) -> None:
        conn = call.conn
        if conn is None or not conn.readonly:
            return
        proc = call.procedure
        rule = self._rules.get(proc)
        if rule is None:
            rule = self._rules[proc] = rule_for(proc)
        if rule is _DENY:
            raise _denied(proc, f"read only access prevents {proc.api}")
        for field, value, equal, message in rule:
            actual = getattr(args, field, 0)
            if (actual == value) if equal else (actual & value):
                raise _denied(proc, message)


def rule_for(proc: Procedure) -> list[Condition]:
    """The read-only rule of a procedure, from its annotations."""
    if not proc.readonly_ok:
        return _DENY
    rule: list[Condition] = []
    for acl in proc.acl:
        parts = acl.split(":")
        if len(parts) < 3:
            continue  # unconditional: a read permission, since the call is @ro
        perm = parts[1]
        message = (f"{proc.api} with secure flag" if perm.endswith("_secure")
                   else f"read only access prevents {proc.api}")
        if len(parts) == 5 and parts[2] == "":  # object:perm::field:VALUE
            rule.append((parts[3], _value(parts[4], proc), True, message))
        elif not parts[2].startswith("!"):
            mask = 0
            for name in parts[2].split("|"):
                mask |= _value(name, proc)
            rule.append(("flags", mask, False, message))
    return rule


def _value(name: str, proc: Procedure) -> int:
    try:
        return FLAGS[name]
    except KeyError:
        raise ValueError(f"{proc.name}: unknown flag {name} in @acl") from None


def _denied(proc: Procedure, detail: str) -> VirError:
    return VirError(ErrorCode.OPERATION_DENIED, f"operation forbidden: {detail}",
                    api_error_domain(proc.api))
