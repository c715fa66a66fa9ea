"""``shoal supervisor``: run the fleet reconciler in the foreground."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Annotated

import typer

from shoal.bus.connectopts import redact_url
from shoal.ops.cli._common import Cli, cli, run
from shoal.ops.connect import open_bus, resolve_url
from shoal.ops.supervisor import Supervisor, SupervisorOptions


def supervisor(
    ctx: typer.Context,
    fleet: Annotated[
        list[str] | None, typer.Option("--fleet", help="Only these fleets (default: all).")
    ] = None,
    supervisor_id: Annotated[
        str | None, typer.Option("--id", help="Supervisor id (default: a new one).")
    ] = None,
    drain_grace: Annotated[
        float, typer.Option("--drain-grace", help="Seconds between SIGTERM and SIGKILL.")
    ] = 10.0,
    tick: Annotated[float, typer.Option("--tick", help="Seconds between passes.")] = 0.5,
    backoff: Annotated[
        float, typer.Option("--backoff", help="First restart delay; doubles per crash.")
    ] = 0.5,
    resync: Annotated[
        float, typer.Option("--resync", help="Seconds between re-reads of the buckets.")
    ] = 30.0,
    crashloop_after: Annotated[
        int, typer.Option("--crashloop-after", min=1, help="Exits at start before giving up.")
    ] = 5,
    capacity: Annotated[
        int | None,
        typer.Option(
            "--capacity",
            min=0,
            help="Instances this supervisor admits (default: SHOAL_SUPERVISOR_CAPACITY, "
            "else computed from CPUs and memory).",
        ),
    ] = None,
) -> None:
    """Start, stop, replace and drain agent instances until they match desired state.

    Runs until SIGTERM or Ctrl-C, then drains its instances and releases its slots.
    """
    c = cli(ctx)
    options = SupervisorOptions(
        tick_s=tick,
        drain_grace_s=drain_grace,
        backoff_base_s=backoff,
        crashloop_after=crashloop_after,
        resync_s=resync,
        fleets=frozenset(fleet) if fleet else None,
        capacity=capacity,
    )
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run(c, _supervise(c, options, supervisor_id), bounded=False)


async def _supervise(c: Cli, options: SupervisorOptions, supervisor_id: str | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    url = resolve_url(c.settings)
    async with open_bus(c.settings, name="shoal-supervisor") as bus:
        sup = Supervisor(bus, url, supervisor_id=supervisor_id, options=options)
        c.err.print(
            f"supervisor {sup.id} on {sup.host} reconciling via {redact_url(url)}; "
            f"capacity {sup.capacity.instances} ({sup.capacity.source})"
        )
        await sup.run(stop)


def register(app: typer.Typer) -> None:
    app.command()(supervisor)
