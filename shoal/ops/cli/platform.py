"""``shoal up``, ``shoal down``, ``shoal status``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from shoal.ops import platform
from shoal.ops.cli._common import JsonOption, cli, emit_json, run
from shoal.ops.cli.console import console_hint


def up(
    ctx: typer.Context,
    services: Annotated[
        bool,
        typer.Option(
            "--services/--no-services",
            help="Also run the core, the query service and a supervisor on this host.",
        ),
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """Start (or reuse) NATS, provision streams and buckets, start the local services."""
    c = cli(ctx, as_json)
    result = run(c, platform.up(c.settings, services=services))
    if c.json:
        emit_json(
            {
                "url": result.url,
                "started": result.started_server,
                "created": result.created,
                "services": result.services,
                "started_services": result.started_services,
            }
        )
        return
    if not c.settings.embedded:
        c.out.print(f"using NATS at [bold]{result.url}[/]")
    else:
        verb = "started" if result.started_server else "reusing"
        c.out.print(f"NATS {verb} at [bold]{result.url}[/]")
    if result.created:
        c.out.print(f"provisioned: {', '.join(result.created)}")
    for name, pid in result.services.items():
        state = "started" if name in result.started_services else "running"
        c.out.print(f"{name} {state} (pid {pid})")


def down(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Stop the local services and the embedded NATS server (its store stays)."""
    c = cli(ctx, as_json)
    stopped, server = platform.down(c.settings)
    if c.json:
        emit_json({"stopped": server, "services": stopped})
        return
    for name in stopped:
        c.out.print(f"{name} stopped")
    if not c.settings.embedded:
        c.out.print("NATS_URL is set: shoal did not start that server and will not stop it")
    else:
        c.out.print("embedded NATS stopped" if server else "embedded NATS was not running")


def status(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Server URL, JetStream usage and message counts of shoal's streams."""
    c = cli(ctx, as_json)
    st = run(c, platform.status(c.settings))
    if c.json:
        emit_json(
            {
                "url": st.url,
                "embedded": st.embedded,
                "server_version": st.server_version,
                "memory_bytes": st.memory_bytes,
                "storage_bytes": st.storage_bytes,
                "deadletters": st.deadletters,
                "streams": [s.__dict__ for s in st.streams],
                "services": st.services,
            }
        )
        return
    kind = "embedded" if st.embedded else "external"
    c.out.print(f"NATS {st.server_version} ({kind}) at [bold]{st.url}[/]")
    c.out.print(f"JetStream: {st.storage_bytes:,} bytes on disk, {st.memory_bytes:,} in memory")
    table = Table("stream", "messages", "bytes", "consumers")
    for s in st.streams:
        table.add_row(s.name, f"{s.messages:,}", f"{s.bytes:,}", str(s.consumers))
    c.out.print(table)
    for name, pid in st.services.items():
        c.out.print(f"{name}: " + (f"running (pid {pid})" if pid else "[dim]not running[/]"))
    c.out.print(console_hint(c.settings))
    if st.deadletters:
        c.out.print(f"[yellow]{st.deadletters} dead-lettered message(s)[/]")


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(down)
    app.command()(status)
