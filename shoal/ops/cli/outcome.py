"""``shoal outcome report``: feedback on a session's result, possibly hours later."""

from __future__ import annotations

from typing import Annotated, Literal, cast

import typer

from shoal.bus import Bus
from shoal.ops.cli._common import JsonOption, cli, emit_json, run
from shoal.ops.cli._roles import require_role
from shoal.ops.connect import open_bus
from shoal.schemas import CloudEvent, OutcomeReported

outcome_app = typer.Typer(help="Report outcomes of sessions.", no_args_is_help=True)

Outcome = Literal["success", "failure", "abandoned"]


async def report_outcome(
    bus: Bus,
    iid: str,
    outcome: Outcome,
    *,
    principal: str,
    signal: str | None = None,
    detail: str = "",
) -> CloudEvent:
    """Publish ``outcome.reported`` for a session that exists on the event log."""
    from shoal.aggregates.interactions import record_on_session

    data = OutcomeReported(outcome=outcome, signal=signal, detail=detail)
    return await record_on_session(bus, iid, data, by=principal)


@outcome_app.command("report")
def report(
    ctx: typer.Context,
    iid: Annotated[str, typer.Argument(help="The session (IID) the outcome is about.")],
    outcome: Annotated[str, typer.Option("--outcome", help="success, failure or abandoned.")],
    signal: Annotated[
        str | None, typer.Option("--signal", help="What says so: ci_passed, pr_merged, ...")
    ] = None,
    detail: Annotated[str, typer.Option("--detail", help="Free text.")] = "",
    as_json: JsonOption = False,
) -> None:
    """Publish ``outcome.reported``; the core records it on the session and its goal."""
    c = cli(ctx, as_json)
    require_role(c, "operator", "outcome.report", iid)
    if outcome not in ("success", "failure", "abandoned"):
        c.err.print(f"[red]error:[/] --outcome {outcome!r} must be success, failure or abandoned")
        raise typer.Exit(2)

    chosen = cast(Outcome, outcome)

    async def _report() -> CloudEvent:
        async with open_bus(c.settings) as bus:
            return await report_outcome(
                bus, iid, chosen, principal=c.settings.principal, signal=signal, detail=detail
            )

    event = run(c, _report())
    if c.json:
        emit_json({"id": event.id, "iid": iid, "gid": event.gid, "outcome": outcome})
    else:
        c.out.print(f"outcome {outcome} reported for {iid}")


def register(app: typer.Typer) -> None:
    app.add_typer(outcome_app, name="outcome")
