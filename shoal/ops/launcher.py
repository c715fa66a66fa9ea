"""Instance processes of the slots a supervisor holds: start, stop, reap, back off.

:class:`InstanceLauncher` starts one ``shoal agent run`` process in a slot (with the
manifest the fleet spec gives the agent, written to a file the instance reads), stops it
(SIGTERM, SIGKILL after a grace period), notices its exit and decides what follows: nothing
after a drain, upgrade or kill; otherwise a restart after an exponential back-off, or, after
``crashloop_after`` exits at start in a row, the ``crashloop`` state and an
``agent.crashlooping`` event.

When a gateway serves this host (``SHOAL_GATEWAY_URL`` in the instances' environment), each
instance gets a gateway key of its own, minted before its process starts and bound to its
fleet, agent, instance and manifest: the secret is only in the child's environment. The key
is revoked once the instance is gone (stopped, killed, replaced or crashed), so it never
opens a call for anyone else.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from shoal.bus import Bus, presence_key
from shoal.ops.gatewaykeys import GatewayKeyError, InstanceKeys
from shoal.ops.instances import (
    Launch,
    Launcher,
    scoped_env,
    signal_process,
    spawn,
    tail_line,
)
from shoal.ops.slots import HeldSlot
from shoal.schemas import AgentCrashLooping, CloudEvent, new_id
from shoal.schemas.fleet import DesiredAgent
from shoal.schemas.manifest import CapabilityManifest

if TYPE_CHECKING:
    from shoal.ops.supervisor import SupervisorOptions

__all__ = ["InstanceLauncher", "stop_instance"]

log = logging.getLogger("shoal.supervisor")


def stop_instance(slot: HeldSlot, reason: str, now: float, grace: float) -> None:
    """SIGTERM the slot's process (SIGKILL at once when ``grace`` is 0); remember why."""
    if slot.proc is None:
        return
    slot.stop_reason = reason
    signal_process(slot.proc, signal.SIGTERM if grace > 0 else signal.SIGKILL)
    slot.kill_at = now + grace if grace > 0 else None


