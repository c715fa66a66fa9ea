"""Who runs which core partition: KV leases, as the supervisors hold their slots.

Each partition (``p0of2``...) and the spend aggregator (``spendof2``) is a lease in the leases
bucket, key ``_core.<name>``. A free lease is claimed with KV *create* (fails if another core
process holds it) and kept with *update(last revision)* every ``ttl / 3``; a lease not renewed
expires with the bucket's TTL and another core process takes it over. A process that cannot
renew in time, or finds its lease taken, stops that partition at once (fencing).

Each core process also renews ``_coreproc.<id>``; the live ones split the leases fairly
(``ceil(leases / live processes)`` each), so a second process started beside a first takes
half the partitions over, and the survivor of a SIGKILL takes the dead one's share once its
leases expire.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass

from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shoal.bus.kvmirror import KvMirror

__all__ = ["CORE_LEASE_PREFIX", "CoreLeases", "core_lease_key"]

log = logging.getLogger("shoal.core")

CORE_LEASE_PREFIX = "_core"
PROCESS_PREFIX = "_coreproc"


def core_lease_key(name: str) -> str:
    """Leases-bucket key of one partition or the aggregator (two tokens: never a slot key)."""
    return f"{CORE_LEASE_PREFIX}.{name}"


@dataclass
class Held:
    revision: int
    renewed_at: float


class CoreLeases:
    """The partition leases this core process holds."""

    def __init__(
        self, kv: KeyValue, mirror: KvMirror, process_id: str, ttl: float, names: list[str]
    ) -> None:
        self.kv = kv
        self.mirror = mirror
        self.id = process_id
        self.ttl = ttl
        self.names = names
        self.held: dict[str, Held] = {}
        self._announced_at = -math.inf

    async def announce(self, now: float) -> None:
        """Renew ``_coreproc.<id>`` every ``ttl / 3``."""
        if now - self._announced_at < self.ttl / 3:
            return
        try:
            await self.kv.put(f"{PROCESS_PREFIX}.{self.id}", ",".join(sorted(self.held)).encode())
        except Exception as e:  # keep what is held; renewals decide whether it is lost
            log.warning("core %s cannot announce itself: %s", self.id, e or type(e).__name__)
            return
        self._announced_at = now

    def share(self, now: float) -> int:
        """How many leases this process may hold: an even split among live processes."""
        live = {
            key
            for key in self.mirror.entries
            if key.startswith(PROCESS_PREFIX + ".") and self.mirror.fresh(key, self.ttl, now)
        }
        live.add(f"{PROCESS_PREFIX}.{self.id}")
        return math.ceil(len(self.names) / len(live))

    async def claim(self, now: float, limit: int) -> list[str]:
        """Claim free leases until ``limit`` are held; the names newly claimed."""
        claimed: list[str] = []
        for name in self.names:
            if len(self.held) >= limit:
                break
            key = core_lease_key(name)
            if name in self.held or self.mirror.fresh(key, self.ttl, now):
                continue
            try:
                revision = await self.kv.create(key, self.id.encode())
            except KeyWrongLastSequenceError:
                continue  # another process holds it (or its lease has not expired yet)
            except Exception as e:
                log.warning("core cannot claim %s: %s", name, e or type(e).__name__)
                break
            self.held[name] = Held(revision, now)
            claimed.append(name)
            log.info("core %s: claimed %s", self.id, name)
        return claimed

    async def renew(self, now: float) -> list[str]:
        """Renew leases due; the names lost (taken over, or not renewed within the TTL)."""
        lost: list[str] = []
        for name, held in list(self.held.items()):
            if now - held.renewed_at < self.ttl / 3:
                continue
            try:
                held.revision = await self.kv.update(
                    core_lease_key(name), self.id.encode(), last=held.revision
                )
                held.renewed_at = now
            except KeyWrongLastSequenceError:
                lost.append(name)
            except Exception as e:  # NATS away: the lease holds until it would expire
                if now - held.renewed_at > self.ttl * 2 / 3:
                    log.warning("core cannot renew %s: %s", name, e or type(e).__name__)
                    lost.append(name)
        for name in lost:
            log.error("core %s: lease %s lost; stopping it", self.id, name)
            self.held.pop(name, None)
        return lost

    async def release(self, name: str) -> None:
        """Give a lease up (its work is stopped), so another process takes it now."""
        held = self.held.pop(name, None)
        if held is not None:
            with contextlib.suppress(Exception):
                await self.kv.delete(core_lease_key(name), last=held.revision)
            log.info("core %s: released %s", self.id, name)

    async def release_all(self) -> None:
        for name in list(self.held):
            await self.release(name)
        with contextlib.suppress(Exception):
            await self.kv.delete(f"{PROCESS_PREFIX}.{self.id}")
