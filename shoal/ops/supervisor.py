"""The supervisor: a reconciler, like a Kubernetes controller, for agent instance processes.

It mirrors four KV buckets in memory by watching them (desired fleet state, kill switches,
presence heartbeats, slot leases) and, on every change and every tick, moves what runs here
towards what is desired:

- **slots**: an agent with ``replicas=N`` has slots ``0..N-1``. A supervisor claims a free
  slot with KV *create* (fails if another holds it) and keeps it with *update(last
  revision)* every ``lease_ttl_s / 3``; a lease not renewed expires with the bucket's TTL
  and another supervisor takes the slot over. A supervisor claims at most its fair share
  (slots / live supervisors), so several supervisors spread a fleet between them. It never
  runs an instance in a slot whose lease it lost (the instance is stopped at once).
- **start**: one ``shoal agent run`` process per held slot (see :mod:`shoal.ops.instances`).
- **crashes**: an unexpected exit is restarted after an exponential back-off; after
  ``crashloop_after`` exits at start in a row the slot is marked ``crashloop`` and left
  alone until the agent's desired version or target changes (visible in ``fleet describe``
  and as ``agent.crashlooping`` on the event log).
- **drain**: slots above the desired count (scale-down, ``fleet stop``) get SIGTERM, then
  SIGKILL after ``drain_grace_s``; their lease is released once the process is gone.
- **upgrade**: instances of an old version are replaced one first (a canary), then
  ``rollout.batch`` at a time; a new instance that does not report presence within
  ``rollout.first_heartbeat_s`` or exits at start stops the rollout (old instances are kept).
- **kill switches**: ``instance.<id>``, ``fleet.<name>`` and ``all`` terminate the matching
  instances (SIGTERM, SIGKILL after ``kill_grace_s``) and block their restart while the
  key exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from shoal.bus import Bus, ShoalSettings, kill_key, lease_key, presence_key
from shoal.ops.instances import (
    Launch,
    Launcher,
    instance_command,
    instance_env,
    scoped_env,
    signal_process,
    spawn,
    tail_line,
)
from shoal.ops.slots import SUPERVISOR_KEY_PREFIX, SlotLease, SlotState, supervisor_key
from shoal.schemas import AgentCrashLooping, CloudEvent, new_id, utcnow
from shoal.schemas.fleet import DesiredAgent, FleetDesired

__all__ = [
    "KvMirror",
    "Supervisor",
    "SupervisorOptions",
]

log = logging.getLogger("shoal.supervisor")


@dataclass(frozen=True)
class SupervisorOptions:
    """Timings of the reconciler (seconds). Lease TTL comes from settings."""

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


@dataclass
class MirrorEntry:
    value: bytes
    revision: int
    seen_at: float


class KvMirror:
    """A live in-memory copy of one bucket, fed by a KV watch.

    ``seen_at`` is the local monotonic time a key was last written: JetStream removes keys
    whose TTL ran out without telling watchers, so staleness is judged from it.
    """

    def __init__(self, kv: KeyValue, on_change: Callable[[str], None] | None = None) -> None:
        self.kv = kv
        self.entries: dict[str, MirrorEntry] = {}
        self._on_change = on_change
        self._watcher: KeyValue.KeyWatcher | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self, timeout: float) -> None:
        self._watcher = await self.kv.watchall()
        self._task = asyncio.create_task(self._follow(self._watcher), name=f"mirror-{self.kv}")
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def stop(self) -> None:
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()  # type: ignore[no-untyped-call]
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:
                self._ready.set()
                continue
            if entry.operation in (KV_DEL, KV_PURGE):
                self.entries.pop(entry.key, None)
            else:
                self.entries[entry.key] = MirrorEntry(
                    entry.value or b"", entry.revision or 0, time.monotonic()
                )
            if self._on_change is not None:
                self._on_change(entry.key)

    async def renewed(self, timeout: float) -> KvMirror:
        """A new mirror from a new watch (a watch does not survive every server restart).

        Keys whose revision did not change keep their ``seen_at``, so a lease that stopped
        being renewed does not look fresh again. On failure this mirror stays in use.
        """
        mirror = KvMirror(self.kv, self._on_change)
        await mirror.start(timeout)
        for key, entry in mirror.entries.items():
            previous = self.entries.get(key)
            if previous is not None and previous.revision == entry.revision:
                entry.seen_at = previous.seen_at
        await self.stop()
        return mirror

    def fresh(self, key: str, ttl: float, now: float) -> MirrorEntry | None:
        """The entry if it was written within ``ttl`` seconds."""
        entry = self.entries.get(key)
        return entry if entry is not None and now - entry.seen_at < ttl else None


@dataclass
class HeldSlot:
    """A slot this supervisor holds the lease of, and the process it runs there."""

    fleet: str
    agent: str
    index: int
    revision: int
    renewed_at: float
    state: SlotState = "claimed"
    proc: subprocess.Popen[bytes] | None = None
    instance: str | None = None
    version: str | None = None
    target: str | None = None
    started_at: float = 0.0
    heartbeat_seen: bool = False
    last_heartbeat: float = 0.0
    failures: int = 0
    restarts: int = 0
    retry_at: float = 0.0
    exit_code: int | None = None
    message: str = ""
    stop_reason: str | None = None
    kill_at: float | None = None
    crashed_on: tuple[str, str] | None = None
    dirty: bool = True

    @property
    def key(self) -> str:
        return lease_key(self.fleet, self.agent, self.index)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


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
        self.launcher = launcher
        self.held: dict[str, HeldSlot] = {}
        self.orphans: list[HeldSlot] = []  # lost leases whose processes are being stopped
        self.env = instance_env(self.settings, url)
        self.logs_dir = self.settings.data_dir.resolve() / "logs"
        self._wake = asyncio.Event()
        self._sup_renewed_at = -math.inf
        self._synced_at = time.monotonic()
        self._reconnects = bus.nc.stats["reconnects"]
        self.fleets: KvMirror
        self.kills: KvMirror
        self.presence: KvMirror
        self.leases: KvMirror
        self._leases_kv: KeyValue
        self._presence_kv: KeyValue
        self._gone: list[str] = []  # presence keys of instances that exited
        self._suspects: list[HeldSlot] = []  # silent instances, to confirm before stopping

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
        timeout = self.settings.request_timeout
        top = self.bus.topology

        def wake(_: str) -> None:
            self._wake.set()

        self._leases_kv = await self.bus.kv(top.leases.name)
        self._presence_kv = await self.bus.kv(top.presence.name)
        self.fleets = KvMirror(await self.bus.kv(top.fleets.name), wake)
        self.kills = KvMirror(await self.bus.kv(top.kill.name), wake)
        self.presence = KvMirror(self._presence_kv)
        self.leases = KvMirror(self._leases_kv, wake)
        for mirror in (self.fleets, self.kills, self.presence, self.leases):
            await mirror.start(timeout)
        await self._announce(time.monotonic())
        log.info("supervisor %s on %s started", self.id, self.host)

    async def _resync(self) -> None:
        now = time.monotonic()
        reconnects = self.bus.nc.stats["reconnects"]
        # After a reconnect (a server restart) the watches can stall for a while: re-read at
        # once rather than act on a stale view (e.g. think every instance stopped heartbeating).
        if now - self._synced_at < self.options.resync_s and reconnects == self._reconnects:
            return
        self._synced_at, self._reconnects = now, reconnects
        timeout = self.settings.request_timeout
        self.fleets = await self.fleets.renewed(timeout)
        self.kills = await self.kills.renewed(timeout)
        self.presence = await self.presence.renewed(timeout)
        self.leases = await self.leases.renewed(timeout)

    async def shutdown(self) -> None:
        """Drain every instance (SIGTERM, SIGKILL after the grace period), release leases."""
        slots = [*self.held.values(), *self.orphans]
        for slot in slots:
            if slot.proc is not None:
                signal_process(slot.proc, signal.SIGTERM)
        deadline = time.monotonic() + self.options.drain_grace_s
        while any(s.alive for s in slots) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # polling child exit: there is no event to wait on
        for slot in slots:
            if slot.proc is not None:
                signal_process(slot.proc, signal.SIGKILL)
                await asyncio.to_thread(slot.proc.wait)
        with contextlib.suppress(Exception):
            for slot in list(self.held.values()):
                await self._leases_kv.delete(slot.key, last=slot.revision)
            await self._leases_kv.delete(supervisor_key(self.id))
        self.held.clear()
        for mirror in (self.fleets, self.kills, self.presence, self.leases):
            await mirror.stop()

    # -- one pass ----------------------------------------------------------------------------
    async def reconcile(self) -> None:
        """One reconciliation pass: reap, renew, drain/kill/upgrade/start, claim, report."""
        now = time.monotonic()
        await self._announce(now)
        self._reap(now)
        await self._forget_gone()
        await self._renew(now)
        desired = self._desired()
        for slot in list(self.held.values()):
            await self._step(slot, desired, now)
        await self._confirm_hung(now)
        self._escalate(now)
        await self._claim(desired, now)
        for slot in list(self.held.values()):
            if slot.state == "claimed" and slot.proc is None:
                await self._step(slot, desired, now)
        await self._renew(now, only_dirty=True)

    def _desired(self) -> dict[tuple[str, str], tuple[FleetDesired, DesiredAgent, int]]:
        out: dict[tuple[str, str], tuple[FleetDesired, DesiredAgent, int]] = {}
        wanted = self.options.fleets
        for name, entry in self.fleets.entries.items():
            if wanted is not None and name not in wanted:
                continue
            try:
                doc = FleetDesired.model_validate_json(entry.value)
            except ValueError:
                log.error("fleet %s: desired state is not a valid document; ignored", name)
                continue
            for agent, d in doc.agents.items():
                out[(name, agent)] = (doc, d, doc.replicas(agent))
        return out

    def _killed(self, fleet: str, instance: str | None) -> str | None:
        """The kill key that stops an instance of ``fleet``, if any."""
        keys = [kill_key("all"), kill_key("fleet", fleet)]
        if instance:
            keys.append(kill_key("instance", instance))
        return next((k for k in keys if k in self.kills.entries), None)

    async def _step(
        self,
        slot: HeldSlot,
        desired: dict[tuple[str, str], tuple[FleetDesired, DesiredAgent, int]],
        now: float,
    ) -> None:
        want = desired.get((slot.fleet, slot.agent))
        if want is None or slot.index >= want[2]:
            await self._drain_or_release(slot, now)
            return
        doc, agent, _ = want
        killed = self._killed(slot.fleet, slot.instance)
        if killed:
            if slot.alive:
                self._stop(slot, "kill", now, self.options.kill_grace_s)
            self._set(slot, "killed", f"kill switch {killed}")
            return
        if slot.state == "killed" and not slot.alive:
            self._set(slot, "claimed", "kill switch lifted")
        wanted_run = (agent.version, agent.target)
        if slot.alive:
            if slot.stop_reason is not None:
                return
            self._check_health(slot, doc, now)
            if (slot.version, slot.target) != wanted_run and self._may_replace(slot, doc, agent):
                self._stop(slot, "upgrade", now, self.options.drain_grace_s)
                self._set(slot, "draining", f"replacing {slot.version} with {agent.version}")
            return
        if slot.state == "crashloop":
            if slot.crashed_on == wanted_run:
                return
            slot.failures, slot.crashed_on = 0, None  # desired changed: try the new one
        if now >= slot.retry_at:
            self._launch(slot, agent)

    def _check_health(self, slot: HeldSlot, doc: FleetDesired, now: float) -> None:
        assert slot.instance is not None
        entry = self.presence.entries.get(presence_key(slot.fleet, slot.agent, slot.instance))
        if entry is not None:
            slot.last_heartbeat = max(slot.last_heartbeat, entry.seen_at)
            if not slot.heartbeat_seen:
                slot.heartbeat_seen = True
                self._set(slot, "running", "")
        if slot.heartbeat_seen:
            silent = now - slot.last_heartbeat
            if silent > self.settings.presence_ttl_s * self.options.liveness_factor:
                self._suspects.append(slot)  # confirmed against the bucket before acting
        elif now - slot.started_at > doc.rollout.first_heartbeat_s:
            self._stop(slot, "no-heartbeat", now, 0.0)
            slot.message = f"no first heartbeat within {doc.rollout.first_heartbeat_s:.0f}s"

    async def _confirm_hung(self, now: float) -> None:
        """Stop instances whose heartbeat the bucket itself (not just the watch) lacks."""
        suspects, self._suspects = self._suspects, []
        for slot in suspects:
            if not slot.alive or slot.instance is None:
                continue
            key = presence_key(slot.fleet, slot.agent, slot.instance)
            mirrored = self.presence.entries.get(key)
            try:
                entry = await self._presence_kv.get(key)
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
                self._synced_at = -math.inf
                log.warning("presence watch is behind (%s); re-reading the buckets", key)
                continue
            self._stop(slot, "hung", now, 0.0)
            slot.message = f"no heartbeat for {now - slot.last_heartbeat:.0f}s"

    def _may_replace(self, slot: HeldSlot, doc: FleetDesired, agent: DesiredAgent) -> bool:
        """Rolling upgrade gate: a batch at a time, and never past a failing new version."""
        mine = [s for s in self.held.values() if (s.fleet, s.agent) == (slot.fleet, slot.agent)]
        if any(s.version == agent.version and s.state in ("backoff", "crashloop") for s in mine):
            return False  # own slots first: their lease updates may not be written yet
        proven = any(s.version == agent.version and s.heartbeat_seen for s in mine)
        for key, entry in self.leases.entries.items():
            if not key.startswith(f"{slot.fleet}.{slot.agent}."):
                continue
            lease = SlotLease.model_validate_json(entry.value)
            if lease.version == agent.version and lease.state in ("backoff", "crashloop"):
                return False
            proven = proven or (lease.version == agent.version and lease.state == "running")
        in_flight = sum(
            1 for s in mine if s.stop_reason == "upgrade" or s.state in ("starting", "claimed")
        )
        # A canary first: one instance of the new version must heartbeat before a batch goes,
        # so a version that cannot start costs one instance, not a whole batch.
        return in_flight < (doc.rollout.batch if proven else 1)

    def _launch(self, slot: HeldSlot, agent: DesiredAgent) -> None:
        if self._killed(slot.fleet, None):
            return
        slot.instance = new_id()
        slot.version, slot.target = agent.version, agent.target
        launch = Launch(
            fleet=slot.fleet,
            agent=slot.agent,
            target=agent.target,
            version=agent.version,
            instance=slot.instance,
            slot=slot.index,
            concurrency=agent.concurrency,
            supervisor=self.id,
        )
        log_path = self.logs_dir / f"{slot.key}.log"
        try:
            env = scoped_env(self.env, launch, self.settings)  # its own credentials
            slot.proc = spawn(self.launcher(launch), env, log_path)
        except OSError as e:
            self._crashed(slot, time.monotonic(), None, f"cannot start: {e}")
            return
        slot.started_at, slot.heartbeat_seen = time.monotonic(), False
        slot.stop_reason, slot.kill_at, slot.exit_code = None, None, None
        self._set(slot, "starting", "")
        log.info(
            "%s: started %s %s (pid %d)", slot.key, slot.instance, agent.version, slot.proc.pid
        )

    def _stop(self, slot: HeldSlot, reason: str, now: float, grace: float) -> None:
        if slot.proc is None:
            return
        slot.stop_reason = reason
        signal_process(slot.proc, signal.SIGTERM if grace > 0 else signal.SIGKILL)
        slot.kill_at = now + grace if grace > 0 else None

    def _escalate(self, now: float) -> None:
        for slot in [*self.held.values(), *self.orphans]:
            if slot.alive and slot.kill_at is not None and now >= slot.kill_at:
                assert slot.proc is not None
                log.warning("%s: %s did not exit in time; SIGKILL", slot.key, slot.instance)
                signal_process(slot.proc, signal.SIGKILL)
                slot.kill_at = None

    async def _drain_or_release(self, slot: HeldSlot, now: float) -> None:
        if slot.alive:
            if slot.stop_reason is None:
                self._stop(slot, "drain", now, self.options.drain_grace_s)
                self._set(slot, "draining", "scaled down")
            return
        with contextlib.suppress(Exception):
            await self._leases_kv.delete(slot.key, last=slot.revision)
        self.held.pop(slot.key, None)
        log.info("%s: released", slot.key)

    # -- exits -----------------------------------------------------------------------------
    async def _forget_gone(self) -> None:
        gone, self._gone = self._gone, []
        for key in gone:
            try:
                await self._presence_kv.delete(key)
            except Exception as e:  # best effort: the bucket's TTL removes it anyway
                log.warning("could not delete presence %s: %s", key, e)

    def _reap(self, now: float) -> None:
        for slot in self.orphans:
            if not slot.alive and slot.instance:
                self._gone.append(presence_key(slot.fleet, slot.agent, slot.instance))
        self.orphans = [s for s in self.orphans if s.alive]
        for slot in self.held.values():
            if slot.proc is None or slot.proc.poll() is None:
                continue
            code, reason = slot.proc.returncode, slot.stop_reason
            slot.proc, slot.exit_code = None, code
            if reason is None and self._killed(slot.fleet, slot.instance):
                reason = "kill"  # the instance saw its kill switch first and stopped itself
            if slot.instance:
                # A SIGKILLed instance cannot remove its own heartbeat; without this its
                # presence would count as a live instance until the key's TTL runs out.
                self._gone.append(presence_key(slot.fleet, slot.agent, slot.instance))
            if reason in ("drain", "upgrade", "kill"):
                log.info("%s: %s exited (%s, code %s)", slot.key, slot.instance, reason, code)
                slot.stop_reason, slot.kill_at = None, None
                if reason == "upgrade":
                    self._set(slot, "claimed", "")
                continue
            tail = tail_line(self.logs_dir / f"{slot.key}.log")
            self._crashed(slot, now, code, slot.message if reason else tail)

    def _crashed(self, slot: HeldSlot, now: float, code: int | None, message: str) -> None:
        at_start = not slot.heartbeat_seen or now - slot.started_at < self.options.crash_window_s
        slot.failures = slot.failures + 1 if at_start else 1
        slot.restarts += 1
        slot.stop_reason, slot.kill_at = None, None
        detail = f"exit code {code}: {message}" if code is not None else message
        if slot.failures >= self.options.crashloop_after:
            slot.crashed_on = (slot.version or "", slot.target or "")
            self._set(slot, "crashloop", f"{slot.failures} exits at start in a row; {detail}")
            log.error("%s: crash loop (%s); not restarting", slot.key, detail)
            self._report_crashloop(slot, code)
            return
        delay = min(
            self.options.backoff_base_s * 2 ** (slot.failures - 1), self.options.backoff_max_s
        )
        slot.retry_at = now + delay
        self._set(slot, "backoff", f"{detail}; restart in {delay:.1f}s")
        log.warning("%s: %s exited (%s); restart in %.1fs", slot.key, slot.instance, detail, delay)

    def _report_crashloop(self, slot: HeldSlot, code: int | None) -> None:
        event = CloudEvent.new(
            AgentCrashLooping(
                supervisor=self.id,
                host=self.host,
                slot=slot.index,
                version=slot.version or "",
                exits=slot.failures,
                exit_code=code,
                message=slot.message,
            ),
            iid=slot.instance or new_id(),
            source=f"shoal://supervisor/{self.id}",
            fleet=slot.fleet,
            agent=slot.agent,
            instance=slot.instance,
        )
        task = asyncio.get_running_loop().create_task(self.bus.publish(event))
        task.add_done_callback(_log_failure)

    # -- leases ------------------------------------------------------------------------------
    def _set(self, slot: HeldSlot, state: SlotState, message: str) -> None:
        if (slot.state, slot.message) != (state, message):
            slot.state, slot.message, slot.dirty = state, message, True

    def _lease(self, slot: HeldSlot) -> bytes:
        return (
            SlotLease(
                supervisor=self.id,
                host=self.host,
                instance=slot.instance,
                renewed_at=utcnow(),
                state=slot.state,
                version=slot.version,
                pid=slot.proc.pid if slot.proc is not None else None,
                restarts=slot.restarts,
                exit_code=slot.exit_code,
                message=slot.message,
            )
            .model_dump_json()
            .encode()
        )

    async def _renew(self, now: float, only_dirty: bool = False) -> None:
        period = self.settings.lease_ttl_s / 3
        for slot in list(self.held.values()):
            if not slot.dirty and (only_dirty or now - slot.renewed_at < period):
                continue
            try:
                slot.revision = await self._leases_kv.update(
                    slot.key, self._lease(slot), last=slot.revision
                )
                slot.renewed_at, slot.dirty = now, False
            except KeyWrongLastSequenceError:
                self._lose(slot, now, "lease taken over by another supervisor")
            except Exception as e:  # NATS unreachable: keep trying until the lease would expire
                if now - slot.renewed_at > self.settings.lease_ttl_s:
                    self._lose(slot, now, f"lease not renewed in time ({e or type(e).__name__})")

    def _lose(self, slot: HeldSlot, now: float, why: str) -> None:
        # Fencing: another supervisor may start this slot now, so ours must stop at once.
        log.error("%s: %s; stopping %s", slot.key, why, slot.instance)
        self.held.pop(slot.key, None)
        if slot.alive:
            self._stop(slot, "lost", now, self.options.kill_grace_s)
            self.orphans.append(slot)

    async def _announce(self, now: float) -> None:
        if now - self._sup_renewed_at < self.settings.lease_ttl_s / 3:
            return
        body = json.dumps({"host": self.host, "pid": os.getpid()}).encode()
        try:
            await self._leases_kv.put(supervisor_key(self.id), body)
        except Exception as e:  # keep managing local processes while NATS is away
            log.warning("cannot announce supervisor %s: %s", self.id, e or type(e).__name__)
            return
        self._sup_renewed_at = now

    async def _claim(
        self,
        desired: dict[tuple[str, str], tuple[FleetDesired, DesiredAgent, int]],
        now: float,
    ) -> None:
        ttl = self.settings.lease_ttl_s
        live = sum(
            1
            for k in self.leases.entries
            if k.startswith(SUPERVISOR_KEY_PREFIX + ".") and self.leases.fresh(k, ttl, now)
        )
        total = sum(n for (fleet, _), (_, _, n) in desired.items() if not self._killed(fleet, None))
        share = math.ceil(total / max(live, 1))
        for (fleet, agent), (_, _, n) in sorted(desired.items()):
            if self._killed(fleet, None):
                continue
            for index in range(n):
                if len(self.held) >= share:
                    return
                key = lease_key(fleet, agent, index)
                if key in self.held or self.leases.fresh(key, ttl, now):
                    continue
                slot = HeldSlot(fleet, agent, index, revision=0, renewed_at=now)
                try:
                    slot.revision = await self._leases_kv.create(key, self._lease(slot))
                except KeyWrongLastSequenceError:
                    continue  # held by another supervisor (or its lease has not expired yet)
                except Exception as e:
                    log.warning("cannot claim %s: %s", key, e or type(e).__name__)
                    return
                slot.dirty = False
                self.held[key] = slot
                self._adopt(slot, key)
                log.info("%s: claimed", key)

    def _adopt(self, slot: HeldSlot, key: str) -> None:
        # Taking over a slot whose instance was kill-switched keeps it blocked.
        entry = self.leases.entries.get(key)
        if entry is None:
            return
        with contextlib.suppress(ValueError):
            previous = SlotLease.model_validate_json(entry.value)
            if previous.instance and self._killed(slot.fleet, previous.instance):
                slot.instance = previous.instance


def _log_failure(task: asyncio.Task[object]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("could not publish: %s", task.exception())
