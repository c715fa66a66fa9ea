"""``shoal core``: run the event-sourced core in the foreground until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING, Annotated

import typer

from shoal.ops.cli._common import Cli, JsonOption, cli, emit_json, run
from shoal.ops.connect import resolve_url

if TYPE_CHECKING:  # eventsourcing loads when the core runs, not at every CLI start
    from shoal.aggregates import CoreStats


def core(
    ctx: typer.Context,
    consumer: Annotated[
        str | None,
        typer.Option("--consumer", help="Durable consumer name on the events stream (core)."),
    ] = None,
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Exit once every stored event is ingested.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Run the core: ingest the event log into sessions and goals, exactly once.

    Also enforces budgets and flags stuck or looping sessions. Stops cleanly on SIGTERM or
    Ctrl-C; a SIGKILL loses nothing either (the next start resumes from the store).
    """
    c = cli(ctx, as_json)
    logging.basicConfig(
        level=c.settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    stats = run(c, _core(c, consumer, until_idle), bounded=False)
    if c.json:
        emit_json(vars(stats))
    else:
        c.err.print(
            f"core stopped at seq {stats.position}: {stats.messages} messages, "
            f"{stats.applied} applied, {stats.rejected} rejected, "
            f"{stats.dead_lettered} dead-lettered, {stats.budget_crossings} budget crossings"
        )


async def _core(c: Cli, consumer: str | None, until_idle: bool) -> CoreStats:
    from shoal.aggregates import CORE_CONSUMER, run_core
    from shoal.ops.canary import canary_controller

    consumer = consumer or CORE_CONSUMER
    url = resolve_url(c.settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ready = asyncio.Event()
    task = asyncio.create_task(
        run_core(
            c.settings,
            url,
            stop,
            consumer=consumer,
            until_idle=until_idle,
            ready=ready,
            verdicts=canary_controller,
        )
    )
    await asyncio.wait([task, asyncio.create_task(ready.wait())], return_when="FIRST_COMPLETED")
    if ready.is_set() and not c.json:
        c.err.print(f"core ingesting {c.settings.prefix} events from {url}")
    return await task


def register(app: typer.Typer) -> None:
    app.command("core")(core)
