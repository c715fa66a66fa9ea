"""``shoal up``, ``shoal down``, ``shoal status``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from shoal.ops import platform
from shoal.ops.cli._common import Cli, JsonOption, cli, emit_json, run
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
    result = run(c, platform.up(c.settings, services=services), bounded=False)
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


def status(
    ctx: typer.Context,
    max_lag: Annotated[
        int,
        typer.Option("--max-lag", help="Unhealthy (exit 1) when a lag exceeds this many events."),
    ] = 10_000,
    as_json: JsonOption = False,
) -> None:
    """Health at a glance: services, lags, dead letters, sessions in trouble, versions.

    Exits 1 when a service is down or a lag exceeds --max-lag (usable as a probe).
    """
    c = cli(ctx, as_json)
    st = run(c, platform.status(c.settings))
    h = st.health
    problems = h.problems(st.services, max_lag, local=st.embedded)
    if c.json:
        emit_json(
            {
                "healthy": not problems,
                "problems": problems,
                "url": st.url,
                "embedded": st.embedded,
                "server_version": st.server_version,
                "memory_bytes": st.memory_bytes,
                "storage_bytes": st.storage_bytes,
                "deadletters": st.deadletters,
                "streams": [s.__dict__ for s in st.streams],
                "services": st.services,
                **h.to_json(),
                "gateway": st.gateway,
            }
        )
    else:
        _print_status(c, st, problems)
    if problems:
        raise typer.Exit(1)


def _print_status(c: Cli, st: platform.PlatformStatus, problems: list[str]) -> None:
    h = st.health
    verdict = "[green]healthy[/]" if not problems else f"[red]UNHEALTHY[/]: {'; '.join(problems)}"
    c.out.print(verdict)
    kind = "embedded" if st.embedded else "external"
    c.out.print(f"NATS {st.server_version} ({kind}) at [bold]{st.url}[/]")
    services = Table("service", "state", "last heartbeat", "lag (events)", box=None)
    services.columns[3].justify = "right"
    for name, pid in st.services.items():
        state = f"running (pid {pid})" if pid else "[red]not running[/]"
        beat, lag = "-", "-"
        if name == "core":
            state += f", {h.core_state}"
            beat = _ago(h.core_last_active)
            lag = _lag(h.core_lag)
        elif name == "supervisor":
            beat = _ago(h.supervisor_last_renewed)
        elif name == "query":
            state += f", {h.query_state}"
            if h.projection_lag_bus is not None:
                lag = f"{h.projection_lag_bus:,} behind the bus ({h.projection_lag_core:,} core)"
        services.add_row(name, state, beat, lag)
        if name == "core":
            for consumer, part_lag in h.partition_lags.items():
                services.add_row(f"  {consumer}", "", "", _lag(part_lag))
            if h.partition_lags:
                services.add_row("  spend aggregator", "", "", _lag(h.spend_lag))
    c.out.print(services)
    if h.deadletters:
        by_origin = ", ".join(f"{o} {n}" for o, n in h.deadletters.items())
        c.out.print(f"[yellow]dead letters: {by_origin}[/] (shoal deadletters ls)")
    else:
        c.out.print("dead letters: none")
    if h.sessions:
        c.out.print("sessions: " + ", ".join(f"{n} {s}" for s, n in h.sessions.items()))
    for r in h.regressions:
        hint = f"shoal fleet history {r.verdict.fleet}"
        c.out.print(f"[red]regression:[/] {escape(r.line())} ({hint})")
    table = Table("stream", "messages", "bytes", "consumers", box=None)
    for column in table.columns[1:]:
        column.justify = "right"
    for s in st.streams:
        table.add_row(s.name, f"{s.messages:,}", f"{s.bytes:,}", str(s.consumers))
    c.out.print(table)
    c.out.print(f"JetStream: {st.storage_bytes:,} bytes on disk, {st.memory_bytes:,} in memory")
    if st.gateway:
        c.out.print(f"gateway: {st.gateway['url']} (MCP: {st.gateway['mcp_url'] or '-'})")
    c.out.print(console_hint(c.settings))
    c.out.print("versions: " + ", ".join(f"{k} {v}" for k, v in h.versions.items()))


def _ago(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    seconds = (datetime.now(UTC) - moment).total_seconds()
    return f"{seconds:.1f}s ago" if seconds < 120 else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _lag(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(down)
    app.command()(status)
