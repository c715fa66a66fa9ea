"""Slot leases a supervisor holds: claim, renew, lose, release, and its own announcement.

A free slot is claimed with KV *create* (fails if another supervisor holds it) and kept with
*update(last revision)* every ``lease_ttl_s / 3``; a lease not renewed expires with the
bucket's TTL and another supervisor takes the slot over. A supervisor never runs an instance
in a slot whose lease it lost (fencing: the instance is stopped at once).

How many slots one supervisor claims is the smaller of its capacity (what its host can run,
:mod:`shoal.ops.capacity`) and its fair share: the slots not held by full supervisors,
divided among the live supervisors that still have room. Slots are claimed index by index
across agents (slot 0 of every agent, then slot 1, ...), so a capacity smaller than the
fleet still runs every agent once before any agent twice.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING

from nats.js.errors import KeyWrongLastSequenceError

from shoal.bus import lease_key
from shoal.ops.launcher import stop_instance
from shoal.ops.mirrors import BucketMirrors, Want
from shoal.ops.slots import HeldSlot, SlotLease, SupervisorLease, supervisor_key
from shoal.schemas import utcnow

if TYPE_CHECKING:
    from shoal.ops.capacity import Capacity
    from shoal.ops.supervisor import SupervisorOptions

__all__ = ["SlotLeases"]

log = logging.getLogger("shoal.supervisor")


class SlotLeases:
    """The leases this supervisor holds (``held``) and the processes of lost ones (``orphans``)."""

    def __init__(
        self,
        mirrors: BucketMirrors,
        supervisor_id: str,
        host: str,
        lease_ttl_s: float,
        options: SupervisorOptions,
        capacity: Capacity,
    ) -> None:
        self.mirrors = mirrors
        self.id = supervisor_id
        self.host = host
        self.ttl = lease_ttl_s
        self.options = options
        self.capacity = capacity
        self.held: dict[str, HeldSlot] = {}
        self.orphans: list[HeldSlot] = []  # lost leases whose processes are being stopped
        self._announced_at = -math.inf
        self._announced_held = -1

    # -- the supervisor's own key -----------------------------------------------------------
    async def announce(self, now: float) -> None:
        """Renew ``_supervisor.<id>`` (every ``ttl / 3``, and whenever ``held`` changed)."""
        fresh = now - self._announced_at < self.ttl / 3
        if fresh and self._announced_held == len(self.held):
            return
        body = SupervisorLease(
            host=self.host,
            pid=os.getpid(),
            capacity=self.capacity.instances,
            capacity_source=self.capacity.source,
            held=len(self.held),
            fleets=sorted(self.options.fleets) if self.options.fleets is not None else None,
        )
        try:
            await self.mirrors.leases_kv.put(
                supervisor_key(self.id), body.model_dump_json().encode()
            )
        except Exception as e:  # keep managing local processes while NATS is away
            log.warning("cannot announce supervisor %s: %s", self.id, e or type(e).__name__)
            return
        self._announced_at, self._announced_held = now, len(self.held)

    # -- held slots -------------------------------------------------------------------------
    def body(self, slot: HeldSlot) -> bytes:
        """The lease value of ``slot``: who holds it and what runs there, in what state."""
        return (
            SlotLease(
                supervisor=self.id,
                host=self.host,
                instance=slot.instance,
                renewed_at=utcnow(),
                state=slot.state,
                version=slot.version,
                run=slot.run,
                pid=slot.proc.pid if slot.proc is not None else None,
                restarts=slot.restarts,
                exit_code=slot.exit_code,
                message=slot.message,
            )
            .model_dump_json()
            .encode()
        )

    async def renew(self, now: float, only_dirty: bool = False) -> None:
        """Rewrite leases due (or changed): compare-and-set on the last revision."""
        period = self.ttl / 3
        for slot in list(self.held.values()):
            if not slot.dirty and (only_dirty or now - slot.renewed_at < period):
                continue
            try:
                slot.revision = await self.mirrors.leases_kv.update(
                    slot.key, self.body(slot), last=slot.revision
                )
                slot.renewed_at, slot.dirty = now, False
            except KeyWrongLastSequenceError:
                self.lose(slot, now, "lease taken over by another supervisor")
            except Exception as e:  # NATS unreachable: keep trying until the lease would expire
                if now - slot.renewed_at > self.ttl:
                    self.lose(slot, now, f"lease not renewed in time ({e or type(e).__name__})")

    def lose(self, slot: HeldSlot, now: float, why: str) -> None:
        # Fencing: another supervisor may start this slot now, so ours must stop at once.
        log.error("%s: %s; stopping %s", slot.key, why, slot.instance)
        self.held.pop(slot.key, None)
        if slot.alive:
            stop_instance(slot, "lost", now, self.options.kill_grace_s)
            self.orphans.append(slot)

    async def release(self, slot: HeldSlot) -> None:
        """Give the slot up (its process is gone): delete the lease, forget the slot."""
        with contextlib.suppress(Exception):
            await self.mirrors.leases_kv.delete(slot.key, last=slot.revision)
        self.held.pop(slot.key, None)
        log.info("%s: released", slot.key)

    async def release_all(self) -> None:
        """At shutdown: every lease and the supervisor's own key, so others take over now."""
        with contextlib.suppress(Exception):
            for slot in list(self.held.values()):
                await self.mirrors.leases_kv.delete(slot.key, last=slot.revision)
            await self.mirrors.leases_kv.delete(supervisor_key(self.id))
        self.held.clear()

    # -- claiming ---------------------------------------------------------------------------
    def limit(self, desired: dict[tuple[str, str], Want], now: float) -> int:
        """How many slots this supervisor may hold now: min(capacity, fair share)."""
        wanted = sum(
            w.replicas for (fleet, _), w in desired.items() if not self.mirrors.killed(fleet, None)
        )
        others = {k: v for k, v in self.mirrors.supervisors(self.ttl, now).items() if k != self.id}
        full = [s for s in others.values() if s is not None and s.full]
        open_slots = max(wanted - sum(s.held for s in full), 0)
        share = math.ceil(open_slots / (1 + len(others) - len(full)))
        return min(share, self.capacity.instances)

    async def claim(
        self, desired: dict[tuple[str, str], Want], now: float, preempted: Callable[[], bool]
    ) -> AsyncIterator[HeldSlot]:
        """Claim free slots up to :meth:`limit`, yielding each as it is claimed (so its
        instance starts before the next claim); stop when desired state changes."""
        limit = self.limit(desired, now)
        for fleet, agent, index in self._candidates(desired):
            if len(self.held) >= limit or preempted():
                return
            key = lease_key(fleet, agent, index)
            if key in self.held or self.mirrors.leases.fresh(key, self.ttl, now):
                continue
            slot = HeldSlot(fleet, agent, index, revision=0, renewed_at=now)
            try:
                slot.revision = await self.mirrors.leases_kv.create(key, self.body(slot))
            except KeyWrongLastSequenceError:
                continue  # held by another supervisor (or its lease has not expired yet)
            except Exception as e:
                log.warning("cannot claim %s: %s", key, e or type(e).__name__)
                return
            slot.dirty = False
            self.held[key] = slot
            self._adopt(slot, key)
            log.info("%s: claimed", key)
            yield slot

    def _candidates(self, desired: dict[tuple[str, str], Want]) -> Iterator[tuple[str, str, int]]:
        # Index-major across agents: every agent's slot 0 before any agent's slot 1.
        agents = sorted(
            (fleet, agent, w.replicas)
            for (fleet, agent), w in desired.items()
            if not self.mirrors.killed(fleet, None)
        )
        deepest = max((n for _, _, n in agents), default=0)
        for index in range(deepest):
            for fleet, agent, n in agents:
                if index < n:
                    yield fleet, agent, index

    def _adopt(self, slot: HeldSlot, key: str) -> None:
        # Taking over a slot whose instance was kill-switched keeps it blocked.
        entry = self.mirrors.leases.entries.get(key)
        if entry is None:
            return
        with contextlib.suppress(ValueError):
            previous = SlotLease.model_validate_json(entry.value)
            if previous.instance and self.mirrors.killed(slot.fleet, previous.instance):
                slot.instance = previous.instance
