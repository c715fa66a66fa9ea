"""The gateway keys of supervised instances: one per instance, minted before it starts,
revoked once it is gone.

A supervisor whose instances are given a gateway URL (``SHOAL_GATEWAY_URL``, set by
:func:`shoal.ops.instances.instance_env` while a local gateway runs) mints each instance a
key bound to its fleet, agent, instance id and manifest (the fleet spec's, else the one the
agent's code declares) and hands it over in the child's environment only (``SHOAL_GATEWAY_KEY``
and ``OPENAI_API_KEY``; a process's environment is readable by its own user alone, never on
the command line, never logged). The key is revoked when the instance's process is reaped,
whatever ended it, and when the supervisor drains: an instance id never comes back, so a key
is never needed again. A kill switch on the instance (or its fleet) refuses the key's calls
at once, before the process is even reaped.

A supervisor that is SIGKILLed revokes nothing: its instances die with it (their secrets with
their environments) and the keys stay in the bucket, unrevoked, until ``shoal keys revoke``.
"""

from __future__ import annotations

import asyncio
import functools
import logging

from shoal.bus import Bus
from shoal.errors import ShoalError
from shoal.gateway.keys import KeyStore, gateway_env, key_id_of
from shoal.ops.instances import Launch
from shoal.schemas.manifest import CapabilityManifest

__all__ = ["GatewayKeyError", "InstanceKeys", "declared_manifest"]

log = logging.getLogger("shoal.supervisor")


class GatewayKeyError(ShoalError):
    """A gateway serves this host but the instance's key could not be minted."""


class InstanceKeys:
    """The keys a supervisor minted for its live instances (instance id -> key id)."""

    def __init__(self, bus: Bus, supervisor_id: str) -> None:
        self.bus = bus
        self.by = f"supervisor/{supervisor_id}"
        self.keys: dict[str, str] = {}
        self._pending: set[asyncio.Task[None]] = set()

    async def add(
        self, env: dict[str, str], launch: Launch, manifest: CapabilityManifest | None
    ) -> dict[str, str]:
        """``env`` plus a fresh key for ``launch``'s instance, when a gateway serves it."""
        url = env.get("SHOAL_GATEWAY_URL")
        if not url:
            return env
        if manifest is None:
            manifest = declared_manifest(launch.fleet, launch.agent, launch.target)
        try:
            extra = await asyncio.wait_for(
                gateway_env(
                    self.bus,
                    url,
                    fleet=launch.fleet,
                    agent=launch.agent,
                    instance=launch.instance,
                    manifest=manifest,
                    by=self.by,
                ),
                self.bus.settings.request_timeout,
            )
        except Exception as e:  # NATS away or slow: the instance must not start unpoliced
            raise GatewayKeyError(f"no gateway key: {e or type(e).__name__}") from e
        key_id = key_id_of(extra["SHOAL_GATEWAY_KEY"])
        assert key_id is not None  # gateway_env made it
        self.keys[launch.instance] = key_id
        return {**env, **extra}

    def revoke(self, instance: str | None) -> None:
        """Revoke ``instance``'s key in the background (reaping is synchronous)."""
        key_id = self.keys.pop(instance, None) if instance else None
        if key_id is None:
            return
        task = asyncio.get_running_loop().create_task(self._revoke(key_id))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def revoke_all(self) -> None:
        """Revoke every key still held and wait for the revocations in flight."""
        for instance in list(self.keys):
            self.revoke(instance)
        if self._pending:
            await asyncio.gather(*self._pending)

    async def _revoke(self, key_id: str) -> None:
        try:
            await asyncio.wait_for(
                KeyStore(self.bus).revoke(key_id, by=self.by), self.bus.settings.request_timeout
            )
        except Exception as e:  # logged: the key then stays valid until revoked by hand
            log.error("could not revoke gateway key %s: %s", key_id, e or type(e).__name__)


@functools.lru_cache(maxsize=256)
def declared_manifest(fleet: str, agent: str, target: str | None) -> CapabilityManifest:
    """The manifest ``target``'s code declares; an empty one (grants nothing) if it cannot
    be loaded here (the instance then cannot start either)."""
    from shoal.agents.serve import resolve_agent

    try:
        return resolve_agent(fleet, agent, target).manifest
    except ShoalError:
        return CapabilityManifest()
