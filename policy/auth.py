"""Authentication: who must prove what before making calls.

One interface per scheme: what AUTH_LIST announces for a listener and
whether a fresh client starts out authenticated. ``none`` is the only scheme
today; SASL and polkit become new classes that also handle their AUTH_*
procedures.
"""

from __future__ import annotations

from daemon.listeners import Identity

# remote_auth_type
REMOTE_AUTH_NONE = 0
REMOTE_AUTH_SASL = 1
REMOTE_AUTH_POLKIT = 2


class Auth:
    """The authentication scheme of a listener."""

    name = "?"
    wire_type = -1

    def initially_authenticated(self, identity: Identity) -> bool:
        raise NotImplementedError


class AuthNone(Auth):
    """No authentication: the transport (socket permissions) is the guard."""

    name = "none"
    wire_type = REMOTE_AUTH_NONE

    def initially_authenticated(self, identity: Identity) -> bool:
        return True


def for_name(name: str) -> Auth:
    """The scheme configured as ``auth_unix_rw`` / ``auth_unix_ro``."""
    if name == "none":
        return AuthNone()
    raise ValueError(f"unsupported authentication scheme '{name}'")
