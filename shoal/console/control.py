"""The console's actions and fleet reads: the very library functions the CLI calls.

A kill from the console is :func:`shoal.ops.kill.kill`, a scale is
:func:`shoal.ops.fleets.fleet_command`, with ``by`` the signed-in principal: the kill
bucket, the Fleet aggregate's history and the ``<prefix>.control.<scope>.<verb>`` audit
record it exactly as they record ``shoal kill`` or ``shoal fleet scale``. This is the only
module of the console that reaches into ``shoal.ops``; DESIGN orders ``console`` and ``ops``
side by side, so these functions are the shared control API (see ``docs/console.md``).

The Fleet application is opened per command, in a thread, on the configured persistence
(SQLite in the data dir on one host; PostgreSQL when the console runs elsewhere), as the
CLI does. Reading a fleet's history needs NATS only: the control stream's audit.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shoal.bus import Bus, KillScope, KillSwitch
from shoal.ops import deadletters as _deadletters
from shoal.ops import fleets as _fleets
from shoal.ops import kill as _kill
from shoal.ops.fleets import FleetView, kv_snapshot
from shoal.schemas import ControlAccepted
from shoal.schemas.fleet import FleetDesired

__all__ = [
    "FleetView",
    "HistoryEntry",
    "describe_fleet",
    "fleet_command",
    "fleet_history",
    "kill",
    "kv_snapshot",
    "list_deadletters",
    "list_fleets",
    "list_kills",
    "unkill",
]

FLEET_VERBS = ("scale", "upgrade", "rollback", "stop", "start")


async def kill(
    bus: Bus, scope: KillScope, name: str | None, *, by: str, reason: str
) -> _kill.KillResult:
    return await _kill.kill(bus, scope, name, by=by, reason=reason)


async def unkill(
    bus: Bus, scope: KillScope, name: str | None, *, by: str, reason: str
) -> KillSwitch:
    return await _kill.unkill(bus, scope, name, by=by, reason=reason)


async def list_kills(bus: Bus) -> list[tuple[str, KillSwitch]]:
    return await _kill.list_kills(bus)


async def list_deadletters(bus: Bus, limit: int = 100) -> tuple[list[Any], int]:
    """The newest dead letters (``DeadLetter``, bodies included) and how many there are."""
    return await _deadletters.list_deadletters(bus, None, limit)


async def list_fleets(bus: Bus) -> list[FleetView]:
    return await _fleets.list_fleets(bus)


async def describe_fleet(bus: Bus, name: str) -> FleetView:
    return await _fleets.describe_fleet(bus, name)


async def fleet_command(
    bus: Bus, name: str, verb: str, *, by: str, reason: str, **args: Any
) -> FleetDesired:
    """One fleet command on the Fleet aggregate, then desired state, then the audit."""
    app = await asyncio.to_thread(_fleets.open_fleet_app, bus.settings)
    try:
        return await _fleets.fleet_command(bus, app, name, verb, by=by, reason=reason, **args)
    finally:
        await asyncio.to_thread(app.close)


@dataclass(frozen=True)
class HistoryEntry:
    """One accepted command on a fleet, as the audit on ``SHOAL_CONTROL`` records it."""

    seq: int
    at: datetime
    command: str
    by: str
    reason: str
    detail: dict[str, Any]


async def fleet_history(bus: Bus, name: str) -> list[HistoryEntry]:
    """The fleet's accepted commands, oldest first, read from the control stream.

    Every change to a fleet (apply, scale, upgrade, rollback, stop, start — the CLI's, the
    console's, the core's canary verdicts) goes through ``fleet_command``/``apply_fleet``,
    which record it on ``<prefix>.control.fleet.<verb>``: so the history needs NATS only,
    not the Fleet aggregate's store, and a console on any host shows it.
    """
    stored = await bus.read(bus.subjects.control_scope("fleet"), stream=bus.topology.control.name)
    out = []
    for item in stored:
        ev = item.event
        if ev is None or not isinstance(ev.data, ControlAccepted) or ev.data.target != name:
            continue
        d = ev.data
        out.append(
            HistoryEntry(
                item.seq, ev.time, d.command.removeprefix("fleet."), d.by, d.reason, d.detail
            )
        )
    return out
