"""Helpers to compare a partitioned core with the single core on the same log."""

from __future__ import annotations

from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from eventsourcing.utils import get_topic

from shoal.aggregates import Goal, ShoalCore
from shoal.aggregates.instance import Instance
from shoal.aggregates.spendagg import ShoalSpend
from shoal.bus import ShoalSettings
from shoal.schemas import TaskAssigned, TaskCompleted, TaskStarted
from tests.aggregates.eventmix import Mix


def with_fleet_cap(settings: ShoalSettings, fleet: str, cap: Decimal, path: Path) -> ShoalSettings:
    """The settings with the builtin price table plus a spend cap on ``fleet``."""
    doc = yaml.safe_load(resources.files("shoal.schemas").joinpath("prices.yaml").read_text())
    doc["fleet_budgets"] = {fleet: str(cap)}
    path.write_text(yaml.safe_dump(doc))
    return settings.model_copy(update={"price_table": path})


def bare_task(mix: Mix) -> str:
    """A task with no goal (partitioned by its IID): assigned, started, one call, completed."""
    iid = mix._id("b")
    mix.sessions += 1
    orch, worker = mix.orchestrator, mix.worker
    mix.emit(TaskAssigned(capability="summarize", input={}), iid=iid, gid=None, by=orch)
    mix.emit(TaskStarted(capability="summarize"), iid=iid, gid=None, by=worker)
    mix.model_call(iid, None, worker)
    mix.emit(TaskCompleted(capability="summarize", output={}), iid=iid, gid=None, by=worker)
    return iid


def mixed(seed: int, total: int) -> Mix:
    """Goals with a bare task after each, until ``total`` events."""
    mix = Mix(seed=seed)
    mix.start_agents()
    while len(mix.events) < total:
        mix.goal()
        bare_task(mix)
    return mix


def answers(stores: list[ShoalCore], spend: ShoalCore | ShoalSpend, fleet: str) -> dict[str, Any]:
    """Everything the core answers: each session and goal (with its version: no event applied
    twice), each instance, the fleet's budget crossings; sessions must be in one store only."""
    sessions: dict[str, Any] = {}
    goals: dict[str, Any] = {}
    instances: list[dict[str, Any]] = []
    for app in stores:
        for s in app.sessions():
            assert s.iid not in sessions, f"session {s.iid} in two partitions"
            sessions[s.iid] = {**s.summary(), "version": s.version}
        for _, e in app.notifications([get_topic(Goal.Opened)]):
            g = app.goal(e.gid)  # type: ignore[attr-defined]
            assert g.gid not in goals, f"goal {g.gid} in two partitions"
            goals[g.gid] = {**g.summary_dict(), "version": g.version}
        registered = app.notifications([get_topic(Instance.Registered)])
        found = [app.instance(e.instance).summary() for _, e in registered]  # type: ignore[attr-defined,union-attr]
        if instances:
            assert found == instances, "partitions disagree on the instances"
        instances = found
    record = spend.fleet_spend(fleet)
    return {
        "sessions": sessions,
        "goals": goals,
        "instances": instances,
        "fleet_crossings": record.crossings if record is not None else None,
        "cost": sum((Decimal(s["cost_usd"]) for s in sessions.values()), Decimal(0)),
        "model_calls": sum(s["model_calls"] for s in sessions.values()),
    }


__all__ = ["answers", "bare_task", "mixed", "with_fleet_cap"]
