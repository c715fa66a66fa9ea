"""``shoal deadletters ls|show|replay``: every stream's parked messages."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from shoal.ops.cli._common import JsonOption, cli, emit_json, run
from shoal.ops.cli.layout import middle
from shoal.ops.connect import open_bus

deadletters_app = typer.Typer(
    help="Messages no consumer could process: list, inspect, replay.", no_args_is_help=True
)

SeqArg = Annotated[int, typer.Argument(min=1, help="The dead letter's sequence (from ls).")]


@deadletters_app.command("ls")
def ls(
    ctx: typer.Context,
    origin: Annotated[
        str | None, typer.Option("--origin", help="Only this origin: events, tasks, goals…")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="The N most recent.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """The most recent dead letters: when, origin, reason, size (and how many there are)."""
    from shoal.ops import deadletters as ops

    c = cli(ctx, as_json)

    async def body() -> tuple[list[ops.DeadLetter], int, dict[str, int]]:
        async with open_bus(c.settings, start=False, name="shoal-deadletters") as bus:
            letters, total = await ops.list_deadletters(bus, origin, limit)
            return letters, total, await ops.count_by_origin(bus)

    letters, total, by_origin = run(c, body())
    if c.json:
        emit_json(
            {"total": total, "by_origin": by_origin, "letters": [x.to_json() for x in letters]}
        )
        return
    if not total:
        c.out.print("no dead letters")
        return
    table = Table("#", "when", "origin", "size", "reason", "subject")
    width = max(c.out.width - 50, 20)
    for x in letters:
        when = x.time.strftime("%Y-%m-%d %H:%M:%S") if x.time else "-"
        table.add_row(
            str(x.seq),
            when,
            x.origin,
            str(x.size),
            escape(middle(x.reason, width)),
            escape(middle(x.subject, 40)),
        )
    c.out.print(table)
    counts = ", ".join(f"{o} {n}" for o, n in by_origin.items())
    c.out.print(f"{total} dead letter(s): {counts}")


@deadletters_app.command("show")
def show(ctx: typer.Context, seq: SeqArg, as_json: JsonOption = False) -> None:
    """One dead letter in full: reason, original subject, size, hash, body."""
    from shoal.ops import deadletters as ops

    c = cli(ctx, as_json)

    async def body() -> ops.DeadLetter:
        async with open_bus(c.settings, start=False, name="shoal-deadletters") as bus:
            return await ops.get_deadletter(bus, seq)

    letter = run(c, body())
    if c.json:
        emit_json(letter.to_json(with_body=True))
        return
    c.out.print(f"dead letter #{letter.seq} from [bold]{letter.origin}[/]")
    c.out.print(f"reason:  {escape(letter.reason)}")
    c.out.print(f"subject: {escape(letter.subject)}")
    c.out.print(f"size:    {letter.size} bytes, sha256 {letter.sha256}")
    if letter.body is not None:
        c.out.print(escape(letter.body.decode("utf-8", errors="replace")))


@deadletters_app.command("replay")
def replay(
    ctx: typer.Context,
    seq: SeqArg,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the dead letter too.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Publish a dead letter again to its original subject (once its consumer is fixed)."""
    from shoal.ops import deadletters as ops

    c = cli(ctx, as_json)

    async def body() -> tuple[ops.DeadLetter, int]:
        async with open_bus(c.settings, start=False, name="shoal-deadletters") as bus:
            return await ops.replay(bus, seq, keep=keep)

    letter, new_seq = run(c, body())
    if c.json:
        emit_json({"replayed": letter.to_json(), "seq": new_seq, "kept": keep})
        return
    kept = "kept" if keep else "removed from the dead letters"
    c.out.print(f"dead letter #{seq} replayed to {escape(letter.subject)} (seq {new_seq}); {kept}")


def register(app: typer.Typer) -> None:
    app.add_typer(deadletters_app, name="deadletters")
