"""Fleet commands (library side of ``shoal fleet …``); what ``fleet ls|describe`` show is in
:mod:`shoal.ops.fleet_status` (re-exported here).

Every command goes the same way: run it on the Fleet aggregate (which validates it against
the fleet's state and records who, when, why), then write the aggregate's desired state into
the fleets KV bucket for supervisors, then record ``control.accepted`` on
``<prefix>.control.fleet.<verb>``. A refused command records ``control.refused`` with the
reason and raises it. What is *running* comes from the presence and leases buckets.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from shoal.bus import Bus, ShoalSettings
from shoal.errors import InvalidSpec, NotFound, Refused, ShoalError
from shoal.ops.registry import gate_apply, gate_upgrade

if TYPE_CHECKING:  # the core (eventsourcing…) loads when a command needs it, not at CLI start
    from shoal.aggregates.fleet import FleetApplication, FleetHistoryEntry
from shoal.schemas import CloudEvent, ControlAccepted, ControlRefused, EventData, new_id
from shoal.schemas.fleet import FleetDesired, FleetSpec, parse_fleet_spec

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

from shoal.ops.fleet_status import (
    AgentView,
    FleetView,
    InstanceView,
    RolloutResult,
    SlotView,
    describe_agent,
    describe_fleet,
    kv_snapshot,
    list_fleets,
    wait_rollout,
)

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
