"""``shoal goal submit``."""

from __future__ import annotations

from typing import Annotated

import typer

from shoal.errors import InvalidOption
from shoal.ops.cli._common import JsonOption, cli, emit_json, run
from shoal.ops.cli._roles import require_role
from shoal.ops.connect import open_bus
from shoal.ops.goals import build_goal, parse_inputs, submit_goal
from shoal.schemas.labels import LABEL_NAMES, parse_labels

goal_app = typer.Typer(help="Submit and inspect goals.", no_args_is_help=True)


@goal_app.command("submit")
def submit(
    ctx: typer.Context,
    fleet: Annotated[str, typer.Argument(help="The fleet whose orchestrator takes the goal.")],
    text: Annotated[str, typer.Argument(help="What the goal is, in words.")],
    inputs: Annotated[
        str | None, typer.Option("--inputs", help="Goal inputs as a JSON object.")
    ] = None,
    budget: Annotated[
        str | None, typer.Option("--budget", help="Budget in USD for the whole goal.")
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label",
            help=f"Attribution NAME=VALUE ({'|'.join(LABEL_NAMES)}); repeat or comma-separate.",
        ),
    ] = None,
    wait_for_fleet: Annotated[
        bool,
        typer.Option("--wait-for-fleet", help="Queue it even if the fleet is not declared yet."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Publish ``goal.submitted`` to ``shoal.goals.<fleet>`` with a new GID; print the GID.

    The fleet must be declared (``fleet apply``) or running, unless --wait-for-fleet.
    """
    c = cli(ctx, as_json)
    require_role(c, "operator", "goal.submit", fleet)
    try:
        labels = parse_labels(label)
    except ValueError as e:
        raise InvalidOption(str(e)) from None

    async def _submit() -> tuple[str, str, int]:
        event = build_goal(
            fleet,
            text,
            principal=c.settings.principal,
            inputs=parse_inputs(inputs),
            budget_usd=budget,
            labels=labels,
        )
        async with open_bus(c.settings) as bus:
            seq = await submit_goal(bus, event, require_fleet=not wait_for_fleet)
        assert event.gid is not None
        return event.gid, event.iid, seq

    gid, iid, seq = run(c, _submit())
    if c.json:
        emit_json({"gid": gid, "iid": iid, "seq": seq, "fleet": fleet})
    else:
        c.out.print(gid)


@goal_app.command("show")
def show(
    ctx: typer.Context,
    gid: Annotated[str, typer.Argument(help="The goal's GID.")],
    as_json: JsonOption = False,
) -> None:
    """A goal as the core recorded it: every session serving it and the total cost."""
    from shoal.ops.cli.session import show_goal

    show_goal(cli(ctx, as_json), gid)


@goal_app.command("ls")
def ls(
    ctx: typer.Context,
    fleet: Annotated[str | None, typer.Option("--fleet", help="Only this fleet.")] = None,
    status: Annotated[
        str | None, typer.Option("--status", help="open, running, completed or failed.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="Show the N most recent.")] = 50,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only the GIDs, one a line (for scripts).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Goals the core has recorded, most recent last: fleet, status, cost, text."""
    from shoal.ops.cli.session import list_goals

    list_goals(cli(ctx, as_json), fleet=fleet, status=status, limit=limit, quiet=quiet)


def register(app: typer.Typer) -> None:
    app.add_typer(goal_app, name="goal")
