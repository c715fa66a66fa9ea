"""``shoal session ls|show|replay``.

``ls`` and ``show`` read the core's store directly (the SQLite file under the data dir is
opened read-side, concurrently with a running core; or PostgreSQL); with a partitioned core,
every partition's store, read as one (:mod:`shoal.aggregates.readers`). ``replay`` reads the
raw events from JetStream and needs no core at all.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Column, Table
from rich.text import Text
from rich.tree import Tree

from shoal.aggregates import PriceTable, Session
from shoal.aggregates.readers import CoreReader, core_partitions, first_dbname, open_reader
from shoal.aggregates.replay import Replay, ReplayNode, fold_replay, parse_at
from shoal.bus import ShoalSettings
from shoal.ops.cli._common import Cli, JsonOption, cli, emit_json, require_store, run
from shoal.ops.cli.layout import fit
from shoal.ops.connect import open_bus
from shoal.schemas import utcnow

__all__ = [
    "load_goal",
    "load_session",
    "register",
    "render_replay",
    "select_sessions",
    "show_goal",
]

QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="Only the ids, one a line (for scripts).")
]

session_app = typer.Typer(help="Find, inspect and replay sessions (IIDs).", no_args_is_help=True)


def open_store(settings: ShoalSettings) -> CoreReader:
    """The core's store(s) for reading: refused if nothing was recorded here yet."""
    count = core_partitions(settings)
    require_store(settings, first_dbname(count))
    return open_reader(settings, count)


def select_sessions(
    settings: ShoalSettings,
    *,
    fleet: str | None = None,
    status: str | None = None,
    stuck: bool = False,
    limit: int = 50,
    now: datetime | None = None,
) -> list[Session]:
    """The ``limit`` most recent matching sessions, oldest first.

    ``stuck`` means running and flagged stuck, or silent for longer than ``stuck_after_s``.
    Sessions are loaded newest first and the scan stops at ``limit`` matches.
    """
    app = open_store(settings)
    try:
        cutoff = (now or utcnow()) - timedelta(seconds=settings.stuck_after_s)
        found: list[Session] = []
        for iid in reversed(app.session_iids()):
            if len(found) >= limit:
                break
            s = app.session(iid)
            if fleet and s.fleet != fleet:
                continue
            if status and s.status != status:
                continue
            if stuck and not (
                s.status == "running" and ("stuck" in s.flags or s.modified_on < cutoff)
            ):
                continue
            found.append(s)
        return found[::-1]
    finally:
        app.close()


def load_session(settings: ShoalSettings, iid: str) -> Session:
    """One session from the core's store (:class:`~shoal.errors.NotFound` if unknown)."""
    app = open_store(settings)
    try:
        return app.session(iid)
    finally:
        app.close()


