"""The supervisor: a reconciler, like a Kubernetes controller, for agent instance processes.

It mirrors four KV buckets in memory by watching them (:mod:`shoal.ops.mirrors`: desired
fleet state, kill switches, presence heartbeats, slot leases) and, on every change and every
tick, moves what runs here towards what is desired, in small steps taken in order:

1. **announce** itself and its capacity (``_supervisor.<id>``, :mod:`shoal.ops.leases`);
2. **reap** exited instances (:mod:`shoal.ops.launcher`): a drain, upgrade or kill ends
   there; any other exit is restarted after an exponential back-off, and after
   ``crashloop_after`` exits at start in a row the slot is marked ``crashloop`` and left
   alone until the agent's desired run changes (``agent.crashlooping`` on the event log);
3. **renew** the leases of held slots; a lost lease stops its instance at once (fencing);
4. **step** every held slot (:mod:`shoal.ops.reconcile`): drain slots above the desired
   count, stop kill-switched instances, replace instances of an old run (a canary first,
   then ``rollout.batch`` at a time), check heartbeats, restart after back-off;
5. **claim** free slots up to the smaller of its fair share and its capacity
   (:mod:`shoal.ops.capacity`), and start their instances (:mod:`shoal.ops.instances`).

A change of desired state or kill switches while a pass runs ends the pass early: the next
one starts at once on the newer state, so a scale-down is never stuck behind a large
scale-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass

from shoal.bus import Bus, ShoalSettings
from shoal.ops.capacity import Capacity, host_capacity
from shoal.ops.instances import Launcher, instance_command, instance_env
from shoal.ops.launcher import InstanceLauncher
from shoal.ops.leases import SlotLeases
from shoal.ops.mirrors import BucketMirrors, KvMirror
from shoal.ops.reconcile import SlotReconciler
from shoal.schemas import new_id

__all__ = [
    "KvMirror",
    "Supervisor",
    "SupervisorOptions",
]

log = logging.getLogger("shoal.supervisor")


@dataclass(frozen=True)
class SupervisorOptions:
    """Timings of the reconciler (seconds) and its capacity. Lease TTL comes from settings.

    ``capacity`` overrides the instances this supervisor admits (default: the setting
    ``supervisor_capacity``, else computed from the host's CPUs and memory).
    """

    tick_s: float = 0.5
    drain_grace_s: float = 10.0
    kill_grace_s: float = 2.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    crashloop_after: int = 5
    crash_window_s: float = 10.0
    liveness_factor: float = 3.0
    resync_s: float = 30.0
    fleets: frozenset[str] | None = None
    capacity: int | None = None


class Supervisor:
    """Reconciles desired fleet state into ``shoal agent run`` processes on this host."""

    def __init__(
        self,
        bus: Bus,
        url: str,
        *,
        supervisor_id: str | None = None,
        host: str | None = None,
        options: SupervisorOptions | None = None,
        launcher: Launcher = instance_command,
    ) -> None:
        self.bus = bus
        self.settings: ShoalSettings = bus.settings
        self.url = url
        self.id = supervisor_id or f"sup-{new_id()}"
        self.host = host or socket.gethostname()
        self.options = options or SupervisorOptions()
        self.capacity: Capacity = _capacity(self.options, self.settings)
        self._wake = asyncio.Event()
        self.mirrors = BucketMirrors(bus, self._wake.set, self.options.resync_s)
        self.leases = SlotLeases(
            self.mirrors,
            self.id,
            self.host,
            self.settings.lease_ttl_s,
            self.options,
            self.capacity,
        )
        env = instance_env(self.settings, url)
        self.launcher = InstanceLauncher(bus, self.id, self.host, env, self.options, launcher)
        self.slots = SlotReconciler(
            self.mirrors, self.leases, self.launcher, self.settings, self.options
        )
        self._gone: list[str] = []  # presence keys of instances that exited

    # -- lifecycle ---------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile until ``stop`` is set, then drain every instance and release leases."""
        await self.start()
        try:
            while not stop.is_set():
                try:
                    await self._resync()
                except Exception as e:  # NATS away: keep managing local processes meanwhile
                    log.warning("cannot re-read the buckets: %s", e or type(e).__name__)
                try:
                    await self.reconcile()
                except Exception:  # a NATS hiccup must not kill the supervisor: log, retry
                    log.exception("reconcile failed; retrying")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wait(stop), self.options.tick_s)
        finally:
            await self.shutdown()

    async def _wait(self, stop: asyncio.Event) -> None:
        waits = [asyncio.create_task(self._wake.wait()), asyncio.create_task(stop.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        self._wake.clear()

    async def start(self) -> None:
        await self.mirrors.start(self.settings.request_timeout)
        await self.leases.announce(time.monotonic())
        log.info(
            "supervisor %s on %s started; capacity %d instances (%s)",
            self.id,
            self.host,
            self.capacity.instances,
            self.capacity.source,
        )

    async def _resync(self) -> None:
        await self.mirrors.resync(self.settings.request_timeout)

    async def shutdown(self) -> None:
        """Drain every instance (SIGTERM, SIGKILL after the grace period), release leases."""
        await self.launcher.drain([*self.leases.held.values(), *self.leases.orphans])
        await self.leases.release_all()
        await self.mirrors.stop()

    # -- one pass ----------------------------------------------------------------------------
    async def reconcile(self) -> None:
        """One reconciliation pass: announce, reap, renew, step held slots, claim, report.

        Ends early when desired state or a kill switch changes meanwhile (preemption).
        """
        now = time.monotonic()
        seen = self.mirrors.changes

        def preempted() -> bool:
            return self.mirrors.changes != seen

        await self.leases.announce(now)
        self._reap(now)
        await self._forget_gone()
        await self.leases.renew(now)
        desired = self.mirrors.desired(self.options.fleets)
        for slot in list(self.leases.held.values()):
            await self.slots.step(slot, desired.get((slot.fleet, slot.agent)), now)
        await self.slots.confirm_hung(now)
        self.launcher.escalate([*self.leases.held.values(), *self.leases.orphans], now)
        async for slot in self.leases.claim(desired, now, preempted):
            await self.slots.step(slot, desired.get((slot.fleet, slot.agent)), now)
            await asyncio.sleep(0)  # let a newer desired state arrive between starts
        await self.leases.renew(now, only_dirty=True)
        await self.leases.announce(now)

    def _reap(self, now: float) -> None:
        self.leases.orphans, gone = self.launcher.reap(
            self.leases.held.values(), self.leases.orphans, now, self.mirrors.killed
        )
        self._gone.extend(gone)

    async def _forget_gone(self) -> None:
        gone, self._gone = self._gone, []
        for key in gone:
            try:
                await self.mirrors.presence_kv.delete(key)
            except Exception as e:  # best effort: the bucket's TTL removes it anyway
                log.warning("could not delete presence %s: %s", key, e)


def _capacity(options: SupervisorOptions, settings: ShoalSettings) -> Capacity:
    if options.capacity is not None:
        return host_capacity(options.capacity, "--capacity")
    if settings.supervisor_capacity is not None:
        return host_capacity(settings.supervisor_capacity, "SHOAL_SUPERVISOR_CAPACITY")
    return host_capacity()
