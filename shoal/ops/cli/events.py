"""``shoal events tail``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from shoal.ops.cli._common import Cli, JsonOption, cli, emit_json, run
from shoal.ops.connect import open_bus
from shoal.ops.events import event_line, stored_to_json, tail

events_app = typer.Typer(help="Read the event log.", no_args_is_help=True)


@events_app.command("tail")
def tail_cmd(
    ctx: typer.Context,
    iid: Annotated[str | None, typer.Option("--iid", help="Only this session.")] = None,
    gid: Annotated[str | None, typer.Option("--gid", help="Only this goal.")] = None,
    type_: Annotated[
        str | None, typer.Option("--type", help="Only this type, e.g. model.called.")
    ] = None,
    from_start: Annotated[
        bool, typer.Option("--from-start", help="Print stored events first (then exit).")
    ] = False,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep following new events.")
    ] = False,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Stop following after N idle seconds.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Print events matching the filters: stored ones with --from-start, new ones otherwise."""
    c = cli(ctx, as_json)
    following = follow or not from_start
    run(c, _tail(c, iid, gid, type_, from_start, following, timeout), bounded=not following)


async def _tail(
    c: Cli,
    iid: str | None,
    gid: str | None,
    type_: str | None,
    from_start: bool,
    follow: bool,
    idle_timeout: float | None,
) -> None:
    async with open_bus(c.settings, start=False) as bus:
        filter_subject = bus.subjects.events_filter(gid=gid, iid=iid, short_type=type_)
        async for item in tail(
            bus, filter_subject, from_start=from_start, follow=follow, idle_timeout=idle_timeout
        ):
            if c.json:
                emit_json(stored_to_json(item))
            elif item.event is None:
                c.err.print(
                    f"[yellow]#{item.seq} malformed message on {item.subject}: {item.error}[/]"
                )
            else:
                c.out.print(escape(event_line(item.seq, item.event)))


def register(app: typer.Typer) -> None:
    app.add_typer(events_app, name="events")
