"""Library side of ``shoal auth``: operator and enrollment credentials, revocation, warden.

Operator credentials carry a role (``viewer``, ``operator``, ``admin``) as broker
permissions (the server refuses what the role does not allow) and as a ``role:`` tag the
CLI reads to refuse early, naming the missing role. Enrollment credentials let one
instance of a fleet's agent run outside a supervisor (``shoal agent run --creds …``).
Everything issued is recorded, can be listed, and revoked: revocation re-signs the account
JWT and pushes it to the server, which disconnects the user at once.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from nats.aio.client import Client as NATS

from shoal.auth import (
    DEFAULT_ACCOUNT,
    LOCAL_ADMIN,
    ROLES,
    SERVICES,
    SYSTEM_ACCOUNT,
    SYSTEM_USER,
    InstanceScope,
    KeyStore,
    Role,
    bootstrap,
    operator_block,
    role_permissions,
)
from shoal.auth.issuer import InstanceIssuer
from shoal.auth.warden import Warden, push_account
from shoal.bus import ShoalSettings, check_token, open_connection
from shoal.errors import NotFound, Refused
from shoal.ops.connect import open_bus, resolve_url
from shoal.ops.instances import instance_scope
from shoal.schemas import new_id

__all__ = [
    "Credential",
    "add_operator",
    "enroll",
    "list_credentials",
    "revoke",
    "run_warden",
    "system_connection",
]


@dataclass(frozen=True)
class Credential:
    """One issued credential as ``shoal auth ls`` shows it (never the secret)."""

    name: str
    kind: str
    role: str
    public: str
    issued_at: int
    revoked: bool
    path: str


def _store(settings: ShoalSettings) -> KeyStore:
    store = KeyStore.for_data_dir(settings.data_dir)
    if not store.exists:
        raise Refused(
            f"no key store in {settings.data_dir}: credentials are issued where the embedded "
            "server's keys live (run 'shoal up' there first)"
        )
    return store


def _record(path: Path, value: dict[str, object]) -> None:
    _record_text(path, json.dumps(value))


def add_operator(settings: ShoalSettings, name: str, role: Role, out: Path | None) -> Credential:
    """Issue credentials for a human (or script) acting with ``role``."""
    if role not in ROLES:
        raise Refused(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    name = check_token(name, "name")
    store = _store(settings)
    home = store.home / "operators"
    home.mkdir(mode=0o700, exist_ok=True)
    if (home / f"{name}.json").exists():
        raise Refused(f"credentials named {name!r} exist: revoke them or pick another name")
    issued = store.issue(
        name,
        role_permissions(role, settings, name),
        tags=(f"role:{role}", f"principal:{name}"),
    )
    path = store.write_creds(issued, out or home / f"{name}.creds")
    cred = Credential(name, "operator", role, issued.public, issued.issued_at, False, str(path))
    _record(home / f"{name}.json", asdict(cred))
    return cred


def enroll(
    settings: ShoalSettings,
    fleet: str,
    agent: str,
    target: str | None,
    instance: str | None,
    out: Path | None,
    capabilities: tuple[str, ...] = (),
    delegates: tuple[str, ...] = (),
) -> Credential:
    """Credentials for one instance run by hand: ``shoal agent run FLEET AGENT --instance``.

    Its rights come from the agent's declaration (``target``, or the demo fleet), or, for a
    worker that is not a shoal agent (any language), from the ``capabilities`` it serves
    and the ones it may ``delegates`` to.
    """
    store = _store(settings)
    instance = check_token(instance or new_id(), "instance")
    if capabilities:
        for name in (*capabilities, *delegates):
            check_token(name, "capability")
        scope = InstanceScope(fleet, agent, instance, capabilities, delegates)
    else:
        scope = instance_scope(fleet, agent, target, instance)
    path = InstanceIssuer(store, settings).issue(scope, role="enrolled", path=out)
    record = next(
        i for i in InstanceIssuer(store, settings).issued() if i.instance == scope.instance
    )
    return Credential(
        scope.user_name, "instance", "enrolled", record.public, record.issued_at, False, str(path)
    )


def list_credentials(settings: ShoalSettings) -> list[Credential]:
    """Operators and instances issued here, revoked or not."""
    store = _store(settings)
    revoked = store.revocations()
    out = []
    for path in sorted((store.home / "operators").glob("*.json")):
        cred = Credential(**json.loads(path.read_text()))
        out.append(Credential(**{**asdict(cred), "revoked": cred.public in revoked}))
    for i in InstanceIssuer(store, settings).issued():
        name = f"{i.fleet}.{i.agent}.{i.instance}"
        path = store.home / "instances" / f"{name}.creds"
        out.append(
            Credential(
                name, "instance", "instance", i.public, i.issued_at, i.public in revoked, str(path)
            )
        )
    return out


@asynccontextmanager
async def system_connection(settings: ShoalSettings) -> AsyncIterator[NATS]:
    """A connection as the system-account user (to push account updates)."""
    store = _store(settings)
    sys_settings = settings.model_copy(update={"creds": store.creds_path(SYSTEM_USER)})
    nc = await open_connection(resolve_url(settings, start=False), sys_settings, name="shoal-sys")
    try:
        yield nc
    finally:
        await nc.close()


async def revoke(settings: ShoalSettings, name: str) -> Credential:
    """Revoke the named credentials: the server disconnects and refuses them from now on."""
    found = [c for c in list_credentials(settings) if c.name == name or c.public == name]
    if not found:
        raise NotFound(f"no credentials named {name!r} (see 'shoal auth ls')")
    cred = found[0]
    store = _store(settings)
    token = await asyncio.to_thread(store.revoke, [cred.public])
    async with system_connection(settings) as nc:
        await push_account(nc, token, settings.request_timeout)
    return Credential(**{**asdict(cred), "revoked": True})


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``512M``, ``2G``, ``1048576`` or ``-1`` (unlimited) as bytes; Refused naming it."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (t[:-1], t[-1]) if t and t[-1] in _UNITS else (t, "")
    try:
        value = int(number)
    except ValueError:
        raise Refused(f"{text!r} is not a size (e.g. 512M, 2G, -1 for unlimited)") from None
    return -1 if value < 0 else value * _UNITS[unit]


async def add_tenant(
    settings: ShoalSettings, name: str, *, disk: int, memory: int, streams: int
) -> Credential:
    """A tenant: its own NATS account (own subjects, streams and buckets, nothing shared
    with other tenants) with its own JetStream limits, and an admin's credentials for it."""
    name = check_token(name, "tenant")
    if name in (SYSTEM_ACCOUNT, DEFAULT_ACCOUNT):
        raise Refused(f"{name} is a reserved account name")
    store = _store(settings)
    token = store.add_account(
        name, disk_bytes=disk, mem_bytes=memory, streams=streams, consumers=-1
    )
    async with system_connection(settings) as nc:
        await push_account(nc, token, settings.request_timeout)
    issued = store.issue(f"{name}-admin", None, account=name, tags=("role:admin", f"tenant:{name}"))
    home = store.home / "tenants"
    home.mkdir(mode=0o700, exist_ok=True)
    path = store.write_creds(issued, home / f"{name}-admin.creds")
    return Credential(
        issued.name, "tenant", "admin", issued.public, issued.issued_at, False, str(path)
    )


def export_cluster(settings: ShoalSettings, out: Path) -> list[Path]:
    """What a multi-node deployment (docker-compose.yml) mounts: ``auth.conf`` for every
    nats-server (``include`` it; resolver directory ``/data/accounts``) and the services'
    and local admin's creds, all 0600 in 0700 directories."""
    store = bootstrap(settings)
    (out / "creds").mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    written = [out / "auth.conf"]
    _record_text(written[0], operator_block(store, Path("/data/accounts")))
    for name in (*SERVICES, LOCAL_ADMIN, SYSTEM_USER):
        target = out / "creds" / f"{name}.creds"
        _record_text(target, store.creds_path(name).read_text())
        written.append(target)
    return written


def _record_text(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


async def run_warden(
    settings: ShoalSettings, stop: asyncio.Event, ready: asyncio.Event | None = None
) -> int:
    """Follow the kill bucket and revoke what it kills until ``stop``; return how many."""
    store = _store(settings)
    async with (
        open_bus(settings, start=False, name="shoal-warden") as bus,
        system_connection(settings) as nc,
    ):
        warden = Warden(bus, nc, store)
        await warden.run(stop, ready)
        return warden.revoked