class InstanceLauncher:
    """Starts, reaps and restarts the instance processes of held slots."""

    def __init__(
        self,
        bus: Bus,
        supervisor_id: str,
        host: str,
        env: dict[str, str],
        options: SupervisorOptions,
        launcher: Launcher,
    ) -> None:
        self.bus = bus
        self.supervisor_id = supervisor_id
        self.host = host
        self.env = env
        self.options = options
        self.launcher = launcher
        data_dir = bus.settings.data_dir.resolve()
        self.logs_dir = data_dir / "logs"
        self.manifests_dir = data_dir / "manifests"
        self.launched = 0  # processes started over this supervisor's life
        self.gateway_keys = InstanceKeys(bus, supervisor_id)

    def log_path(self, slot: HeldSlot) -> Path:
        return self.logs_dir / f"{slot.key}.log"

    async def launch(self, slot: HeldSlot, agent: DesiredAgent) -> None:
        """Start a new instance (a new instance id) of ``agent`` in ``slot``."""
        slot.instance = new_id()
        slot.version, slot.target, slot.run = agent.version, agent.target, agent.fingerprint()
        try:
            manifest = self._manifest_file(slot, agent.manifest)
            launch = Launch(
                fleet=slot.fleet,
                agent=slot.agent,
                target=agent.target,
                version=agent.version,
                instance=slot.instance,
                slot=slot.index,
                concurrency=agent.concurrency,
                supervisor=self.supervisor_id,
                manifest=manifest,
                command=agent.command,
                capabilities=agent.capabilities,
            )
            env = scoped_env(self.env, launch, self.bus.settings)  # its own credentials
            env = await self.gateway_keys.add(env, launch, agent.manifest)
            slot.proc = spawn(self.launcher(launch), env, self.log_path(slot))
        except (OSError, GatewayKeyError) as e:
            self.gateway_keys.revoke(slot.instance)
            self.crashed(slot, time.monotonic(), None, f"cannot start: {e}")
            return
        self.launched += 1
        slot.started_at, slot.heartbeat_seen = time.monotonic(), False
        slot.stop_reason, slot.kill_at, slot.exit_code = None, None, None
        slot.set("starting", "")
        log.info(
            "%s: started %s %s (pid %d)", slot.key, slot.instance, agent.version, slot.proc.pid
        )

    def _manifest_file(self, slot: HeldSlot, manifest: CapabilityManifest | None) -> Path | None:
        # The spec's manifest goes to the instance as a file named by its content: nothing to
        # rewrite while another instance reads it, and no argv long enough to hit a limit.
        if manifest is None:
            return None
        body = manifest.model_dump_json(indent=2).encode()
        path = self.manifests_dir / f"{slot.fleet}.{slot.agent}.{_digest(body)}.json"
        if not path.exists():
            self.manifests_dir.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.tmp")
            partial.write_bytes(body)
            partial.replace(path)  # atomic: an instance never reads half a manifest
        return path

    def escalate(self, slots: Iterable[HeldSlot], now: float) -> None:
        """SIGKILL processes that outlived their grace period after SIGTERM."""
        for slot in slots:
            if slot.alive and slot.kill_at is not None and now >= slot.kill_at:
                assert slot.proc is not None
                log.warning("%s: %s did not exit in time; SIGKILL", slot.key, slot.instance)
                signal_process(slot.proc, signal.SIGKILL)
                slot.kill_at = None

    def reap(
        self,
        held: Iterable[HeldSlot],
        orphans: list[HeldSlot],
        now: float,
        killed: Callable[[str, str | None], str | None],
    ) -> tuple[list[HeldSlot], list[str]]:
        """Notice exits: returns the orphans still alive and the presence keys of the gone."""
        gone = []
        for s in orphans:
            if not s.alive and s.instance:
                gone.append(presence_key(s.fleet, s.agent, s.instance))
                self.gateway_keys.revoke(s.instance)
        for slot in held:
            if slot.proc is None or slot.proc.poll() is None:
                continue
            code, reason = slot.proc.returncode, slot.stop_reason
            slot.proc, slot.exit_code = None, code
            self.gateway_keys.revoke(slot.instance)
            if reason is None and killed(slot.fleet, slot.instance):
                reason = "kill"  # the instance saw its kill switch first and stopped itself
            if slot.instance:
                # A SIGKILLed instance cannot remove its own heartbeat; without this its
                # presence would count as a live instance until the key's TTL runs out.
                gone.append(presence_key(slot.fleet, slot.agent, slot.instance))
            if reason in ("drain", "upgrade", "kill"):
                log.info("%s: %s exited (%s, code %s)", slot.key, slot.instance, reason, code)
                slot.stop_reason, slot.kill_at = None, None
                if reason == "upgrade":
                    slot.set("claimed", "")
                continue
            tail = tail_line(self.log_path(slot))
            self.crashed(slot, now, code, slot.message if reason else tail)
        return [s for s in orphans if s.alive], gone

    def crashed(self, slot: HeldSlot, now: float, code: int | None, message: str) -> None:
        """An unexpected exit: back off and restart, or give up as a crash loop."""
        at_start = not slot.heartbeat_seen or now - slot.started_at < self.options.crash_window_s
        slot.failures = slot.failures + 1 if at_start else 1
        slot.restarts += 1
        slot.stop_reason, slot.kill_at = None, None
        detail = f"exit code {code}: {message}" if code is not None else message
        if slot.failures >= self.options.crashloop_after:
            slot.crashed_on = slot.run or ""
            slot.set("crashloop", f"{slot.failures} exits at start in a row; {detail}")
            log.error("%s: crash loop (%s); not restarting", slot.key, detail)
            self._report_crashloop(slot, code)
            return
        delay = min(
            self.options.backoff_base_s * 2 ** (slot.failures - 1), self.options.backoff_max_s
        )
        slot.retry_at = now + delay
        slot.set("backoff", f"{detail}; restart in {delay:.1f}s")
        log.warning("%s: %s exited (%s); restart in %.1fs", slot.key, slot.instance, detail, delay)

    def _report_crashloop(self, slot: HeldSlot, code: int | None) -> None:
        event = CloudEvent.new(
            AgentCrashLooping(
                supervisor=self.supervisor_id,
                host=self.host,
                slot=slot.index,
                version=slot.version or "",
                exits=slot.failures,
                exit_code=code,
                message=slot.message,
            ),
            iid=slot.instance or new_id(),
            source=f"shoal://supervisor/{self.supervisor_id}",
            fleet=slot.fleet,
            agent=slot.agent,
            instance=slot.instance,
        )
        task = asyncio.get_running_loop().create_task(self.bus.publish(event))
        task.add_done_callback(_log_failure)

    async def drain(self, slots: list[HeldSlot]) -> None:
        """SIGTERM every process, SIGKILL what is left after ``drain_grace_s``; wait for all."""
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
        await self.gateway_keys.revoke_all()


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:16]


def _log_failure(task: asyncio.Task[object]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("could not publish: %s", task.exception())
