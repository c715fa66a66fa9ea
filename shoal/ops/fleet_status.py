"""What ``fleet ls|describe`` show, and waiting for a rollout: read from the buckets.

What is *desired* comes from the fleets bucket (the Fleet aggregate's last word); what is
*running* from the presence and leases buckets; a view puts the two side by side per agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import ValidationError

from shoal.bus import Bus, Presence, kill_key
from shoal.errors import NotFound
from shoal.ops.slots import SUPERVISOR_KEY_PREFIX, SlotLease, SupervisorLease
from shoal.schemas import utcnow
from shoal.schemas.fleet import DesiredCanary, FleetDesired

__all__ = [
    "AgentView",
    "FleetView",
    "InstanceView",
    "RolloutResult",
    "SlotView",
    "describe_agent",
    "describe_fleet",
    "kv_snapshot",
    "list_fleets",
    "wait_rollout",
]


async def kv_snapshot(
    kv: KeyValue, keys: str = ">", timeout: float = 5.0
) -> dict[str, KeyValue.Entry]:
    """The current value of every live key matching ``keys`` (one watch, no per-key gets)."""
    watcher = await kv.watch(keys)
    out: dict[str, KeyValue.Entry] = {}
    try:
        async with asyncio.timeout(timeout):
            while True:
                entry = await watcher.updates(timeout)  # type: ignore[no-untyped-call]
                if entry is None:
                    break
                if entry.operation in (KV_DEL, KV_PURGE):
                    out.pop(entry.key, None)
                else:
                    out[entry.key] = entry
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return out


@dataclass(frozen=True)
class InstanceView:
    """One live instance, from its presence heartbeat."""

    instance: str
    agent: str
    version: str
    host: str
    pid: int
    slot: int | None
    supervisor: str | None
    started_at: datetime
    heartbeat_at: datetime
    uptime_s: float
    heartbeat_age_s: float
    sessions: list[str]


@dataclass(frozen=True)
class SlotView:
    """One claimed instance slot, from the supervisor's lease (crash loops show here)."""

    agent: str
    slot: int
    supervisor: str
    host: str
    state: str
    instance: str | None
    version: str | None
    restarts: int
    message: str


@dataclass
class AgentView:
    """Desired vs actual for one agent of a fleet."""

    name: str
    desired: int
    version: str
    target: str
    previous_version: str | None
    instances: list[InstanceView] = field(default_factory=list)
    slots: list[SlotView] = field(default_factory=list)
    pending_reason: str = ""
    canary: DesiredCanary | None = None

    @property
    def actual(self) -> int:
        return len(self.instances)

    @property
    def pending(self) -> list[int]:
        """Desired slots no supervisor holds yet (why: :attr:`pending_reason`)."""
        held = {s.slot for s in self.slots}
        return [i for i in range(self.desired) if i not in held]

    @property
    def versions(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for i in self.instances:
            counts[i.version] = counts.get(i.version, 0) + 1
        return counts

    @property
    def problems(self) -> list[SlotView]:
        return [s for s in self.slots if s.state in ("backoff", "crashloop", "failed", "killed")]

    def failing(self, version: str) -> SlotView | None:
        """The first slot whose instance of ``version`` fails to start, if any."""
        return next((s for s in self.problems if s.version == version), None)


@dataclass
class FleetView:
    """``fleet describe``: the desired document and what runs, per agent."""

    fleet: str
    running: bool
    generation: int
    updated_by: str
    updated_at: datetime | None
    agents: list[AgentView]
    description: str = ""
    budget_usd: Decimal | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "fleet": self.fleet,
            "description": self.description,
            "budget_usd": None if self.budget_usd is None else str(self.budget_usd),
            "running": self.running,
            "generation": self.generation,
            "updated_by": self.updated_by,
            "updated_at": self.updated_at,
            "agents": [
                {
                    "name": a.name,
                    "desired": a.desired,
                    "actual": a.actual,
                    "version": a.version,
                    "previous_version": a.previous_version,
                    "target": a.target,
                    "versions": a.versions,
                    "instances": [i.__dict__ for i in a.instances],
                    "slots": [s.__dict__ for s in a.slots],
                    "pending": a.pending,
                    "pending_reason": a.pending_reason if a.pending else "",
                    "canary": None if a.canary is None else a.canary.model_dump(mode="json"),
                }
                for a in self.agents
            ],
        }


async def _desired(bus: Bus) -> dict[str, FleetDesired]:
    kv = await bus.kv(bus.topology.fleets.name)
    return {
        key: FleetDesired.model_validate_json(entry.value or b"{}")
        for key, entry in (await kv_snapshot(kv)).items()
    }


async def list_fleets(bus: Bus) -> list[FleetView]:
    """Every fleet with a desired state, with its live instances (no slot detail)."""
    desired = await _desired(bus)
    presence = await kv_snapshot(await bus.kv(bus.topology.presence.name))
    return [_view(d, presence, {}) for _, d in sorted(desired.items())]


async def describe_fleet(bus: Bus, name: str) -> FleetView:
    """Desired vs actual per agent, instances from presence, slot states from leases."""
    kv = await bus.kv(bus.topology.fleets.name)
    try:
        entry = await kv.get(name)
    except Exception as e:  # KeyNotFoundError / InvalidKeyError: both mean "no such fleet"
        raise NotFound(f"no fleet named {name!r} in desired state: apply a spec first") from e
    desired = FleetDesired.model_validate_json(entry.value or b"{}")
    presence = await kv_snapshot(await bus.kv(bus.topology.presence.name), f"{name}.>")
    leases_kv = await bus.kv(bus.topology.leases.name)
    leases = await kv_snapshot(leases_kv, f"{name}.>")
    view = _view(desired, presence, leases)
    reason = await _pending_reason(bus, name, await kv_snapshot(leases_kv, "_supervisor.>"))
    for agent in view.agents:
        agent.pending_reason = reason
    return view


