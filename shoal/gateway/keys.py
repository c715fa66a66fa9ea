"""Gateway keys: the bearer secrets agents present, bound to a fleet/agent/instance/principal.

A key's secret is ``sk-shoal-<id>-<random>``; the keys bucket holds only its SHA-256 (and
the binding, limits and grants), under the key's id. The gateway keeps a mirror of the bucket
(a KV watch, as the kill switches are followed), so checking a key is a dict lookup and a
hash compare; a key created after the mirror loaded is fetched once on first use.

A key is static until the identity issue lands: then the same record binds to a NATS user
(its public NKey instead of a secret hash) and nothing else here changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
from datetime import datetime
from decimal import Decimal

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import BaseModel, ConfigDict, Field

from shoal.bus import Bus, check_token
from shoal.errors import Refused
from shoal.schemas import new_id, utcnow
from shoal.schemas.manifest import CapabilityManifest

__all__ = ["KeyMirror", "KeyStore", "VirtualKey", "gateway_env", "hash_secret", "key_id_of"]

log = logging.getLogger(__name__)

SECRET_PREFIX = "sk-shoal-"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def key_id_of(secret: str) -> str | None:
    """The key id inside a secret, or None when it is not a shoal key."""
    if not secret.startswith(SECRET_PREFIX):
        return None
    key_id, sep, rest = secret.removeprefix(SECRET_PREFIX).partition("-")
    return key_id if sep and rest and key_id.isalnum() else None


class VirtualKey(BaseModel):
    """One gateway key: who it speaks for, what it may use and spend."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    id: str
    secret_sha256: str
    fleet: str
    agent: str
    instance: str | None = None
    principal: str | None = None
    budget_usd: Decimal | None = Field(default=None, ge=0)
    rpm: int | None = Field(default=None, ge=1)
    manifest: CapabilityManifest = Field(default_factory=CapabilityManifest)
    created_by: str = ""
    created_at: datetime | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = None

    @property
    def caller_instance(self) -> str:
        """The instance a call is attributed to: the bound one, else the key itself."""
        return self.instance or f"key-{self.id}"

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(self.secret_sha256, hash_secret(secret))

    def public(self) -> dict[str, object]:
        """The record without its hash, for listings."""
        return self.model_dump(mode="json", exclude={"secret_sha256"})


