"""``shoal core``: run the event-sourced core in the foreground until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING, Annotated

import typer

from shoal.bus.connectopts import redact_url
from shoal.ops.cli._common import Cli, JsonOption, cli, emit_json, fail, run
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
    partitions: Annotated[
        int | None,
        typer.Option(
            "--partitions",
            min=1,
            max=64,
            help="Fold the log as N partitions, shared by every core process started with "
            "the same N (default: settings, 1). docs/scale.md.",
        ),
    ] = None,
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
    count = partitions or c.settings.core_partitions
    if count > 1 and consumer:
        raise fail(c, "--consumer names the one core's consumer; partitions name their own")
    stats = run(c, _core(c, consumer, until_idle, count), bounded=False)
    if c.json:
        emit_json(vars(stats))
    else:
        c.err.print(
            f"core stopped at seq {stats.position}: {stats.messages} messages, "
            f"{stats.applied} applied, {stats.rejected} rejected, "
            f"{stats.dead_lettered} dead-lettered, {stats.budget_crossings} budget crossings"
        )


async def _core(c: Cli, consumer: str | None, until_idle: bool, count: int) -> CoreStats:
    from shoal.aggregates import CORE_CONSUMER, run_core
    from shoal.aggregates.partitioned import run_partitioned
    from shoal.aggregates.registry_service import serve_registry
    from shoal.ops.canary import canary_controller

    consumer = consumer or CORE_CONSUMER
    url = resolve_url(c.settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ready = asyncio.Event()
    if count > 1:
        work = run_partitioned(c.settings, url, stop, count, until_idle=until_idle, ready=ready)
    else:
        work = run_core(
            c.settings,
            url,
            stop,
            consumer=consumer,
            until_idle=until_idle,
            ready=ready,
            verdicts=canary_controller,
        )
    task = asyncio.create_task(work)
    # The registry's read endpoints live beside the core (docs/registry.md), on their own
    # connection; their failure ends the core too, so the process exits non-zero.
    registry_stop = asyncio.Event()
    registry = asyncio.create_task(serve_registry(c.settings, url, registry_stop))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait([task, waiter], return_when="FIRST_COMPLETED")
    waiter.cancel()
    if ready.is_set() and not c.json:
        shape = f" as a share of {count} partitions" if count > 1 else ""
        c.err.print(f"core ingesting {c.settings.prefix} events from {redact_url(url)}{shape}")
    await asyncio.wait([task, registry], return_when="FIRST_COMPLETED")
    if registry.done():
        stop.set()
    try:
        stats = await task
    finally:
        # Always collect the registry's outcome (never a "never retrieved" traceback); the
        # core's own failure, when there is one, is the one reported.
        registry_stop.set()
        [outcome] = await asyncio.gather(registry, return_exceptions=True)
    if isinstance(outcome, BaseException):
        raise outcome
    return stats


def register(app: typer.Typer) -> None:
    app.command("core")(core)
