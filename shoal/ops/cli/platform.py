"""``shoal up``, ``shoal down``, ``shoal status``."""

from __future__ import annotations

import typer
from rich.table import Table

from shoal.ops import platform
from shoal.ops.cli._common import JsonOption, cli, emit_json, run


def up(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Start (or reuse) the embedded NATS server and provision shoal's streams and buckets."""
    c = cli(ctx, as_json)
    url, started, created = run(c, platform.up(c.settings))
    if c.json:
        emit_json({"url": url, "started": started, "created": created})
        return
    verb = "started" if started else ("using" if not c.settings.embedded else "reusing")
    c.out.print(f"NATS {verb} at [bold]{url}[/]")
    if created:
        c.out.print(f"provisioned: {', '.join(created)}")


def down(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Stop the embedded NATS server (its store stays in the data dir)."""
    c = cli(ctx, as_json)
    if not c.settings.embedded:
        c.out.print("NATS_URL is set: shoal did not start that server and will not stop it")
        return
    stopped = platform.down(c.settings)
    if c.json:
        emit_json({"stopped": stopped})
    else:
        c.out.print("embedded NATS stopped" if stopped else "embedded NATS was not running")


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
    if st.deadletters:
        c.out.print(f"[yellow]{st.deadletters} dead-lettered message(s)[/]")


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(down)
    app.command()(status)
