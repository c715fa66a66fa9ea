"""``shoal demo``: the whole system end to end on the embedded server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.tree import Tree

from shoal.bus import Bus, Stored
from shoal.bus.tracecontext import goal_trace_id
from shoal.ops.cli._common import Cli, JsonOption, cli, emit_json, run
from shoal.ops.cli.console import console_hint
from shoal.ops.connect import open_bus
from shoal.ops.events import event_summary, stored_to_json
from shoal.schemas import GoalCompleted, PolicyDecided, TaskFailed, utcnow

if TYPE_CHECKING:
    # The demo pulls in every part of shoal (DuckDB, pyarrow, eventsourcing, the agents):
    # imported when it runs, not at every CLI start (an agent instance's start-up included).
    from shoal.bus.genai import GenAI
    from shoal.ops.demo import DemoResult
    from shoal.projections.answers import CostAnswer, SuccessCostAnswer


@dataclass(frozen=True)
class DemoRun:
    """The demo's goal and, answered by the query service, what it cost."""

    result: DemoResult
    cost: CostAnswer
    per_success: SuccessCostAnswer


def demo(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Run the demo fleet on a goal: live progress, the result, the timeline and its cost."""
    from shoal.bus.genai import GenAI
    from shoal.bus.telemetry import setup_telemetry
    from shoal.ops.cli.cost import render_demo_summary

    c = cli(ctx, as_json)
    with setup_telemetry(c.settings, "shoal-demo") as telemetry:
        done = run(c, _demo(c, GenAI(telemetry)))
    if c.json:
        emit_json(_as_json(done))
    else:
        _print(c, done.result)
        render_demo_summary(c.out, done.cost, done.per_success)
        c.out.print(console_hint(c.settings, done.result.gid))
    if not isinstance(done.result.outcome.data, GoalCompleted):
        raise typer.Exit(1)


async def _demo(c: Cli, genai: GenAI) -> DemoRun:
    from shoal.ops.cli.cost import fetch_demo_summary
    from shoal.ops.inprocess import local_platform

    async with (
        open_bus(c.settings, name="shoal-demo") as bus,
        local_platform(bus) as platform,
    ):
        started = utcnow()
        result = await _run_goal(c, bus, genai)
        # The summary is the query service's answer over NATS, once the core has ingested
        # every event of the run (the service then catches up with the core by itself);
        # this run's only, though the data dir may hold earlier ones.
        await platform.caught_up()
        cost, per_success = await fetch_demo_summary(bus.nc, c.settings, since=started)
        return DemoRun(result, cost, per_success)


async def _run_goal(c: Cli, bus: Bus, genai: GenAI) -> DemoResult:
    from shoal.ops.demo import GoalProgress, demo_services, run_demo

    if c.json:
        return await run_demo(bus, genai=genai, services=demo_services(c.settings))
    with Progress(
        TextColumn("[bold]goal[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tasks"),
        TimeElapsedColumn(),
        console=c.err,
        transient=False,
    ) as bar:
        task = bar.add_task("planning…", total=None)

        def on_progress(p: GoalProgress) -> None:
            label = "done" if p.outcome is not None else "running"
            bar.update(task, total=p.total, completed=p.done, description=label)

        return await run_demo(
            bus, genai=genai, services=demo_services(c.settings), on_progress=on_progress
        )


def _print(c: Cli, result: DemoResult) -> None:
    data = result.outcome.data
    c.out.print(
        f"goal [bold]{result.gid}[/] {result.outcome.short_type} in {result.elapsed_s:.2f}s "
        f"(workspace {result.workspace})"
    )
    if isinstance(data, GoalCompleted):
        c.out.print(f"[green]{escape(data.summary)}[/]")
        for path, summary in sorted(data.result.get("documents", {}).items()):
            c.out.print(f"  [bold]{escape(path)}[/]: {escape(str(summary))}")
    else:
        c.out.print(f"[red]{escape(str(data.model_dump()))}[/]")
    c.out.print(_timeline(result))
    events = [s.event for s in result.events if s.event is not None]
    denied = [e.data for e in events if isinstance(e.data, PolicyDecided)]
    denied = [d for d in denied if d.decision != "allow"]
    retried = [e for e in events if isinstance(e.data, TaskFailed) and not e.data.final]
    c.out.print(
        f"{len(events)} events; {len(denied)} call(s) refused by policy "
        f"({', '.join(sorted({d.target for d in denied}))}); "
        f"{len(retried)} failed attempt(s) retried"
    )
    c.out.print(f"trace {goal_trace_id(result.gid):032x} (spans: shoal trace {result.gid})")


def _timeline(result: DemoResult) -> Tree:
    """The goal's events as a tree of sessions (children under the IID that delegated)."""
    from shoal.ops.demo import session_tree

    by_iid: dict[str, list[Stored]] = {}
    for item in result.events:
        if item.event is not None:
            by_iid.setdefault(item.event.iid, []).append(item)
    children = session_tree(result.events, result.root_iid)
    root = Tree(f"[bold]timeline[/] of goal {result.gid}")

    def add(node: Tree, iid: str) -> None:
        items = by_iid.get(iid, [])
        # The session's worker, not the agent that assigned it.
        actors = [i.event.agent for i in items if i.event and i.event.type != "shoal.task.assigned"]
        branch = node.add(f"[bold]{iid}[/] {next((a for a in actors if a), '')}")
        for item in items:
            assert item.event is not None
            e = item.event
            clock = e.time.strftime("%H:%M:%S.%f")[:-3]
            style = "red" if e.short_type in ("policy.decided", "task.failed") else "default"
            branch.add(f"[{style}]#{item.seq} {clock} {e.short_type}[/] {escape(event_summary(e))}")
        for child in children.get(iid, []):
            add(branch, child)

    for top in children.get(None, []):
        add(root, top)
    return root


def _as_json(done: DemoRun) -> dict[str, Any]:
    result = done.result
    return {
        "gid": result.gid,
        "iid": result.root_iid,
        "outcome": result.outcome.model_dump(mode="json", exclude_none=True),
        "tasks": {"total": result.progress.total, "done": result.progress.done},
        "elapsed_s": round(result.elapsed_s, 3),
        "trace_id": f"{goal_trace_id(result.gid):032x}",
        "events": [stored_to_json(s) for s in result.events],
        "cost": done.cost.model_dump(mode="json"),
        "cost_per_success": done.per_success.model_dump(mode="json"),
    }


def register(app: typer.Typer) -> None:
    app.command()(demo)
