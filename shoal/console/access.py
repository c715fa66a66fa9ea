"""Who is signed in to the console, and what they may do.

The console signs operators in with a token. :class:`Authenticator` is the one interface the
app uses, so the identity work (NATS JWT credentials with the roles ``viewer``, ``operator``,
``admin``) can replace :class:`KVTokenStore` without touching a page.

:class:`KVTokenStore` keeps tokens in a JetStream KV bucket (``<P>_console_tokens``): the key
is the SHA-256 of the token (the token itself is shown once, at creation, and stored
nowhere), the value the principal and role. Sign-in sessions live in a second bucket
(``<P>_console_sessions``, keys expire with the bucket's TTL) under the SHA-256 of the
session cookie, with that session's CSRF token, so any replica of the console recognises a
cookie another replica issued and nothing that matters lives in a process.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict

from shoal.bus import Bus
from shoal.bus.streams import BucketSpec
from shoal.errors import NotFound, Refused
from shoal.schemas import is_token, utcnow

__all__ = [
    "ROLES",
    "Authenticator",
    "KVTokenStore",
    "Principal",
    "Role",
    "SignIn",
    "SignInStore",
    "TokenRecord",
    "console_buckets",
    "csrf_matches",
]

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
_RANK = {role: i for i, role in enumerate(ROLES)}


@dataclass(frozen=True)
class Principal:
    """A signed-in person or service and the role their credentials carry."""

    name: str
    role: Role
    credential: str = ""
    """An id of the credential signed in with (the token's hash), to check it still holds."""

    def may(self, role: Role) -> bool:
        """True when this principal's role is ``role`` or above (admin ⊇ operator ⊇ viewer)."""
        return _RANK[self.role] >= _RANK[role]

    @property
    def can_act(self) -> bool:
        """Operators and admins act (kill, scale…); viewers only see."""
        return self.may("operator")


class Authenticator(Protocol):
    """Turns the credential typed on the sign-in page into a principal, or refuses it."""

    async def authenticate(self, credential: str) -> Principal | None: ...

    async def still_valid(self, who: Principal) -> bool:
        """False once the credential ``who`` signed in with is revoked."""
        ...


class TokenRecord(BaseModel):
    """What the token bucket holds under a token's hash."""

    model_config = ConfigDict(extra="ignore")
    principal: str
    role: Role
    created_at: datetime
    created_by: str
    note: str = ""


class SignIn(BaseModel):
    """One browser's sign-in: who, and the CSRF token its forms must carry."""

    model_config = ConfigDict(extra="ignore")
    principal: str
    role: Role
    csrf: str
    at: datetime
    credential: str = ""

    @property
    def who(self) -> Principal:
        return Principal(self.principal, self.role, self.credential)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def console_buckets(bus: Bus, session_ttl_s: float) -> tuple[BucketSpec, BucketSpec]:
    """The console's two buckets for the bus's prefix: tokens, and sign-ins (with a TTL)."""
    p, r = bus.settings.stream_prefix, bus.settings.stream_replicas
    return (
        BucketSpec(f"{p}_console_tokens", replicas=r, description="Console tokens (hashed)"),
        BucketSpec(
            f"{p}_console_sessions",
            ttl_s=session_ttl_s,
            replicas=r,
            description="Console sign-ins (hashed cookies)",
        ),
    )


async def _bucket(bus: Bus, spec: BucketSpec) -> KeyValue:
    try:
        return await bus.kv(spec.name)
    except BucketNotFoundError:
        return await bus.js.create_key_value(spec.config())


class KVTokenStore:
    """Role-bearing operator tokens in a KV bucket, hashed (the :class:`Authenticator`)."""

    def __init__(self, bus: Bus, spec: BucketSpec) -> None:
        self.bus = bus
        self.spec = spec

    async def create(
        self, principal: str, role: Role, *, by: str, note: str = ""
    ) -> tuple[str, TokenRecord]:
        """A new token for ``principal`` with ``role``: the token (shown once) and its record."""
        if not is_token(principal):
            raise Refused(f"principal {principal!r} is not a valid name (no '.', '*', '>', spaces)")
        if role not in ROLES:
            raise Refused(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        token = "shoal_" + secrets.token_urlsafe(32)
        record = TokenRecord(principal=principal, role=role, created_at=utcnow(), created_by=by)
        record = record.model_copy(update={"note": note})
        kv = await _bucket(self.bus, self.spec)
        await kv.create(_digest(token), record.model_dump_json().encode())
        return token, record

    async def authenticate(self, credential: str) -> Principal | None:
        kv = await _bucket(self.bus, self.spec)
        key = _digest(credential.strip())
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return None
        record = TokenRecord.model_validate_json(entry.value or b"{}")
        return Principal(record.principal, record.role, key)

    async def still_valid(self, who: Principal) -> bool:
        if not who.credential:
            return False
        kv = await _bucket(self.bus, self.spec)
        try:
            entry = await kv.get(who.credential)
        except KeyNotFoundError:
            return False
        return bool(entry.value)

    @classmethod
    def for_bus(cls, bus: Bus) -> KVTokenStore:
        """The token store of the bus's prefix."""
        return cls(bus, console_buckets(bus, 1.0)[0])

    async def revoke_principal(self, principal: str) -> int:
        """Delete every token of ``principal``; how many there were (:class:`NotFound` if 0)."""
        kv = await _bucket(self.bus, self.spec)
        removed = 0
        for key, record in await self._records(kv):
            if record.principal == principal:
                await kv.delete(key)
                removed += 1
        if not removed:
            raise NotFound(f"no console token belongs to {principal!r}")
        return removed

    async def records(self) -> list[TokenRecord]:
        """Every token's record (never the token), oldest first."""
        kv = await _bucket(self.bus, self.spec)
        return sorted((r for _, r in await self._records(kv)), key=lambda r: r.created_at)

    async def _records(self, kv: KeyValue) -> list[tuple[str, TokenRecord]]:
        try:
            keys = await kv.keys()
        except Exception:  # nats-py raises NoKeysError on an empty bucket
            return []
        out = []
        for key in keys:
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                continue
            out.append((key, TokenRecord.model_validate_json(entry.value or b"{}")))
        return out


class SignInStore:
    """Browser sign-ins in a KV bucket with a TTL, keyed by the cookie's hash."""

    def __init__(self, bus: Bus, spec: BucketSpec, authenticator: Authenticator) -> None:
        self.bus = bus
        self.spec = spec
        self.authenticator = authenticator

    async def open(self, who: Principal) -> tuple[str, SignIn]:
        """A new sign-in: the cookie value (only the browser keeps it) and the record."""
        cookie = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(24)
        record = SignIn(
            principal=who.name, role=who.role, csrf=csrf, at=utcnow(), credential=who.credential
        )
        kv = await _bucket(self.bus, self.spec)
        await kv.put(_digest(cookie), record.model_dump_json().encode())
        return cookie, record

    async def find(self, cookie: str | None) -> SignIn | None:
        if not cookie:
            return None
        kv = await _bucket(self.bus, self.spec)
        try:
            entry = await kv.get(_digest(cookie))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        sign_in = SignIn.model_validate_json(entry.value)
        # A revoked token ends its sign-ins at once, on every replica.
        if not await self.authenticator.still_valid(sign_in.who):
            await kv.purge(entry.key)
            return None
        return sign_in

    async def close(self, cookie: str) -> None:
        kv = await _bucket(self.bus, self.spec)
        await kv.purge(_digest(cookie))


def csrf_matches(sign_in: SignIn, given: str | None) -> bool:
    """Constant-time check of a form's CSRF token against the sign-in's."""
    return bool(given) and hmac.compare_digest(sign_in.csrf, given or "")
