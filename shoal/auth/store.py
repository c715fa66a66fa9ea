"""The key store: operator, accounts and issued credentials under ``<data_dir>/auth/``.

Layout (directories 0700, files 0600)::

    auth/operator.seed  operator.jwt        the trust root (the server loads operator.jwt)
    auth/accounts/<NAME>.seed  .signer.seed  .jwt
                                            SYS (the system account) and one per tenant
    auth/creds/<name>.creds                 credentials issued to services and operators

The operator key signs account JWTs (so revocations, which live in the account JWT, need
it); each tenant account's *signing key* signs its users, so a supervisor can mint instance
credentials without holding the operator or account identity keys. Every write of an
account JWT happens under an exclusive file lock: two revocations at once both land.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shoal.auth.jwt import (
    KeyPair,
    Permissions,
    account_claims,
    creds_file,
    decode_claims,
    new_key,
    operator_claims,
    sign,
    user_claims,
)
from shoal.errors import StoreNotWritable

__all__ = ["DEFAULT_ACCOUNT", "SYSTEM_ACCOUNT", "Issued", "KeyStore"]

SYSTEM_ACCOUNT = "SYS"
DEFAULT_ACCOUNT = "SHOAL"


@dataclass(frozen=True)
class Issued:
    """Credentials just issued: the user's public key, its JWT, and the creds file text."""

    name: str
    public: str
    jwt: str
    creds: str
    issued_at: int


def _write_secret(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class KeyStore:
    """Keys and JWTs of one installation (the embedded server's, or an operator's)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.accounts_dir = home / "accounts"
        self.creds_dir = home / "creds"

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> KeyStore:
        return cls(data_dir.resolve() / "auth")

    # -- creation ---------------------------------------------------------------------------
    @property
    def exists(self) -> bool:
        return (self.home / "operator.jwt").is_file()

    def ensure(self, accounts: tuple[str, ...] = (DEFAULT_ACCOUNT,)) -> None:
        """Create the operator, the system account and ``accounts`` if missing (idempotent)."""
        try:
            for d in (self.home, self.accounts_dir, self.creds_dir):
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(d, 0o700)
        except OSError as e:
            raise StoreNotWritable(f"cannot create the key store {self.home}: {e}") from e
        with self._locked():
            operator = self._key("operator.seed", "operator")
            system = self._account_key(SYSTEM_ACCOUNT)
            if not (self.home / "operator.jwt").is_file():
                token = sign(operator_claims(operator, "shoal", system.public), operator)
                _write_secret(self.home / "operator.jwt", token)
            for name in (SYSTEM_ACCOUNT, *accounts):
                if not self._account_jwt_path(name).is_file():
                    self._write_account(name, {})

    def _key(self, filename: str, kind: str) -> KeyPair:
        path = self.home / filename
        if path.is_file():
            return KeyPair.from_seed(path.read_text().strip())
        key = new_key(kind)  # type: ignore[arg-type]
        _write_secret(path, key.seed + "\n")
        return key

    def _account_key(self, name: str) -> KeyPair:
        return self._key(f"accounts/{name}.seed", "account")

    def _signer(self, name: str) -> KeyPair:
        return self._key(f"accounts/{name}.signer.seed", "account")

    def _account_jwt_path(self, name: str) -> Path:
        return self.accounts_dir / f"{name}.jwt"

    def _write_account(self, name: str, revocations: dict[str, int]) -> str:
        account = self._account_key(name)
        signers = () if name == SYSTEM_ACCOUNT else (self._signer(name).public,)
        claims = account_claims(
            account,
            name,
            jetstream=name != SYSTEM_ACCOUNT,
            signing_keys=signers,
            revocations=revocations,
            **self.limits(name),
        )
        token = sign(claims, self.operator)
        _write_secret(self._account_jwt_path(name), token)
        return token

    def limits(self, name: str) -> dict[str, int]:
        """The account's JetStream limits (bytes, counts; -1 unlimited), as recorded."""
        path = self.accounts_dir / f"{name}.limits.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def add_account(self, name: str, **limits: int) -> str:
        """Create (or re-limit) a tenant account; return its signed JWT to push."""
        with self._locked():
            _write_secret(self.accounts_dir / f"{name}.limits.json", json.dumps(limits))
            existing = self._account_jwt_path(name).is_file()
            return self._write_account(name, self.revocations(name) if existing else {})

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.home / ".lock").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # -- reading ----------------------------------------------------------------------------
    @property
    def operator(self) -> KeyPair:
        return KeyPair.from_seed((self.home / "operator.seed").read_text().strip())

    @property
    def operator_jwt(self) -> str:
        return (self.home / "operator.jwt").read_text().strip()

    def account_public(self, name: str) -> str:
        return self._account_key(name).public

    def account_jwt(self, name: str) -> str:
        return self._account_jwt_path(name).read_text().strip()

    def account_names(self) -> list[str]:
        return sorted(p.stem for p in self.accounts_dir.glob("*.jwt"))

    def revocations(self, account: str = DEFAULT_ACCOUNT) -> dict[str, int]:
        claims = decode_claims(self.account_jwt(account))
        revoked = claims.get("nats", {}).get("revocations") or {}
        return {str(k): int(v) for k, v in revoked.items()}

    def creds_path(self, name: str) -> Path:
        return self.creds_dir / f"{name}.creds"

    # -- issuing and revoking ---------------------------------------------------------------
    def issue(
        self,
        name: str,
        permissions: Permissions | None,
        *,
        account: str = DEFAULT_ACCOUNT,
        expires_in_s: float = 0.0,
        tags: tuple[str, ...] = (),
    ) -> Issued:
        """New credentials (a fresh user key) for a user of ``account``; ``permissions``
        None grants everything the account may do."""
        user = new_key("user")
        if permissions is not None:
            permissions = permissions.for_user(user.public)
        if account == SYSTEM_ACCOUNT:
            issuer, issuer_account = self._account_key(account), self._account_key(account).public
        else:
            issuer, issuer_account = self._signer(account), self.account_public(account)
        now = int(time.time())
        expires = int(now + expires_in_s) if expires_in_s else 0
        claims = user_claims(
            user.public,
            name,
            account=issuer_account,
            permissions=permissions,
            expires=expires,
            tags=tags,
        )
        claims["iat"] = now
        if account == SYSTEM_ACCOUNT:
            claims["nats"].pop("issuer_account")
        token = sign(claims, issuer)
        return Issued(name, user.public, token, creds_file(token, user.seed), now)

    def write_creds(self, issued: Issued, path: Path | None = None) -> Path:
        """Save issued credentials (0600) under ``creds/`` or at ``path``."""
        path = path or self.creds_path(issued.name)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_secret(path, issued.creds)
        return path

    def revoke(self, publics: list[str], account: str = DEFAULT_ACCOUNT) -> str:
        """Add user keys to the account's revocation list; return the re-signed account JWT.

        A user is revoked for every JWT issued at or before the recorded time, so the
        credentials already handed out stop working while a later re-issue would not.
        """
        with self._locked():
            revoked = self.revocations(account)
            now = int(time.time())
            for public in publics:
                revoked[public] = now
            return self._write_account(account, revoked)
