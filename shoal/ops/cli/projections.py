"""``shoal projections serve|rebuild|status`` and ``shoal export parquet DIR``."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from shoal.bus.connectopts import redact_url
from shoal.errors import NatsUnreachable, ServiceUnavailable
from shoal.ops.cli._common import Cli, JsonOption, cli, emit_json, fail, require_store, run
from shoal.ops.cli._roles import require_role
from shoal.ops.cli.cost import DbOption, open_local
from shoal.ops.connect import open_bus, resolve_url
from shoal.projections.client import QueryClient

# The core, DuckDB and pyarrow load inside the commands that need them, not at CLI start.

__all__ = ["register"]

projections_app = typer.Typer(
    help="The DuckDB projections: serve queries, rebuild by replay.", no_args_is_help=True
)
export_app = typer.Typer(help="Export the projection's tables.", no_args_is_help=True)


@projections_app.command("serve")
def serve(
    ctx: typer.Context,
    batch: Annotated[
        int, typer.Option("--batch", min=1, help="Events per DuckDB transaction when catching up.")
    ] = 20_000,
) -> None:
    """Own the projection: follow the core's log into DuckDB and answer queries (foreground)."""
    from shoal.projections.host import ProjectionHost, projection_path
    from shoal.projections.service import run_query_service

    c = cli(ctx)

    async def _serve() -> None:
        stop, ready = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        url = resolve_url(c.settings)
        host = ProjectionHost(c.settings, batch_size=batch)
        task = asyncio.create_task(run_query_service(c.settings, url, stop, ready=ready, host=host))
        done, _ = await asyncio.wait(
            {task, asyncio.create_task(ready.wait())}, return_when=asyncio.FIRST_COMPLETED
        )
        if task in done:
            task.result()  # failed at start: raise why
        c.err.print(
            f"query service on {redact_url(url)} ({c.settings.prefix}.api.query.*), "
            f"database {projection_path(c.settings)}; Ctrl-C stops it"
        )
        await task

    run(c, _serve(), bounded=False)


async def _swap_into_service(c: Cli, path: Path) -> dict[str, Any] | None:
    """Ask a running query service to take the rebuilt file; ``None`` if none answers."""
    try:
        async with open_bus(c.settings, start=False, provision=False, name="shoal-rebuild") as bus:
            answer: dict[str, Any] = await QueryClient(bus.nc, c.settings).ask(
                "swap", {"path": str(path)}, timeout=60
            )
            return answer
    except (NatsUnreachable, ServiceUnavailable):
        return None


@projections_app.command("rebuild")
def rebuild_cmd(
    ctx: typer.Context,
    as_of: Annotated[
        int | None,
        typer.Option(
            "--as-of",
            help="Build as of this event-log sequence, into a separate file (forensics).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Drop and rebuild the projection from the core's log (the live one is swapped at the end)."""
    from shoal.aggregates.readers import core_partitions, first_dbname
    from shoal.projections.host import projection_path
    from shoal.projections.rebuild import rebuild
    from shoal.projections.sources import core_sources

    c = cli(ctx, as_json)
    require_role(c, "admin", "projections.rebuild")
    count = core_partitions(c.settings)
    require_store(c.settings, first_dbname(count))
    live = projection_path(c.settings)
    target = (
        live.with_name(f"projections-asof-{as_of}.duckdb")
        if as_of is not None
        else live.with_name("projections.rebuild.duckdb")
    )
    sources = core_sources(c.settings, count)
    try:
        total = sum(app.recorder.max_notification_id() or 0 for _, app in sources)
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=c.err,
            disable=c.json,
            transient=False,
        ) as bar:
            task = bar.add_task("replaying the core's log", total=total or 1)
            result = rebuild(
                sources,
                target,
                as_of=as_of,
                progress=lambda done, last: bar.update(task, completed=done, total=last or 1),
            )
            bar.update(task, completed=max(total, 1))
    finally:
        for _, app in sources:
            app.close()
    swapped_by = "none"
    if as_of is None:
        if run(c, _swap_into_service(c, target.resolve()), bounded=False) is not None:
            swapped_by = "query service"
        else:
            try:
                os.replace(target, live)
            except OSError as e:
                raise fail(c, f"cannot replace {live}: {e}", 1, "not_writable") from None
            swapped_by = "rebuild"
    path = live if as_of is None else target
    rate = result.events / result.seconds if result.seconds else 0.0
    summary = {
        "path": str(path),
        "events": result.events,
        "position": result.position,
        "as_of": as_of,
        "stopped_at_seq": result.stopped_at_seq,
        "seconds": round(result.seconds, 3),
        "events_per_s": round(rate),
        "swapped_by": swapped_by,
    }
    if c.json:
        emit_json(summary)
        return
    c.out.print(f"rebuilt {path}: {result.events} events in {result.seconds:.2f}s ({rate:,.0f}/s)")
    if as_of is not None:
        c.out.print(f"as of seq {as_of}: query it with --db {path}")


@projections_app.command("status")
def status(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """The query service's position in the core's log and its rows per table."""
    c = cli(ctx, as_json)

    async def _status() -> dict[str, Any]:
        async with open_bus(c.settings, start=False, provision=False, name="shoal-status") as bus:
            answer: dict[str, Any] = await QueryClient(bus.nc, c.settings).ask("status")
            return answer

    answer = run(c, _status())
    if c.json:
        emit_json(answer)
        return
    c.out.print(f"database {answer['path']}")
    c.out.print(
        f"position {answer['position']} of {answer['core_last_notification']} "
        f"({answer.get('behind', 0):,} to project)"
    )
    for table, count in answer["tables"].items():
        c.out.print(f"  {table:<18} {count:>10}")
    if answer.get("last_error"):
        c.out.print(f"[red]last error:[/] {answer['last_error']}")


@export_app.command("parquet")
def parquet(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Argument(help="Where to write <table>.parquet files.")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write every table as Parquet (by the query service, on its host; or from --db)."""
    c = cli(ctx, as_json)
    require_role(c, "admin", "projections.export", str(directory))
    target = directory.resolve()

    async def _export() -> list[dict[str, Any]]:
        if db is not None:
            from shoal.projections.export import export_parquet

            ds = open_local(db)
            try:
                written = await asyncio.to_thread(export_parquet, ds, target)
            finally:
                ds.close()
            return [w.model_dump() for w in written]
        async with open_bus(c.settings, start=False, provision=False, name="shoal-export") as bus:
            answer: list[dict[str, Any]] = await QueryClient(bus.nc, c.settings).ask(
                "export", {"directory": str(target)}, timeout=300
            )
            return answer

    written = run(c, _export(), bounded=False)
    if c.json:
        emit_json(written)
        return
    for item in written:
        c.out.print(f"{item['path']}  {item['rows']} rows")


def register(app: typer.Typer) -> None:
    app.add_typer(projections_app, name="projections")
    app.add_typer(export_app, name="export")
