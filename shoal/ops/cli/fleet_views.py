"""``shoal fleet ls|describe|history``: what fleets are, run and were told (read only)."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from shoal.ops import fleets as ops
from shoal.ops.cli._common import JsonOption, cli, emit_json, require_store, run
from shoal.ops.cli.fleet import FleetArg, fleet_app
from shoal.ops.connect import open_bus

__all__ = ["describe", "history", "ls"]


@fleet_app.command("ls")
def ls(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Every fleet: running or stopped, desired vs live instances."""
    c = cli(ctx, as_json)

    async def body() -> list[ops.FleetView]:
        async with open_bus(c.settings, start=False, name="shoal-fleet") as bus:
            return await ops.list_fleets(bus)

    views = run(c, body())
    if c.json:
        emit_json([v.to_json() for v in views])
        return
    table = Table("fleet", "state", "agents (actual/desired)", "generation", "updated by")
    for v in views:
        agents = ", ".join(f"{a.name} {a.actual}/{a.desired}" for a in v.agents)
        state = "running" if v.running else "[yellow]stopped[/]"
        table.add_row(v.fleet, state, agents, str(v.generation), v.updated_by)
    c.out.print(table)


@fleet_app.command("describe")
def describe(ctx: typer.Context, name: FleetArg, as_json: JsonOption = False) -> None:
    """Desired vs actual per agent, versions, instances (host, uptime, heartbeat, session)."""
    c = cli(ctx, as_json)

    async def body() -> ops.FleetView:
        async with open_bus(c.settings, start=False, name="shoal-fleet") as bus:
            return await ops.describe_fleet(bus, name)

    view = run(c, body())
    if c.json:
        emit_json(view.to_json())
        return
    state = "running" if view.running else "[yellow]stopped[/]"
    c.out.print(f"fleet [bold]{view.fleet}[/]: {state} (generation {view.generation})")
    if view.description:
        c.out.print(escape(view.description))
    if view.budget_usd is not None:
        c.out.print(f"budget ${view.budget_usd} (enforced by the core: fleet kill switch)")
    for a in view.agents:
        versions = ", ".join(f"{v} x{n}" for v, n in sorted(a.versions.items())) or "-"
        colour = "green" if a.actual == a.desired else "yellow"
        prev = f", previous {a.previous_version}" if a.previous_version else ""
        c.out.print(
            f"\n[bold]{a.name}[/]: [{colour}]{a.actual}/{a.desired}[/] "
            f"version {a.version}{prev} (running: {versions})  {escape(a.target)}"
        )
        if a.canary is not None:
            c.out.print(
                f"  [yellow]canary[/]: {a.canary.replicas} slot(s) on {escape(a.canary.version)}, "
                f"judged by the core at {a.canary.min_samples} sessions of each version"
            )
        table = Table("slot")
        table.add_column("instance", no_wrap=True)  # ids are copied into `shoal kill`
        for column in ("version", "host", "pid", "uptime", "heartbeat", "session"):
            table.add_column(column)
        for i in a.instances:
            table.add_row(
                "-" if i.slot is None else str(i.slot),
                i.instance,
                i.version,
                i.host,
                str(i.pid),
                f"{i.uptime_s:.0f}s",
                f"{i.heartbeat_age_s:.1f}s ago",
                ", ".join(i.sessions) or "-",
            )
        if a.instances:
            c.out.print(table)
        for s in a.problems:
            c.out.print(
                f"  [red]slot {s.slot} {s.state}[/] on {s.host} ({s.supervisor}), "
                f"{s.restarts} restart(s): {escape(s.message)}"
            )
        if a.pending:
            c.out.print(
                f"  [yellow]{len(a.pending)} slot(s) pending[/] ({_spans(a.pending)}): "
                f"{escape(a.pending_reason)}"
            )


def _spans(slots: list[int]) -> str:
    """``[3, 4, 5, 9]`` → ``"3-5, 9"``."""
    spans: list[list[int]] = []
    for n in slots:
        if spans and spans[-1][1] == n - 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


@fleet_app.command("history")
def history(ctx: typer.Context, name: FleetArg, as_json: JsonOption = False) -> None:
    """Every command given to the fleet: when, who, what, why."""
    c = cli(ctx, as_json)
    require_store(c.settings, "fleets")

    async def body() -> list[Any]:
        app = ops.open_fleet_app(c.settings)
        try:
            return await ops.fleet_history(app, name)
        finally:
            app.close()

    entries = run(c, body())
    if c.json:
        emit_json([e.__dict__ for e in entries])
        return
    table = Table("#", "when", "command", "by", "why", "detail")
    for e in entries:
        table.add_row(
            str(e.version),
            e.at.strftime("%Y-%m-%d %H:%M:%S"),
            e.command,
            e.by,
            escape(e.reason),
            escape(_detail(e.command, e.detail)),
        )
    c.out.print(table)


def _detail(command: str, detail: dict[str, Any]) -> str:
    if command == "apply":
        agents = detail.get("spec", {}).get("agents", [])
        return ", ".join(f"{a['name']}={a['replicas']}@{a['version']}" for a in agents)
    if command == "scale":
        return ", ".join(f"{k}={v}" for k, v in detail.get("replicas", {}).items())
    if command == "canary":
        return (
            f"{detail.get('agent')} → {detail.get('version')} on {detail.get('replicas')} "
            f"slot(s), judged at {detail.get('min_samples')} sessions each"
        )
    evidence = detail.get("evidence")
    if evidence:  # the core's promotion or roll-back of a canary: the figures
        return (
            f"{detail.get('agent')} {evidence['to_version']}: "
            f"{evidence['successes_b']}/{evidence['n_b']} against {evidence['from_version']} "
            f"{evidence['successes_a']}/{evidence['n_a']}, p={evidence['p_value']}"
        )
    if command in ("upgrade", "rollback", "promote"):
        return f"{detail.get('agent')} → {detail.get('version')}"
    return ""
