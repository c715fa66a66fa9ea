"""Credentials for agent instances: minted at launch, recorded, found again to revoke.

The supervisor asks for one user per instance, scoped by :func:`instance_permissions`, and
passes the creds file's *path* to the instance (``NATS_CREDS``); the secret is never on a
command line. Each issue is recorded beside the file (``<fleet>.<agent>.<instance>.json``:
the user's public key and when it was issued) so the warden can revoke an instance, a
fleet, or everything by name.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path

from shoal.auth.permissions import InstanceScope, instance_permissions
from shoal.auth.store import KeyStore
from shoal.bus import ShoalSettings

__all__ = ["InstanceIssuer", "IssuedInstance"]


@dataclass(frozen=True)
class IssuedInstance:
    """One instance's recorded credentials."""

    fleet: str
    agent: str
    instance: str
    public: str
    issued_at: int


class InstanceIssuer:
    """Mints and records instance credentials with one key store's account signing key."""

    def __init__(self, store: KeyStore, settings: ShoalSettings) -> None:
        self.store = store
        self.settings = settings
        self.home = store.home / "instances"

    def issue(
        self, scope: InstanceScope, *, role: str = "instance", path: Path | None = None
    ) -> Path:
        """Write the instance's creds (0600, at ``path`` if given) and its record."""
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        issued = self.store.issue(
            scope.user_name,
            instance_permissions(scope, self.settings),
            tags=(f"role:{role}", f"fleet:{scope.fleet}", f"agent:{scope.agent}"),
        )
        path = self.store.write_creds(issued, path or self.home / f"{scope.user_name}.creds")
        record = IssuedInstance(
            scope.fleet, scope.agent, scope.instance, issued.public, issued.issued_at
        )
        fd = os.open(
            self.home / f"{scope.user_name}.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600
        )
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record.__dict__))
        return path

    def issued(self, pattern: str = "*") -> list[IssuedInstance]:
        """Every instance issued credentials here (whose ``fleet.agent.instance`` matches
        the glob ``pattern``)."""
        out = []
        for path in sorted(self.home.glob(f"{pattern}.json")):
            try:
                out.append(IssuedInstance(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                continue
        return out

    def matching(self, scope: str, name: str | None) -> list[IssuedInstance]:
        """The instances a kill of ``scope``/``name`` covers (instance, fleet or all)."""
        # Names are subject tokens (no '.'); glob.escape keeps '[' or '?' literal.
        if scope == "all":
            return self.issued()
        exact = glob.escape(name or "")
        if scope == "instance":
            return [i for i in self.issued(f"*.*.{exact}") if i.instance == name]
        if scope == "fleet":
            return [i for i in self.issued(f"{exact}.*.*") if i.fleet == name]
        return []
