"""What to do with one held slot, given what is desired: the reconciler's decisions.

For each slot a supervisor holds, :meth:`SlotReconciler.step` compares what runs there with
the agent's desired state and does one thing: drain it (scale-down, ``fleet stop``), stop it
(kill switch), replace it (rolling upgrade: a canary first, then ``rollout.batch`` at a time,
never past a failing new run), check its health (first heartbeat within
``rollout.first_heartbeat_s``, then liveness), or start it (after its back-off; never while
crash-looping on the same run). "The same run" is the agent's fingerprint: target, version,
concurrency and manifest, so changing any of them in the spec replaces running instances.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from nats.js.errors import KeyNotFoundError

from shoal.bus import ShoalSettings, presence_key
from shoal.ops.launcher import InstanceLauncher, stop_instance
from shoal.ops.leases import SlotLeases
from shoal.ops.mirrors import BucketMirrors, Want
from shoal.ops.slots import HeldSlot, SlotLease

if TYPE_CHECKING:
    from shoal.ops.supervisor import SupervisorOptions

__all__ = ["SlotReconciler"]

log = logging.getLogger("shoal.supervisor")


class SlotReconciler:
    """Moves each held slot one step towards its desired state."""

    def __init__(
        self,
        mirrors: BucketMirrors,
        leases: SlotLeases,
        launcher: InstanceLauncher,
        settings: ShoalSettings,
        options: SupervisorOptions,
    ) -> None:
        self.mirrors = mirrors
        self.leases = leases
        self.launcher = launcher
        self.settings = settings
        self.options = options
        self._suspects: list[HeldSlot] = []  # silent instances, to confirm before stopping

    async def step(self, slot: HeldSlot, want: Want | None, now: float) -> None:
        """One decision for ``slot``: drain, stop, replace, check or start."""
        if want is None or slot.index >= want.replicas:
            await self._drain_or_release(slot, now)
            return
        agent = want.agent.for_slot(slot.index)  # a canary slot runs the canary's version
        killed = self.mirrors.killed(slot.fleet, slot.instance)
        if killed:
            if slot.alive:
                stop_instance(slot, "kill", now, self.options.kill_grace_s)
            slot.set("killed", f"kill switch {killed}")
            return
        if slot.state == "killed" and not slot.alive:
            slot.set("claimed", "kill switch lifted")
        wanted_run = agent.fingerprint()
        if slot.alive:
            if slot.stop_reason is not None:
                return
            self._check_health(slot, want, now)
            if slot.run != wanted_run and self._may_replace(slot, want, wanted_run):
                stop_instance(slot, "upgrade", now, self.options.drain_grace_s)
                change = (
                    f"{slot.version} with {agent.version}"
                    if slot.version != agent.version
                    else f"{slot.version}: its spec changed (concurrency or manifest)"
                )
                slot.set("draining", f"replacing {change}")
            return
        if slot.state == "crashloop":
            if slot.crashed_on == wanted_run:
                return
            slot.failures, slot.crashed_on = 0, None  # desired changed: try the new one
        if now >= slot.retry_at and not self.mirrors.killed(slot.fleet, None):
            await self.launcher.launch(slot, agent)

    def _check_health(self, slot: HeldSlot, want: Want, now: float) -> None:
        assert slot.instance is not None
        key = presence_key(slot.fleet, slot.agent, slot.instance)
        entry = self.mirrors.presence.entries.get(key)
        if entry is not None:
            slot.last_heartbeat = max(slot.last_heartbeat, entry.seen_at)
            if not slot.heartbeat_seen:
                slot.heartbeat_seen = True
                slot.set("running", "")
        first_heartbeat_s = want.doc.rollout.first_heartbeat_s
        if slot.heartbeat_seen:
            silent = now - slot.last_heartbeat
            if silent > self.settings.presence_ttl_s * self.options.liveness_factor:
                self._suspects.append(slot)  # confirmed against the bucket before acting
        elif now - slot.started_at > first_heartbeat_s:
            stop_instance(slot, "no-heartbeat", now, 0.0)
            slot.message = f"no first heartbeat within {first_heartbeat_s:.0f}s"

    async def confirm_hung(self, now: float) -> None:
        """Stop instances whose heartbeat the bucket itself (not just the watch) lacks."""
        suspects, self._suspects = self._suspects, []
        for slot in suspects:
            if not slot.alive or slot.instance is None:
                continue
            key = presence_key(slot.fleet, slot.agent, slot.instance)
            mirrored = self.mirrors.presence.entries.get(key)
            try:
                entry = await self.mirrors.presence_kv.get(key)
            except KeyNotFoundError:
                entry = None
            except Exception as e:  # cannot tell: never stop an instance on a guess
                log.warning("cannot confirm %s is hung: %s", key, e or type(e).__name__)
                continue
            fresher = entry is not None and (entry.revision or 0) > (
                mirrored.revision if mirrored else 0
            )
            if fresher:
                # The instance is alive; our watch stalled. Re-read everything next pass.
                slot.last_heartbeat = now
                self.mirrors.behind()
                log.warning("presence watch is behind (%s); re-reading the buckets", key)
                continue
            stop_instance(slot, "hung", now, 0.0)
            slot.message = f"no heartbeat for {now - slot.last_heartbeat:.0f}s"

    def _may_replace(self, slot: HeldSlot, want: Want, run: str) -> bool:
        """Rolling upgrade gate: a batch at a time, and never past a failing new run."""
        mine = [
            s for s in self.leases.held.values() if (s.fleet, s.agent) == (slot.fleet, slot.agent)
        ]
        if any(s.run == run and s.state in ("backoff", "crashloop") for s in mine):
            return False  # own slots first: their lease updates may not be written yet
        proven = any(s.run == run and s.heartbeat_seen for s in mine)
        for key, entry in self.mirrors.leases.entries.items():
            if not key.startswith(f"{slot.fleet}.{slot.agent}."):
                continue
            lease = SlotLease.model_validate_json(entry.value)
            if lease.run == run and lease.state in ("backoff", "crashloop"):
                return False
            proven = proven or (lease.run == run and lease.state == "running")
        in_flight = sum(
            1 for s in mine if s.stop_reason == "upgrade" or s.state in ("starting", "claimed")
        )
        # A canary first: one instance of the new run must heartbeat before a batch goes, so
        # a run that cannot start costs one instance, not a whole batch.
        return in_flight < (want.doc.rollout.batch if proven else 1)

    async def _drain_or_release(self, slot: HeldSlot, now: float) -> None:
        if slot.alive:
            if slot.stop_reason is None:
                stop_instance(slot, "drain", now, self.options.drain_grace_s)
                slot.set("draining", "scaled down")
            return
        await self.leases.release(slot)
