"""Who the caller is, from its own credentials, and whether its role allows a command.

The server enforces every role through the caller's permissions whatever the client does;
this check lets the CLI refuse *before* trying, in one line naming the missing role, and
record the refusal on the control stream. Credentials not issued by shoal (a password, a
token, another operator's creds) carry no role: the server alone decides for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shoal.auth.jwt import decode_claims, parse_creds
from shoal.auth.permissions import ROLES, Role
from shoal.bus import ShoalSettings

__all__ = ["Caller", "caller_of", "missing_role"]


@dataclass(frozen=True)
class Caller:
    """The principal a connection authenticates as, and its role."""

    principal: str
    role: Role


def caller_of(settings: ShoalSettings) -> Caller | None:
    """The caller named by the credentials this process connects with, if shoal issued them."""
    path: Path | None = settings.effective_creds
    if path is None:
        return None
    try:
        token, _ = parse_creds(path.read_text())
        claims = decode_claims(token)
    except (OSError, ValueError):
        return None
    tags = dict(
        str(t).split(":", 1) for t in claims.get("nats", {}).get("tags", []) if ":" in str(t)
    )
    role = tags.get("role")
    if role not in ROLES:
        return None
    return Caller(tags.get("principal") or str(claims.get("name", "")), role)


def missing_role(caller: Caller | None, need: Role, command: str) -> str | None:
    """One line saying which role ``command`` needs, or None if the caller has it (or is
    unknown to shoal: the server decides)."""
    if caller is None or ROLES.index(caller.role) >= ROLES.index(need):
        return None
    return f"{command} requires role {need}; {caller.principal} has role {caller.role}"