class KeyStore:
    """Create, list and revoke keys in the keys bucket (the CLI's side)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def _kv(self) -> KeyValue:
        return await self.bus.kv(self.bus.topology.keys.name)

    async def create(
        self,
        *,
        fleet: str,
        agent: str,
        by: str,
        instance: str | None = None,
        principal: str | None = None,
        budget_usd: Decimal | None = None,
        rpm: int | None = None,
        manifest: CapabilityManifest | None = None,
    ) -> tuple[VirtualKey, str]:
        """A new key and its secret (shown once; only its hash is stored)."""
        check_token(fleet, "fleet")
        check_token(agent, "agent")
        if instance is not None:
            check_token(instance, "instance")
        if principal is not None:
            check_token(principal, "principal")
        key_id = new_id()
        secret = f"{SECRET_PREFIX}{key_id}-{secrets.token_urlsafe(32)}"
        key = VirtualKey(
            id=key_id,
            secret_sha256=hash_secret(secret),
            fleet=fleet,
            agent=agent,
            instance=instance,
            principal=principal,
            budget_usd=budget_usd,
            rpm=rpm,
            manifest=manifest or CapabilityManifest(),
            created_by=by,
            created_at=utcnow(),
        )
        await (await self._kv()).create(key_id, key.model_dump_json().encode())
        return key, secret

    async def get(self, key_id: str) -> VirtualKey | None:
        try:
            entry = await (await self._kv()).get(key_id)
        except KeyNotFoundError:
            return None
        return VirtualKey.model_validate_json(entry.value or b"{}")

    async def list(self) -> list[VirtualKey]:
        kv = await self._kv()
        try:
            names = await kv.keys()
        except Exception as e:  # nats-py raises NoKeysError (a plain Error) on an empty bucket
            if type(e).__name__ == "NoKeysError":
                return []
            raise
        found = [await self.get(name) for name in names]
        return sorted((k for k in found if k is not None), key=lambda k: k.id)

    async def revoke(self, key_id: str, *, by: str) -> VirtualKey:
        """Mark a key revoked (kept for the audit); refuse an unknown id."""
        kv = await self._kv()
        try:
            entry = await kv.get(key_id)
        except KeyNotFoundError:
            raise Refused(f"no gateway key {key_id!r}") from None
        key = VirtualKey.model_validate_json(entry.value or b"{}")
        if key.revoked_at is not None:
            return key
        key = key.model_copy(update={"revoked_at": utcnow(), "revoked_by": by})
        await kv.update(key_id, key.model_dump_json().encode(), last=entry.revision)
        return key


class KeyMirror:
    """The keys bucket in memory, kept current by a KV watch (the gateway's side).

    As :class:`~shoal.agents.killswitch.KillWatcher` does, a guard notices every reconnect
    and loads the bucket again through a fresh watch (nats-py would recover the old one only
    after its missed heartbeats, ~17 s: too late for a revocation), swapping it in whole.
    """

    def __init__(self, bus: Bus, check_interval_s: float = 0.25) -> None:
        self.bus = bus
        self.keys: dict[str, VirtualKey] = {}
        self.check_interval_s = check_interval_s
        self.reloads = 0
        self._store = KeyStore(bus)
        self._generation = 0
        self._reconnects = 0
        self._task: asyncio.Task[None] | None = None
        self._guard: asyncio.Task[None] | None = None
        self._watcher: KeyValue.KeyWatcher | None = None

    async def start(self, timeout: float = 5.0) -> None:
        await self._watch(timeout)
        self._guard = asyncio.create_task(self._guard_loop(timeout), name="key-guard")

    async def stop(self) -> None:
        for task in (self._guard, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await _stop(self._watcher)

    async def authenticate(self, secret: str) -> VirtualKey | None:
        """The key this secret opens, or None (unknown, wrong secret)."""
        key_id = key_id_of(secret)
        if key_id is None:
            return None
        key = self.keys.get(key_id)
        if key is None:  # created after the mirror loaded; the watch will catch up
            key = await self._store.get(key_id)
            if key is not None:
                self.keys.setdefault(key_id, key)
        return key if key is not None and key.matches(secret) else None

    async def _watch(self, timeout: float) -> None:
        self._reconnects = self.bus.nc.stats["reconnects"]
        kv = await self.bus.kv(self.bus.topology.keys.name)
        watcher = await kv.watchall()
        self._generation += 1
        fresh: dict[str, VirtualKey] = {}
        loaded = asyncio.Event()
        task = asyncio.create_task(
            self._follow(watcher, self._generation, fresh, loaded), name="key-mirror"
        )
        try:
            await asyncio.wait_for(loaded.wait(), timeout)
        except BaseException:
            task.cancel()
            await _stop(watcher)
            raise
        old_task, old_watcher = self._task, self._watcher
        self._task, self._watcher = task, watcher
        if old_task is not None:
            old_task.cancel()
        await _stop(old_watcher)

    async def _guard_loop(self, timeout: float) -> None:
        while True:
            await asyncio.sleep(self.check_interval_s)
            nc = self.bus.nc
            if nc.stats["reconnects"] == self._reconnects or not nc.is_connected:
                continue
            try:
                await self._watch(timeout)
                self.reloads += 1
            except Exception as e:  # the server may still be starting: next turn
                log.warning("gateway keys not reloaded after a reconnect yet: %s", e)

    async def _follow(
        self,
        watcher: KeyValue.KeyWatcher,
        generation: int,
        fresh: dict[str, VirtualKey],
        loaded: asyncio.Event,
    ) -> None:
        target = fresh  # the initial values go to a new dict, swapped in once complete
        async for entry in watcher:
            if generation != self._generation:
                return  # a newer watch took over
            if entry is not None:
                _apply(target, entry)
            if not loaded.is_set() and (entry is None or entry.delta == 0):
                self.keys = target = fresh
                loaded.set()


def _apply(keys: dict[str, VirtualKey], entry: KeyValue.Entry) -> None:
    if entry.operation in (KV_DEL, KV_PURGE):
        keys.pop(entry.key, None)
        return
    try:
        keys[entry.key] = VirtualKey.model_validate_json(entry.value or b"{}")
    except ValueError as e:
        # Fail closed: an unreadable record opens nothing.
        log.warning("gateway key %s has an invalid record: %s", entry.key, e)
        keys.pop(entry.key, None)


async def _stop(watcher: KeyValue.KeyWatcher | None) -> None:
    if watcher is not None:
        with contextlib.suppress(Exception):
            await watcher.stop()  # type: ignore[no-untyped-call]


async def gateway_env(
    bus: Bus,
    gateway_url: str,
    *,
    fleet: str,
    agent: str,
    instance: str,
    manifest: CapabilityManifest,
    by: str,
) -> dict[str, str]:
    """A fresh key bound to one instance, as the environment its process starts with.

    ``SHOAL_GATEWAY_*`` switch the SDK's ``ctx.model`` to the gateway; ``OPENAI_*`` point any
    OpenAI-compatible framework inside the instance at it too. (The environment of a
    process is readable by its own user only; the secret is written nowhere else.)
    """
    _, secret = await KeyStore(bus).create(
        fleet=fleet, agent=agent, instance=instance, manifest=manifest, by=by
    )
    return {
        "SHOAL_GATEWAY_URL": gateway_url,
        "SHOAL_GATEWAY_KEY": secret,
        "OPENAI_BASE_URL": gateway_url,
        "OPENAI_API_KEY": secret,
    }
