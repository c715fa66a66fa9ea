"""The supervisor's view of the world: live in-memory copies of the four buckets it watches.

Desired fleet state, kill switches, presence heartbeats and slot leases are each mirrored by
a KV watch (:class:`KvMirror`); :class:`BucketMirrors` holds the four, re-reads them after a
reconnect or every ``resync_s``, and answers the questions a reconcile pass asks: what is
desired per agent, is this instance or fleet kill-switched, which supervisors are alive.
Every change of desired state or kill switches bumps :attr:`BucketMirrors.changes`, which a
pass in progress checks to give way to the newer state (preemption).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.js.kv import KeyValue
from pydantic import ValidationError

from shoal.bus import Bus, kill_key
from shoal.bus.kvmirror import KvMirror, MirrorEntry
from shoal.ops.slots import SUPERVISOR_KEY_PREFIX, SupervisorLease
from shoal.schemas import describe_validation_error
from shoal.schemas.fleet import DesiredAgent, FleetDesired

__all__ = ["BucketMirrors", "KvMirror", "MirrorEntry", "Want"]

log = logging.getLogger("shoal.supervisor")


@dataclass(frozen=True)
class Want:
    """What is desired of one agent of one fleet: its document, its spec, how many run."""

    doc: FleetDesired
    agent: DesiredAgent
    replicas: int


class BucketMirrors:
    """The four buckets a supervisor watches, mirrored, and the questions asked of them."""

    def __init__(self, bus: Bus, wake: Callable[[], None], resync_s: float) -> None:
        self.bus = bus
        self.resync_s = resync_s
        self.changes = 0  # desired-state and kill-switch changes seen (preemption)
        self._wake = wake
        self._synced_at = time.monotonic()
        self._reconnects = bus.nc.stats["reconnects"]
        self.leases_kv: KeyValue
        self.presence_kv: KeyValue
        self.fleets: KvMirror
        self.kills: KvMirror
        self.presence: KvMirror
        self.leases: KvMirror
        self._invalid: dict[str, int] = {}  # fleet → revision already reported invalid

    def _changed(self, _: str) -> None:
        self.changes += 1
        self._wake()

    def _lease_changed(self, _: str) -> None:
        self._wake()

    async def start(self, timeout: float) -> None:
        top = self.bus.topology
        self.leases_kv = await self.bus.kv(top.leases.name)
        self.presence_kv = await self.bus.kv(top.presence.name)
        self.fleets = KvMirror(await self.bus.kv(top.fleets.name), self._changed)
        self.kills = KvMirror(await self.bus.kv(top.kill.name), self._changed)
        self.presence = KvMirror(self.presence_kv)
        self.leases = KvMirror(self.leases_kv, self._lease_changed)
        for mirror in self.all():
            await mirror.start(timeout)

    def all(self) -> tuple[KvMirror, ...]:
        return (self.fleets, self.kills, self.presence, self.leases)

    async def stop(self) -> None:
        for mirror in self.all():
            await mirror.stop()

    def behind(self) -> None:
        """A watch was caught lagging: re-read every bucket on the next pass."""
        self._synced_at = -math.inf

    async def resync(self, timeout: float) -> None:
        """Re-read the buckets after a reconnect or every ``resync_s`` (raises if NATS is away)."""
        now = time.monotonic()
        reconnects = self.bus.nc.stats["reconnects"]
        # After a reconnect (a server restart) the watches can stall for a while: re-read at
        # once rather than act on a stale view (e.g. think every instance stopped heartbeating).
        if now - self._synced_at < self.resync_s and reconnects == self._reconnects:
            return
        self._synced_at, self._reconnects = now, reconnects
        self.fleets = await self.fleets.renewed(timeout)
        self.kills = await self.kills.renewed(timeout)
        self.presence = await self.presence.renewed(timeout)
        self.leases = await self.leases.renewed(timeout)
        self.changes += 1

    # -- questions ----------------------------------------------------------------------------
    def desired(self, fleets: frozenset[str] | None) -> dict[tuple[str, str], Want]:
        """What is desired per (fleet, agent), from every valid fleet document."""
        out: dict[tuple[str, str], Want] = {}
        for name, entry in self.fleets.entries.items():
            if fleets is not None and name not in fleets:
                continue
            try:
                doc = FleetDesired.model_validate_json(entry.value)
            except ValidationError as e:
                if self._invalid.get(name) != entry.revision:  # once per document, not per pass
                    self._invalid[name] = entry.revision
                    why = describe_validation_error(e)
                    log.error("fleet %s: desired state refused (%s); ignored", name, why)
                continue
            for agent, d in doc.agents.items():
                out[(name, agent)] = Want(doc, d, doc.replicas(agent))
        return out

    def killed(self, fleet: str, instance: str | None) -> str | None:
        """The kill key that stops an instance of ``fleet``, if any."""
        keys = [kill_key("all"), kill_key("fleet", fleet)]
        if instance:
            keys.append(kill_key("instance", instance))
        return next((k for k in keys if k in self.kills.entries), None)

    def supervisors(self, ttl: float, now: float) -> dict[str, SupervisorLease | None]:
        """Live supervisors (their key renewed within ``ttl``) and what they announce."""
        out: dict[str, SupervisorLease | None] = {}
        for key, entry in self.leases.entries.items():
            if not key.startswith(SUPERVISOR_KEY_PREFIX + ".") or not self.leases.fresh(
                key, ttl, now
            ):
                continue
            try:
                out[key.partition(".")[2]] = SupervisorLease.model_validate_json(entry.value)
            except ValidationError:
                out[key.partition(".")[2]] = None
        return out
