"""NATS JWT v2: NKeys, signed claims (operator, account, user) and ``.creds`` files.

The encoding follows nats-io/jwt v2: a header ``{"typ":"JWT","alg":"ed25519-nkey"}``, the
claims as compact JSON, both base64url without padding, signed with the issuer's NKey over
``header.payload``. ``jti`` is the base32 (no padding) SHA-512/256 of the claims with an
empty ``jti``, as the Go library computes it. Only what shoal issues is modelled; the server
validates everything else.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Literal

import nkeys

__all__ = [
    "KeyPair",
    "Permissions",
    "account_claims",
    "creds_file",
    "decode_claims",
    "new_key",
    "operator_claims",
    "parse_creds",
    "sign",
    "user_claims",
]

KeyKind = Literal["operator", "account", "user"]
_PREFIX = {
    "operator": nkeys.PREFIX_BYTE_OPERATOR,
    "account": nkeys.PREFIX_BYTE_ACCOUNT,
    "user": nkeys.PREFIX_BYTE_USER,
}
_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}


@dataclass(frozen=True)
class KeyPair:
    """An NKey: its seed (the secret, ``S…``) and public key (``O…``, ``A…``, ``U…``)."""

    seed: str
    public: str

    @classmethod
    def from_seed(cls, seed: str) -> KeyPair:
        kp = nkeys.from_seed(seed.encode())
        return cls(seed, kp.public_key.decode())

    def sign(self, data: bytes) -> bytes:
        return bytes(nkeys.from_seed(self.seed.encode()).sign(data))


def new_key(kind: KeyKind) -> KeyPair:
    """A fresh NKey of ``kind`` from the OS's random source."""
    seed = nkeys.encode_seed(os.urandom(32), _PREFIX[kind]).decode()
    return KeyPair.from_seed(seed)


@dataclass(frozen=True)
class Permissions:
    """A user's publish/subscribe allow and deny lists (subjects, wildcards allowed)."""

    pub_allow: tuple[str, ...] = ()
    pub_deny: tuple[str, ...] = ()
    sub_allow: tuple[str, ...] = ()
    sub_deny: tuple[str, ...] = ()
    responses: int = 0
    """Replies this user may publish to requests it received (services), 0 for none."""

    def for_user(self, public: str) -> Permissions:
        """These permissions with ``{user}`` replaced by the user's public key."""

        def fill(subjects: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(x.replace("{user}", public) for x in subjects)

        return Permissions(
            fill(self.pub_allow),
            fill(self.pub_deny),
            fill(self.sub_allow),
            fill(self.sub_deny),
            self.responses,
        )

    def claims(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pub": {}, "sub": {}}
        for side, allow, deny in (
            ("pub", self.pub_allow, self.pub_deny),
            ("sub", self.sub_allow, self.sub_deny),
        ):
            if allow:
                out[side]["allow"] = list(allow)
            if deny:
                out[side]["deny"] = list(deny)
        if self.responses:
            out["resp"] = {"max": self.responses, "ttl": 0}
        return out


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def sign(claims: dict[str, Any], issuer: KeyPair) -> str:
    """Encode ``claims`` as a JWT issued (and signed) by ``issuer``; sets iss, iat, jti."""
    body = dict(claims, iss=issuer.public, iat=claims.get("iat") or int(time.time()))
    body.pop("jti", None)
    # jti hashes the standard claims (Go's ClaimsData field order) with jti empty.
    standard = {
        k: body[k] for k in ("aud", "exp", "iat", "iss", "name", "nbf", "sub") if body.get(k)
    }
    digest = hashlib.new("sha512_256", _compact(standard)).digest()
    body = {"jti": base64.b32encode(digest).rstrip(b"=").decode(), **body}
    head_and_body = f"{_b64(_compact(_HEADER))}.{_b64(_compact(body))}"
    return f"{head_and_body}.{_b64(issuer.sign(head_and_body.encode()))}"


def decode_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified (shoal reads back only what it issued itself)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError) as e:
        raise ValueError(f"not a JWT: {e}") from e
    if not isinstance(claims, dict):
        raise ValueError("not a JWT: claims are not an object")
    return claims


def operator_claims(operator: KeyPair, name: str, system_account: str) -> dict[str, Any]:
    """A self-signed operator naming its system account."""
    return {
        "name": name,
        "sub": operator.public,
        "nats": {"system_account": system_account, "type": "operator", "version": 2},
    }


def account_claims(
    account: KeyPair,
    name: str,
    *,
    jetstream: bool,
    signing_keys: tuple[str, ...] = (),
    revocations: dict[str, int] | None = None,
    disk_bytes: int = -1,
    mem_bytes: int = -1,
    streams: int = -1,
    consumers: int = -1,
) -> dict[str, Any]:
    """An account; JetStream limits apply when ``jetstream`` (-1 means unlimited)."""
    limits: dict[str, Any] = {
        "subs": -1,
        "data": -1,
        "payload": -1,
        "imports": -1,
        "exports": -1,
        "wildcards": True,
        "conn": -1,
        "leaf": -1,
    }
    if jetstream:
        limits.update(
            mem_storage=mem_bytes, disk_storage=disk_bytes, streams=streams, consumer=consumers
        )
    nats: dict[str, Any] = {"limits": limits, "type": "account", "version": 2}
    if signing_keys:
        nats["signing_keys"] = list(signing_keys)
    if revocations:
        nats["revocations"] = dict(sorted(revocations.items()))
    return {"name": name, "sub": account.public, "nats": nats}


def user_claims(
    user: str,
    name: str,
    *,
    account: str,
    permissions: Permissions | None,
    expires: int = 0,
    tags: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A user of ``account`` (its public key) with ``permissions`` (None: everything)."""
    nats: dict[str, Any] = {
        **(permissions.claims() if permissions else {"pub": {}, "sub": {}}),
        "subs": -1,
        "data": -1,
        "payload": -1,
        "issuer_account": account,
        "type": "user",
        "version": 2,
    }
    if tags:
        nats["tags"] = list(tags)
    claims: dict[str, Any] = {"name": name, "sub": user, "nats": nats}
    if expires:
        claims["exp"] = expires
    return claims


def creds_file(user_jwt: str, user_seed: str) -> str:
    """The ``.creds`` text every NATS client reads (``nats --creds``, ``NATS_CREDS``)."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user_seed}\n"
        "------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )


def parse_creds(text: str) -> tuple[str, str]:
    """(user JWT, seed) of a ``.creds`` text; ValueError if it is not one."""
    blocks = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.startswith(("-", "*", "NKEY"))
    ]
    token = next((b for b in blocks if b.count(".") == 2), None)
    seed = next((b for b in blocks if b.startswith("SU")), None)
    if token is None or seed is None:
        raise ValueError("not a NATS credentials file (no user JWT and seed)")
    return token, seed
