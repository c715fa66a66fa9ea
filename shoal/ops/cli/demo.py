"""``shoal demo``: the whole system end to end on the embedded server."""

from __future__ import annotations

import typer
from rich.markup import escape

from shoal.ops.cli._common import Cli, JsonOption, cli, emit_json, run
from shoal.ops.connect import open_bus
from shoal.ops.events import event_line, stored_to_json
from shoal.ops.goals import build_goal, submit_goal


def demo(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Bring up NATS, submit a goal to the demo fleet, and show its events."""
    c = cli(ctx, as_json)
    run(c, _demo(c))


async def _demo(c: Cli) -> None:
    async with open_bus(c.settings) as bus:
        goal = build_goal(
            "demo", "Summarise the documents in the workspace", principal=c.settings.principal
        )
        await submit_goal(bus, goal)
        assert goal.gid is not None
        stored = await bus.goal_events(goal.gid)
    if c.json:
        emit_json({"gid": goal.gid, "events": [stored_to_json(s) for s in stored]})
        return
    c.out.print(f"submitted goal [bold]{goal.gid}[/] to fleet demo")
    for item in stored:
        if item.event is not None:
            c.out.print(escape(event_line(item.seq, item.event)))


def register(app: typer.Typer) -> None:
    app.command()(demo)
