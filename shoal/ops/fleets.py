"""Fleet commands (library side of ``shoal fleet …``) and what ``fleet ls|describe`` show.

Every command goes the same way: run it on the Fleet aggregate (which validates it against
the fleet's state and records who, when, why), then write the aggregate's desired state into
the fleets KV bucket for supervisors, then record ``control.accepted`` on
``<prefix>.control.fleet.<verb>``. A refused command records ``control.refused`` with the
reason and raises it. What is *running* comes from the presence and leases buckets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import ValidationError

from shoal.bus import Bus, Presence, ShoalSettings, kill_key
from shoal.errors import InvalidSpec, NotFound, Refused, ShoalError
from shoal.ops.registry import gate_apply, gate_upgrade
from shoal.ops.slots import SUPERVISOR_KEY_PREFIX, SlotLease, SupervisorLease

if TYPE_CHECKING:  # the core (eventsourcing…) loads when a command needs it, not at CLI start
    from shoal.aggregates.fleet import FleetApplication, FleetHistoryEntry
from shoal.schemas import CloudEvent, ControlAccepted, ControlRefused, EventData, new_id, utcnow
from shoal.schemas.fleet import DesiredCanary, FleetDesired, FleetSpec, parse_fleet_spec

__all__ = [
    "AgentView",
    "FleetView",
    "InstanceView",
    "RolloutResult",
    "SlotView",
    "apply_fleet",
    "control_event",
    "describe_agent",
    "describe_fleet",
    "fleet_command",
    "fleet_history",
    "kv_snapshot",
    "list_fleets",
    "load_fleet_spec",
    "open_fleet_app",
    "parse_replicas",
    "wait_rollout",
    "write_desired",
]

log = logging.getLogger("shoal.fleets")


def open_fleet_app(settings: ShoalSettings) -> FleetApplication:
    """The Fleet application on this machine's persistence (SQLite in the data dir)."""
    from shoal.aggregates.fleet import FleetApplication
    from shoal.aggregates.persistence import application_env

    return FleetApplication(env=application_env(settings, "fleets"))


def load_fleet_spec(path: str) -> FleetSpec:
    """Read and parse a fleet spec file; unreadable or invalid is :class:`InvalidSpec`."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise InvalidSpec(f"cannot read fleet spec {path}: {e.strerror or e}") from e
    return parse_fleet_spec(text, origin=path)


def parse_replicas(pairs: list[str]) -> dict[str, int]:
    """``["worker=5", "orchestrator=1"]`` → ``{"worker": 5, "orchestrator": 1}``."""
    out: dict[str, int] = {}
    for pair in pairs:
        agent, sep, count = pair.partition("=")
        try:
            if not sep or not agent:
                raise ValueError
            out[agent] = int(count)
        except ValueError:
            raise Refused(f"{pair!r} is not AGENT=N (e.g. worker=5)") from None
    return out


def control_event(
    data: EventData, *, by: str, fleet: str | None = None, instance: str | None = None
) -> CloudEvent:
    """An audit event of an operator command (its own IID: one command, one interaction)."""
    return CloudEvent.new(
        data,
        iid=new_id(),
        source=f"shoal://cli/{by}",
        fleet=fleet,
        instance=instance,
        principal=by,
    )


async def _audit(
    bus: Bus, verb: str, fleet: str, by: str, reason: str, error: ShoalError | None, detail: Any
) -> None:
    data: EventData
    if error is None:
        data = ControlAccepted(
            command=f"fleet.{verb}", target=fleet, by=by, reason=reason, detail=detail
        )
    else:
        data = ControlRefused(command=f"fleet.{verb}", target=fleet, by=by, reason=str(error))
    fleet_token = fleet if fleet and "." not in fleet and " " not in fleet else None
    await bus.publish(
        control_event(data, by=by, fleet=fleet_token), bus.subjects.control("fleet", verb)
    )


async def write_desired(bus: Bus, desired: FleetDesired, attempts: int = 20) -> bool:
    """Write the fleet's desired document unless the bucket holds a newer one.

    Compare-and-set on the key's revision: read the document there, refuse to replace one
    of the same or a higher ``generation`` (the Fleet aggregate's version), else update on
    the revision read (create when there is none). Two commands writing at once, or a write
    delayed past a later one, therefore leave the newest generation in the bucket. Returns
    whether this document was written.
    """
    kv = await bus.kv(bus.topology.fleets.name)
    body = desired.model_dump_json().encode()
    for _ in range(attempts):
        try:
            entry: KeyValue.Entry | None = await kv.get(desired.fleet)
        except KeyNotFoundError:  # never written, or deleted
            entry = None
        current = _generation(entry)
        if current is not None and current >= desired.generation:
            log.info(
                "fleet %s: bucket holds generation %d; not writing %d",
                desired.fleet,
                current,
                desired.generation,
            )
            return False
        try:
            if entry is None:
                await kv.create(desired.fleet, body)
            else:
                await kv.update(desired.fleet, body, last=entry.revision)
        except KeyWrongLastSequenceError:
            continue  # written by someone else since we read: look again
        return True
    raise Refused(f"fleet {desired.fleet}: desired state kept changing under this write")


def _generation(entry: KeyValue.Entry | None) -> int | None:
    if entry is None or not entry.value:
        return None
    try:
        return FleetDesired.model_validate_json(entry.value).generation
    except ValidationError:
        return None  # not a document we can read: replace it with a valid one


async def apply_fleet(
    bus: Bus, app: FleetApplication, spec: FleetSpec, *, by: str, reason: str = ""
) -> FleetDesired:
    """Register the fleet or apply the spec to it; return the desired state written."""
    detail = {"agents": {a.name: f"{a.version} x{a.replicas}" for a in spec.agents}}
    try:
        await gate_apply(bus.settings, spec, by)  # registry drafts; production: certified only
        fleet = await asyncio.to_thread(app.apply_spec, spec, by, reason)
    except (Refused, NotFound) as e:
        await _audit(bus, "apply", spec.fleet, by, reason, e, detail)
        raise
    desired = fleet.desired()
    await write_desired(bus, desired)
    await _audit(bus, "apply", spec.fleet, by, reason, None, detail)
    return desired


async def fleet_command(
    bus: Bus,
    app: FleetApplication,
    name: str,
    verb: str,
    *,
    by: str,
    reason: str = "",
    **args: Any,
) -> FleetDesired:
    """Run start/stop/scale/upgrade/rollback on the aggregate, then publish desired state."""
    try:
        if verb == "upgrade":
            await gate_upgrade(bus.settings, app, name, by=by, **args)
        fleet = await asyncio.to_thread(app.command, name, verb, by, reason, **args)
    except (Refused, NotFound) as e:
        await _audit(bus, verb, name, by, reason, e, args)
        raise
    desired = fleet.desired()
    await write_desired(bus, desired)
    await _audit(bus, verb, name, by, reason, None, args)
    return desired


async def fleet_history(app: FleetApplication, name: str) -> list[FleetHistoryEntry]:
    return await asyncio.to_thread(app.history, name)


# -- reading what runs ------------------------------------------------------------------------


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
