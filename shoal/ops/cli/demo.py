"""``shoal demo``: the whole system end to end on the embedded server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.tree import Tree

from shoal.bus import Bus, Stored
from shoal.bus.tracecontext import goal_trace_id
from shoal.ops.cli._common import Cli, JsonOption, cli, emit_json, run
from shoal.ops.cli.console import console_hint
from shoal.ops.cli.layout import fit_facts, middle
from shoal.ops.connect import open_bus
from shoal.ops.events import event_facts, stored_to_json
from shoal.schemas import (
    ApprovalDenied,
    ApprovalGranted,
    ApprovalRequested,
    CloudEvent,
    GoalCompleted,
    PolicyDecided,
    TaskFailed,
    utcnow,
)

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


def demo(
    ctx: typer.Context,
    approve: Annotated[
        bool,
        typer.Option(
            "--approve", help="Grant the goal's one approval (else it times out, recorded)."
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Run the demo fleet on a goal: live progress, the result, the timeline and its cost."""
    from shoal.bus.genai import GenAI
    from shoal.bus.telemetry import setup_telemetry
    from shoal.ops.cli.cost import render_demo_summary

    c = cli(ctx, as_json)
    with setup_telemetry(c.settings, "shoal-demo") as telemetry:
        done = run(c, _demo(c, GenAI(telemetry), approve), bounded=False)
    if c.json:
        emit_json(_as_json(done))
    else:
        _print(c, done.result)
        render_demo_summary(c.out, done.cost, done.per_success)
        _summary(c, done)
        c.out.print(console_hint(c.settings, done.result.gid))
    if not isinstance(done.result.outcome.data, GoalCompleted):
        raise typer.Exit(1)


async def _demo(c: Cli, genai: GenAI, approve: bool) -> DemoRun:
    from shoal.ops.cli.cost import fetch_demo_summary
    from shoal.ops.inprocess import local_platform

    async with (
        open_bus(c.settings, name="shoal-demo") as bus,
        local_platform(bus) as platform,
    ):
        started = utcnow()
        result = await _run_goal(c, bus, genai, approve)
        # The summary is the query service's answer over NATS, once the core has ingested
        # every event of the run (the service then catches up with the core by itself);
        # this run's only, though the data dir may hold earlier ones.
        await platform.caught_up()
        cost, per_success = await fetch_demo_summary(bus.nc, c.settings, since=started)
        return DemoRun(result, cost, per_success)


async def _run_goal(c: Cli, bus: Bus, genai: GenAI, approve: bool) -> DemoResult:
    from shoal.ops.demo import GoalProgress, demo_services, run_demo

    if c.json:
        return await run_demo(bus, genai=genai, services=demo_services(c.settings), approve=approve)
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
            bus,
            genai=genai,
            services=demo_services(c.settings),
            on_progress=on_progress,
            approve=approve,
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
        and s.event.data.decision == "deny"
    ]


def _approvals(result: DemoResult) -> list[tuple[CloudEvent, CloudEvent | None]]:
    """Each approval requested, with the event that decided it (``None``: still pending)."""
    requested = [
        s.event
        for s in result.events
        if s.event is not None and isinstance(s.event.data, ApprovalRequested)
    ]
    decided = {
        s.event.data.request_id: s.event
        for s in result.events
        if s.event is not None and isinstance(s.event.data, ApprovalGranted | ApprovalDenied)
    }
    return [(r, decided.get(r.data.request_id)) for r in requested]  # type: ignore[attr-defined]


def _approval_line(requested: CloudEvent, decided: CloudEvent | None) -> str:
    d = requested.data
    assert isinstance(d, ApprovalRequested)
    what = f"{d.target} in {requested.iid}: "
    if decided is None:
        return what + f"pending ({d.request_id})"
    e = decided.data
    wait = (decided.time - requested.time).total_seconds()
    if isinstance(e, ApprovalGranted):
        return what + f"granted by {e.by} after {wait:.2f}s"
    assert isinstance(e, ApprovalDenied)
    if e.expired:
        return what + f"timed out after {wait:.1f}s"
    return what + f"denied by {e.by} after {wait:.2f}s"


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
    width = max(c.out.width - 11, 20)
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
    timed_out = False
    for requested, decided in _approvals(result):
        line = _approval_line(requested, decided)
        head, _, rest = line.partition(": ")
        rows.append(("approval", (head + ": ", rest)))
        timed_out = timed_out or rest.startswith("timed out")
    rows += [
        ("look", f"shoal goal show {result.gid}"),
        ("", f"shoal session replay {result.root_iid}"),
        ("", f"shoal trace {result.gid}"),
    ]
    if timed_out:
        rows.append(("", "shoal demo --approve   (grants the approval)"))
    c.out.print("[bold]summary[/]")
    for label, value in rows:
        # Ids and commands are whole (they are copied); prose is shortened in the middle.
        if isinstance(value, tuple):
            whole, prose = value
            text = whole + middle(prose, max(width - len(whole), 12))
        else:
            text = value if label in ("goal", "look", "") else middle(value, width)
        c.out.print(f"  {label:<9}{escape(text)}")


def _timeline(result: DemoResult, width: int = 100) -> Tree:
    """The goal's events as a tree of sessions (children under the IID that delegated).

    Each line fits the width: sequence and type first, whole; then the event's facts, the
    decisive ones first and whole (the decision and its target, ``final=False``), the later
    ones shortened in the middle (:func:`~shoal.ops.cli.layout.fit_facts`); the clock only
    when wide.
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
            facts, whole = _key_facts(e)
            rest = fit_facts(facts, max(room - len(head) - 1, 10), whole)
            branch.add(f"[{style}]{escape(head)}[/] {escape(rest)}")
        for child in children.get(iid, []):
            add(branch, child, depth + 1)

    for top in children.get(None, []):
        add(root, top, 1)
    return root


def _key_facts(e: CloudEvent) -> tuple[list[str], int]:
    """The summary's facts, the decisive ones first, and how many of them are never cut
    (a decision and its target; ``final`` and ``attempt``; else the first)."""
    data = e.data
    if isinstance(data, PolicyDecided):
        return [data.decision, data.target, data.action, f"rule={data.rule}"], 2
    if isinstance(data, TaskFailed):
        return [f"final={data.final}", f"attempt={data.attempt}", f"error={data.error}"], 2
    return event_facts(e), 1


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
        "approvals": [_approval_line(r, d) for r, d in _approvals(result)],
    }


def register(app: typer.Typer) -> None:
    app.command()(demo)
