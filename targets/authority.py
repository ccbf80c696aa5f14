"""Who is calling the array, and what that caller may do.

The caller comes from the bearer token alone, never from a URL or a body: the admin token
(provisioning and admin tools), or the token made for one registered host when it was
registered (bound to its initiator name). The rules a host is held to:

- it sees and uses the LUNs masked to it, the LUNs it holds (made or imported), and the shadow
  LUNs of sets it may import (its own, or any transportable set of this array);
- it snapshots, copies and resyncs only LUNs masked to it or held by it;
- it masks only to itself, and only LUNs it holds (a claimed import makes its shadow LUNs its);
- it deletes, detaches and unmasks itself from only what it holds;
- everything else (production volumes, hosts, other initiators' masks) is the admin's.

A refusal is E_ACCESSDENIED (403) raised before anything changes.
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from provider.contract.hresult import HResult, VssError, vss_error

CHAP_SECRET_HEX = 32  # 128 bits of secret (RFC 3720 asks for at least 96); LIO takes up to 255


@dataclass(frozen=True)
class Caller:
    """The admin (initiator None) or one registered host."""

    name: str
    initiator: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.initiator is None

    def __str__(self) -> str:
        return "the admin" if self.is_admin else f"host {self.name!r} ({self.initiator})"


ADMIN = Caller("admin")


def new_token() -> str:
    return secrets.token_urlsafe(32)


def new_chap_secret() -> str:
    return secrets.token_hex(CHAP_SECRET_HEX // 2)


def token_digest(token: str) -> str:
    """What the store keeps of a host token: its SHA-256 (tokens are 256 random bits, so a
    plain hash is enough; the token itself exists only in the host's access file)."""
    return hashlib.sha256(token.encode()).hexdigest()


def denied(caller: Caller, action: str) -> VssError:
    return vss_error(HResult.E_ACCESSDENIED, f"{caller} may not {action}")


def require_admin(caller: Caller, action: str) -> None:
    if not caller.is_admin:
        raise denied(caller, f"{action} (admin only)")


def may_import(s, initiator: str) -> bool:
    """A snapshot set is imported by the host that made it; a transportable one (or one the
    admin made) by any host of this array."""
    return s.owner in (None, initiator) or s.transportable