@session_app.command("ls")
def ls(
    ctx: typer.Context,
    fleet: Annotated[str | None, typer.Option("--fleet", help="Only this fleet.")] = None,
    status: Annotated[
        str | None, typer.Option("--status", help="open, running, completed, failed or killed.")
    ] = None,
    stuck: Annotated[
        bool, typer.Option("--stuck", help="Only stuck sessions (flagged, or silent too long).")
    ] = False,
    awaiting: Annotated[
        bool, typer.Option("--awaiting", help="Only sessions waiting for a person's reply.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", help="Show the N most recent.")] = 50,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """List sessions the core has recorded, most recent last."""
    c = cli(ctx, as_json)
    status = "awaiting_input" if awaiting else status

    async def _ls() -> list[Session]:
        return await asyncio.to_thread(
            select_sessions, c.settings, fleet=fleet, status=status, stuck=stuck, limit=limit
        )

    sessions = run(c, _ls())
    if quiet:
        for s in sessions:
            c.out.print(s.iid)
        return
    if c.json:
        emit_json([s.summary() for s in sessions])
        return
    if not sessions:
        c.out.print("no sessions awaiting input" if awaiting else "no sessions")
        return
    table = Table(
        _iid_column(), "fleet", "agent", "capability", "status", "cost $", "calls", "flags"
    )
    for s in sessions:
        table.add_row(
            s.iid,
            s.fleet or "",
            s.agent or "",
            s.capability or "",
            s.status,
            _usd(s.cost_usd),
            f"{s.model_calls}m/{s.tool_calls}t",
            ",".join(s.flags),
        )
    keep = ("IID", "status", "cost $")
    c.out.print(fit(table, c.out, drop=("flags", "calls", "capability", "fleet"), keep=keep))


@session_app.command("show")
def show(
    ctx: typer.Context,
    iid: Annotated[str, typer.Argument(help="The session's IID.")],
    as_json: JsonOption = False,
) -> None:
    """A session's recorded state: who, status, calls, decisions, cost, outcome."""
    c = cli(ctx, as_json)

    async def _show() -> Session:
        return await asyncio.to_thread(load_session, c.settings, iid)

    summary = run(c, _show()).summary()
    if c.json:
        emit_json(summary)
        return
    table = Table("field", "value", show_header=False)
    for key, value in summary.items():
        table.add_row(key, escape(_plain(value)))
    c.out.print(table)


@session_app.command("replay")
def replay(
    ctx: typer.Context,
    iid: Annotated[str, typer.Argument(help="The session's IID.")],
    at: Annotated[
        str | None,
        typer.Option("--at", help="Stop at this stream sequence number or ISO time."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Re-fold a session (and its child sessions) from the raw event log; print the timeline."""
    c = cli(ctx, as_json)

    async def _replay() -> Replay:
        cut = parse_at(at)
        prices = PriceTable.load(c.settings.price_table)
        async with open_bus(c.settings, start=False) as bus:
            folded = await fold_replay(bus, iid, prices, cut)
        return folded.replay(iid)

    result = run(c, _replay())
    if c.json:
        emit_json(result.to_json())
        return
    render_replay(c, result)


def render_replay(c: Cli, result: Replay) -> None:
    """The timeline as a tree, then the reconstructed state of the root session."""
    cut = f" as of {result.at}" if result.at is not None else ""
    tree = Tree(f"[bold]{result.root.iid}[/]{cut}  total ${_usd(result.root.total_cost())}")
    _grow(tree, result.root)
    c.out.print(tree)
    state = result.root.session
    c.out.print(
        f"state{cut}: status={state.status} attempts={state.attempts} retries={state.retries} "
        f"model_calls={state.model_calls} tool_calls={state.tool_calls} "
        f"denials={state.denials} errors={state.errors} cost=${_usd(state.cost_usd)} "
        f"reported=${_usd(state.reported_cost_usd)} flags={','.join(state.flags) or '-'} "
        f"outcome={state.outcome or '-'}"
    )
    if result.malformed:
        c.err.print(f"[yellow]{result.malformed} malformed message(s) skipped[/]")


def _grow(branch: Tree, node: ReplayNode) -> None:
    for item in node.items():
        if isinstance(item, ReplayNode):
            s = item.session
            label = (
                f"[bold cyan]{item.iid}[/] {escape(s.capability or '')} "
                f"[{_status_style(s.status)}]{s.status}[/] ${_usd(item.total_cost())}"
            )
            _grow(branch.add(label), item)
            continue
        cost = f" ${_usd(item.cost_usd)}" if item.cost_usd is not None else ""
        decision = f" [{_decision_style(item.decision)}]{item.decision}[/]" if item.decision else ""
        branch.add(
            f"[dim]#{item.seq} {item.time.strftime('%H:%M:%S.%f')[:-3]}[/] "
            f"{escape(item.actor)} [bold]{item.type}[/]{cost}{decision} "
            f"[dim]{escape(item.detail)}[/]"
        )


def _iid_column(header: str = "IID") -> Column:
    # IIDs are what an operator copies into the next command: never cut them.
    return Column(header, no_wrap=True, min_width=26)


def _status_style(status: str) -> str:
    return {"completed": "green", "failed": "red", "killed": "red"}.get(status, "yellow")


def _decision_style(decision: str) -> str:
    return "red" if decision in ("deny", "denied", "error", "timeout") else "yellow"


def _usd(value: Decimal | None) -> str:
    if value is None:
        return "-"
    return f"{value:.8f}".rstrip("0").rstrip(".") if value else "0"


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    return "-" if value is None else str(value)


def register(app: typer.Typer) -> None:
    from shoal.ops.cli import converse

    converse.register(session_app)
    app.add_typer(session_app, name="session")


def load_goal(settings: ShoalSettings, gid: str) -> dict[str, Any]:
    """A goal from the core's store with all its sessions and the total server-side cost."""
    app = open_store(settings)
    try:
        goal = app.goal(gid)
        sessions = app.goal_sessions(goal)
        return {
            **goal.summary_dict(),
            "total_cost_usd": str(sum((s.cost_usd for s in sessions), Decimal(0))),
            "sessions": [s.summary() for s in sessions],
        }
    finally:
        app.close()


def select_goals(
    settings: ShoalSettings, *, fleet: str | None, status: str | None, limit: int
) -> list[dict[str, Any]]:
    """The ``limit`` most recent matching goals (summaries with their cost), oldest first."""
    app = open_store(settings)
    try:
        gids = app.goal_gids()
        found: list[dict[str, Any]] = []
        for gid in reversed(gids):
            if len(found) >= limit:
                break
            goal = app.goal(gid)
            if (fleet and goal.fleet != fleet) or (status and goal.status != status):
                continue
            found.append({**goal.summary_dict(), "total_cost_usd": str(app.goal_cost(goal))})
        return found[::-1]
    finally:
        app.close()


def list_goals(
    c: Cli, *, fleet: str | None, status: str | None, limit: int, quiet: bool = False
) -> None:
    """``shoal goal ls``."""

    async def _load() -> list[dict[str, Any]]:
        return await asyncio.to_thread(
            select_goals, c.settings, fleet=fleet, status=status, limit=limit
        )

    goals = run(c, _load())
    if quiet:
        for g in goals:
            c.out.print(g["gid"])
        return
    if c.json:
        emit_json(goals)
        return
    table = Table(_iid_column("GID"), "fleet", "status", "sessions", "cost $", "text")
    for g in goals:
        table.add_row(
            g["gid"],
            g["fleet"] or "",
            Text(g["status"], style=_status_style(g["status"])),
            str(len(g["iids"])),
            _usd(Decimal(g["total_cost_usd"])),
            g["text"],
        )
    c.out.print(fit(table, c.out, drop=("sessions", "fleet"), keep=("GID", "status", "cost $")))
    if not goals:
        c.out.print("(no goals)")


async def _waiting_for_fleet(c: Cli, goal: dict[str, Any]) -> bool:
    """A goal nobody took whose fleet is not declared: it waits for one (``--wait-for-fleet``)."""
    from shoal.ops.targets import fleet_exists

    if goal["status"] not in ("open", "running") or len(goal["sessions"]) > 1 or not goal["fleet"]:
        return False
    try:
        async with open_bus(c.settings, start=False, provision=False, name="shoal-goal") as bus:
            return not await fleet_exists(bus, goal["fleet"])
    except Exception:  # no server to ask: say nothing rather than guess
        return False


def show_goal(c: Cli, gid: str) -> None:
    """``shoal goal show``: the goal, a table of its sessions, the total cost."""

    async def _load() -> dict[str, Any]:
        goal = await asyncio.to_thread(load_goal, c.settings, gid)
        if await _waiting_for_fleet(c, goal):
            goal["status"] = "waiting for a fleet"
        return goal

    goal = run(c, _load())
    if c.json:
        emit_json(goal)
        return
    c.out.print(
        f"goal [bold]{gid}[/] fleet={goal['fleet']} status={goal['status']} "
        f"by={goal['principal']} outcome={goal['outcome'] or '-'}"
    )
    if goal["text"]:
        c.out.print(escape(goal["text"]))
    table = Table(
        _iid_column(),
        _iid_column("parent"),
        "capability",
        "agent",
        "status",
        "retries",
        "calls",
        "cost $",
    )
    for s in goal["sessions"]:
        table.add_row(
            s["iid"],
            s["parentiid"] or "",
            s["capability"] or "",
            s["agent"] or "",
            s["status"],
            str(s["retries"]),
            f"{s['model_calls']}m/{s['tool_calls']}t",
            _usd(Decimal(s["cost_usd"])),
        )
    drop = ("parent", "retries", "calls", "capability")
    c.out.print(fit(table, c.out, drop=drop, keep=("IID", "status", "cost $")))
    budget = f" (budget ${goal['budget_usd']})" if goal["budget_usd"] else ""
    c.out.print(
        f"{len(goal['sessions'])} sessions, total ${_usd(Decimal(goal['total_cost_usd']))}{budget}"
    )
