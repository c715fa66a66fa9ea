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
from shoal.ops.cli.layout import middle
from shoal.ops.connect import open_bus
from shoal.ops.events import event_summary, stored_to_json
from shoal.schemas import CloudEvent, GoalCompleted, PolicyDecided, TaskFailed, utcnow

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
        done = run(c, _demo(c, GenAI(telemetry)), bounded=False)
    if c.json:
        emit_json(_as_json(done))
    else:
        _print(c, done.result)
        render_demo_summary(c.out, done.cost, done.per_success)
        _summary(c, done)
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
    head = f"goal [bold]{result.gid}[/] {result.outcome.short_type} in {result.elapsed_s:.2f}s"
    where = f"(workspace {escape(str(result.workspace))})"
    fits = len(head) - len("[bold][/]") + len(where) < c.out.width
    if not fits:
        where = escape(middle(f"(workspace {result.workspace})", c.out.width))
    c.out.print(f"{head} {where}" if fits else f"{head}\n{where}")
    if isinstance(data, GoalCompleted):
        c.out.print(f"[green]{escape(data.summary)}[/]")
        for path, summary in sorted(data.result.get("documents", {}).items()):
            line = middle(f"{path}: {summary}", c.out.width - 2)
            c.out.print(f"  {escape(line)}")
    else:
        c.out.print(f"[red]{escape(str(data.model_dump()))}[/]")
    c.out.print(_timeline(result, c.out.width))
    denied, retried = _denials(result), _retries(result)
    events = [s for s in result.events if s.event is not None]
    c.out.print(
        f"{len(events)} events; {len(denied)} call(s) refused by policy "
        f"({', '.join(sorted({e.data.target for e in denied}))}); "  # type: ignore[attr-defined]
        f"{len(retried)} failed attempt(s) retried"
    )


def _denials(result: DemoResult) -> list[CloudEvent]:
    return [
        s.event
        for s in result.events
        if s.event is not None
        and isinstance(s.event.data, PolicyDecided)
        and s.event.data.decision != "allow"
    ]


def _retries(result: DemoResult) -> list[CloudEvent]:
    return [
        s.event
        for s in result.events
        if s.event is not None and isinstance(s.event.data, TaskFailed) and not s.event.data.final
    ]


def _summary(c: Cli, done: DemoRun) -> None:
    """The last lines: what a person reads at a glance, and where to look deeper."""
    result = done.result
    data = result.outcome.data
    width = max(c.out.width - 10, 20)
    ok = isinstance(data, GoalCompleted)
    what = data.summary if isinstance(data, GoalCompleted) else str(data.model_dump())
    rows: list[tuple[str, str | tuple[str, str]]] = [
        ("result", f"{'completed' if ok else 'FAILED'} in {result.elapsed_s:.2f}s: {what}"),
        ("goal", result.gid),
        ("cost", f"${done.cost.total_usd:.6f} for {done.cost.calls} model call(s), server-side"),
    ]
    for e in _denials(result):
        d = e.data
        assert isinstance(d, PolicyDecided)
        rows.append(("denied", (f"{d.target} in {e.iid}: ", f"{d.decision}, rule {d.rule}")))
    for e in _retries(result):
        f = e.data
        assert isinstance(f, TaskFailed)
        rows.append(("retried", (f"{e.iid} attempt {f.attempt}: ", f.error)))
    rows += [
        ("look", f"shoal goal show {result.gid}"),
        ("", f"shoal session replay {result.root_iid}"),
        ("", f"shoal trace {result.gid}"),
    ]
    c.out.print("[bold]summary[/]")
    for label, value in rows:
        # Ids and commands are whole (they are copied); prose is shortened in the middle.
        if isinstance(value, tuple):
            whole, prose = value
            text = whole + middle(prose, max(width - len(whole), 12))
        else:
            text = value if label in ("goal", "look", "") else middle(value, width)
        c.out.print(f"  {label:<8}{escape(text)}")


def _timeline(result: DemoResult, width: int = 100) -> Tree:
    """The goal's events as a tree of sessions (children under the IID that delegated).

    Each line fits the width: sequence and type first, whole; the summary shortened in the
    middle so its end (the decision, ``final=False``) survives; the clock only when wide.
    """
    from shoal.ops.demo import session_tree

    by_iid: dict[str, list[Stored]] = {}
    for item in result.events:
        if item.event is not None:
            by_iid.setdefault(item.event.iid, []).append(item)
    children = session_tree(result.events, result.root_iid)
    root = Tree(f"[bold]timeline[/] of goal {result.gid}")

    def add(node: Tree, iid: str, depth: int) -> None:
        items = by_iid.get(iid, [])
        # The session's worker, not the agent that assigned it.
        actors = [i.event.agent for i in items if i.event and i.event.type != "shoal.task.assigned"]
        branch = node.add(f"[bold]{iid}[/] {next((a for a in actors if a), '')}")
        room = width - 4 * (depth + 1) - 1
        for item in items:
            assert item.event is not None
            e = item.event
            clock = e.time.strftime("%H:%M:%S.%f")[:-3] + " " if width >= 120 else ""
            head = f"#{item.seq} {clock}{e.short_type}"
            style = "red" if e.short_type in ("policy.decided", "task.failed") else "default"
            rest = middle(_key_facts(e), max(room - len(head) - 1, 10))
            branch.add(f"[{style}]{escape(head)}[/] {escape(rest)}")
        for child in children.get(iid, []):
            add(branch, child, depth + 1)

    for top in children.get(None, []):
        add(root, top, 1)
    return root


def _key_facts(e: CloudEvent) -> str:
    """The summary with the decisive fields first (decision, final, error)."""
    data = e.data
    if isinstance(data, PolicyDecided):
        return f"{data.decision} {data.action} {data.target} rule={data.rule}"
    if isinstance(data, TaskFailed):
        return f"final={data.final} attempt={data.attempt} error={data.error}"
    return event_summary(e)


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