async def _pending_reason(bus: Bus, fleet: str, supervisors: dict[str, KeyValue.Entry]) -> str:
    """Why desired slots of ``fleet`` may have no supervisor (the same for all its slots)."""
    kill = await bus.kv(bus.topology.kill.name)
    for key in (kill_key("all"), kill_key("fleet", fleet)):
        with contextlib.suppress(KeyNotFoundError):
            if (await kill.get(key)).value is not None:
                return f"kill switch {key} is set"
    serving: dict[str, SupervisorLease | None] = {}
    for key, entry in supervisors.items():
        sup_id = key.removeprefix(SUPERVISOR_KEY_PREFIX + ".")
        try:
            lease: SupervisorLease | None = SupervisorLease.model_validate_json(entry.value or b"")
        except ValidationError:
            lease = None
        if lease is None or lease.fleets is None or fleet in lease.fleets:
            serving[sup_id] = lease
    if not supervisors:
        return "no supervisor is running"
    if not serving:
        return f"no running supervisor serves fleet {fleet} (see their --fleet)"
    known = {k: v for k, v in serving.items() if v is not None}
    if len(known) == len(serving) and all(v.full for v in known.values()):
        full = ", ".join(
            f"{k} {v.held}/{v.capacity} ({v.capacity_source})" for k, v in sorted(known.items())
        )
        return f"every supervisor is at capacity: {full}"
    return "waiting for a supervisor to claim it"


def _view(
    desired: FleetDesired,
    presence: dict[str, KeyValue.Entry],
    leases: dict[str, KeyValue.Entry],
) -> FleetView:
    now = utcnow()
    agents = {
        name: AgentView(
            name, desired.replicas(name), d.version, d.runs, d.previous_version, canary=d.canary
        )
        for name, d in desired.agents.items()
    }
    for entry in presence.values():
        p = Presence.model_validate_json(entry.value or b"{}")
        if p.fleet != desired.fleet:
            continue
        view = agents.setdefault(p.agent, AgentView(p.agent, 0, "", "", None))
        view.instances.append(
            InstanceView(
                instance=p.instance,
                agent=p.agent,
                version=p.version,
                host=p.host,
                pid=p.pid,
                slot=p.slot,
                supervisor=p.supervisor,
                started_at=p.started_at,
                heartbeat_at=p.heartbeat_at,
                uptime_s=round((now - p.started_at).total_seconds(), 1),
                heartbeat_age_s=round((now - p.heartbeat_at).total_seconds(), 1),
                sessions=list(p.current_sessions),
            )
        )
    for key, entry in leases.items():
        _, agent, slot = key.split(".")
        lease = SlotLease.model_validate_json(entry.value or b"{}")
        view = agents.setdefault(agent, AgentView(agent, 0, "", "", None))
        view.slots.append(
            SlotView(
                agent=agent,
                slot=int(slot),
                supervisor=lease.supervisor,
                host=lease.host,
                state=lease.state,
                instance=lease.instance,
                version=lease.version,
                restarts=lease.restarts,
                message=lease.message,
            )
        )
    for view in agents.values():
        view.instances.sort(key=lambda i: (i.slot if i.slot is not None else 1 << 30, i.instance))
        view.slots.sort(key=lambda s: s.slot)
    return FleetView(
        fleet=desired.fleet,
        running=desired.running,
        generation=desired.generation,
        updated_by=desired.updated_by,
        updated_at=desired.updated_at,
        agents=list(agents.values()),
        description=desired.description,
        budget_usd=desired.budget_usd,
    )


@dataclass(frozen=True)
class RolloutResult:
    """How an upgrade ended: all new instances up, or stopped with the reason."""

    done: bool
    message: str
    view: FleetView


async def describe_agent(bus: Bus, name: str, agent: str) -> tuple[FleetView, AgentView]:
    """The fleet's view and its agent's; :class:`NotFound` when the fleet lacks the agent."""
    view = await describe_fleet(bus, name)
    a = next((x for x in view.agents if x.name == agent), None)
    if a is None:
        raise NotFound(f"fleet {name} has no agent {agent!r}")
    return view, a


async def wait_rollout(
    bus: Bus, name: str, agent: str, version: str, *, timeout: float, poll_s: float = 0.5
) -> RolloutResult:
    """Follow a rolling upgrade until every replica runs ``version`` or one fails to start."""
    deadline = time.monotonic() + timeout
    while True:
        view, a = await describe_agent(bus, name, agent)
        if a.version != version:
            return RolloutResult(False, f"desired version is now {a.version}, not {version}", view)
        s = a.failing(version)
        if s is not None:
            return RolloutResult(
                False,
                f"rollout stopped: slot {s.slot} on {s.host} ({s.state}) at version {version}: "
                f"{s.message or 'no heartbeat'}; old instances were kept — "
                f"'shoal fleet rollback {name} {agent}' to go back",
                view,
            )
        if a.versions.get(version, 0) == a.desired and a.actual == a.desired:
            return RolloutResult(True, f"{a.desired} instance(s) of {agent} run {version}", view)
        if time.monotonic() > deadline:
            return RolloutResult(
                False,
                f"rollout not finished after {timeout:.0f}s: {a.versions} of {a.desired} "
                "(is a supervisor running?)",
                view,
            )
        await asyncio.sleep(poll_s)
