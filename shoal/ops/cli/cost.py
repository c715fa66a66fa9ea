"""``shoal cost``, ``shoal outcomes``, ``shoal query``, ``shoal tools ledger``, ``shoal sql``.

Every command asks the query service over NATS (``<prefix>.api.query.<endpoint>``). When no
service answers (the embedded default once ``shoal demo`` has ended), the command owns the
data dir's projection for one answer: it opens it, catches up with the core's store, and
answers. With ``--db PATH`` it opens that file read-only (a rebuilt ``--as-of`` file). Answers
print as rich tables, or as JSON with ``--json``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from nats.aio.client import Client as NATS
from pydantic import BaseModel
from rich.table import Table

from shoal.bus import ShoalSettings
from shoal.errors import InvalidOption, NatsUnreachable, NotFound, Refused, ServiceUnavailable
from shoal.ops.cli._common import Cli, JsonOption, cli, emit_json, run
from shoal.ops.cli._time import parse_moment
from shoal.ops.cli.costrender import render, render_demo_summary, table_of
from shoal.ops.cli.layout import fit
from shoal.ops.connect import open_bus
from shoal.projections.answers import UNIT_DIMENSIONS
from shoal.projections.client import QueryClient
from shoal.projections.queries import (
    COST_DIMENSIONS,
    NAMED_QUERIES,
    CostAnswer,
    SuccessCostAnswer,
)
from shoal.projections.sql import SqlAnswer, SqlParams
from shoal.schemas import utcnow

if TYPE_CHECKING:  # duckdb loads only for --db, not at every CLI start
    from shoal.projections.recorder import DuckDBDatastore

__all__ = [
    "ask_named",
    "fetch_demo_summary",
    "open_local",
    "parse_since",
    "register",
    "render_demo_summary",
]

T = TypeVar("T")


SinceOption = Annotated[
    str | None,
    typer.Option(
        "--since",
        help="Start of the range: a duration back from now (24h, 7d, P1D) or a time "
        "(2026-12-01T17:00, 17:49:37).",
    ),
]
UntilOption = Annotated[
    str | None, typer.Option("--until", help="End of the range (exclusive), same forms.")
]
DbOption = Annotated[
    Path | None,
    typer.Option("--db", help="Read this projection file directly (read-only) instead."),
]


def parse_since(text: str | None, now: datetime, option: str = "--since") -> datetime | None:
    """``24h`` / ``P1D`` / ``17:49:37`` / an ISO time, relative to ``now`` (see ``_time``)."""
    return parse_moment(text, now, option)


def _range(since: str | None, until: str | None) -> dict[str, Any]:
    now = utcnow()
    out = {"since": parse_since(since, now), "until": parse_since(until, now, "--until")}
    return {k: v.isoformat() for k, v in out.items() if v is not None}


# -- asking -----------------------------------------------------------------------------------


def open_local(db: Path) -> DuckDBDatastore:
    """A projection file opened read-only in this process."""
    from shoal.projections.recorder import DuckDBDatastore

    if not db.exists():
        raise NotFound(f"no projection database at {db}")
    return DuckDBDatastore(db, read_only=True)


async def ask_named(
    c: Cli, name: str, params: dict[str, Any], *, db: Path | None = None, fresh: bool = True
) -> BaseModel:
    """A named query's answer, from the query service or a local file."""
    if db is not None:
        from shoal.projections.queries import run_named

        ds = open_local(db)
        try:
            return await asyncio.to_thread(run_named, ds, name, params)
        finally:
            ds.close()
    try:
        async with open_bus(c.settings, start=False, provision=False, name="shoal-query") as bus:
            return await QueryClient(bus.nc, c.settings).query(name, params, fresh=fresh)
    except (NatsUnreachable, ServiceUnavailable):
        return await asyncio.to_thread(_locally, c, lambda ds: _run_named(ds, name, params))


def _run_named(ds: DuckDBDatastore, name: str, params: dict[str, Any]) -> BaseModel:
    from shoal.projections.queries import run_named

    return run_named(ds, name, params)


def _locally(c: Cli, ask: Callable[[DuckDBDatastore], T]) -> T:
    """No query service: answer from the data dir's projection, caught up with the core."""
    from shoal.projections.host import answer_locally

    return answer_locally(c.settings, ask)


async def fetch_demo_summary(
    nc: NATS, settings: ShoalSettings, since: datetime | None = None
) -> tuple[CostAnswer, SuccessCostAnswer]:
    """Cost by agent and model, and cost per successful outcome, from the query service.

    The demo calls this at the end (fresh: the service catches up with the core first), with
    ``since`` its own start, so a data dir's earlier runs are not added in.
    """
    client = QueryClient(nc, settings)
    window = {"since": since.isoformat()} if since is not None else {}
    cost = await client.query("cost", {"by": ["agent", "model"], **window}, fresh=True)
    success = await client.query("cost-per-success", window, fresh=False)
    assert isinstance(cost, CostAnswer) and isinstance(success, SuccessCostAnswer)
    return cost, success


# -- commands ---------------------------------------------------------------------------------


def cost(
    ctx: typer.Context,
    by: Annotated[
        list[str] | None,
        typer.Option(
            "--by", help=f"Group by ({'|'.join(COST_DIMENSIONS)}); repeat or comma-separate."
        ),
    ] = None,
    since: SinceOption = None,
    until: UntilOption = None,
    limit: Annotated[int, typer.Option("--limit", help="Most expensive groups shown.")] = 100,
    cache: Annotated[
        bool, typer.Option("--cache", help="The gateway's cache hit rate and money saved.")
    ] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Server-side cost of model calls, grouped (default: by model)."""
    c = cli(ctx, as_json)
    if cache:
        render(c, "cache", run(c, ask_named(c, "cache", _range(since, until), db=db)))
        return
    dims = [d.strip() for item in (by or ["model"]) for d in item.split(",") if d.strip()]
    params = {"by": dims, "limit": limit, **_range(since, until)}
    answer = run(c, ask_named(c, "cost", params, db=db))
    render(c, "cost", answer)


def outcomes(
    ctx: typer.Context,
    by: Annotated[
        list[str] | None,
        typer.Option(
            "--by", help=f"Also by ({'|'.join(UNIT_DIMENSIONS)}); repeat or comma-separate."
        ),
    ] = None,
    since: SinceOption = None,
    until: UntilOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Outcomes per fleet, and what each successful outcome cost."""
    c = cli(ctx, as_json)
    params = _range(since, until)
    dims = [d.strip() for item in (by or []) for d in item.split(",") if d.strip()]

    async def _both() -> tuple[BaseModel, BaseModel]:
        first = await ask_named(c, "outcomes", {**params, "by": dims}, db=db)
        return first, await ask_named(c, "cost-per-success", params, db=db, fresh=False)

    by_outcome, per_success = run(c, _both())
    if c.json:
        emit_json(
            {
                "outcomes": by_outcome.model_dump(mode="json"),
                "cost_per_success": per_success.model_dump(mode="json"),
            }
        )
        return
    render(c, "outcomes", by_outcome)
    render(c, "cost-per-success", per_success)


def query(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(NAMED_QUERIES)}.")],
    since: SinceOption = None,
    until: UntilOption = None,
    state: Annotated[
        str | None, typer.Option("--state", help="sessions: active|stuck|looping.")
    ] = None,
    order: Annotated[
        str | None, typer.Option("--order", help="workflows: spend|successes.")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="At most this many rows.")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Any named query (sessions, workflows, retries, failed-spend, interventions…)."""
    c = cli(ctx, as_json)
    if name not in NAMED_QUERIES:
        raise typer.BadParameter(f"unknown query {name!r}; one of {', '.join(NAMED_QUERIES)}")
    fields = NAMED_QUERIES[name].params.model_fields
    params: dict[str, Any] = {k: v for k, v in _range(since, until).items() if k in fields}
    for key, value in (("state", state), ("order", order), ("limit", limit)):
        if value is not None:
            params[key] = value
    render(c, name, run(c, ask_named(c, name, params, db=db)))


tools_app = typer.Typer(help="Tool calls: the ledger.", no_args_is_help=True)


@tools_app.command("ledger")
def ledger(
    ctx: typer.Context,
    tool: Annotated[str | None, typer.Option("--tool", help="Only this tool.")] = None,
    agent: Annotated[str | None, typer.Option("--agent", help="Only this agent.")] = None,
    decision: Annotated[
        str | None, typer.Option("--decision", help="allow|deny|needs_approval.")
    ] = None,
    sensitivity: Annotated[
        str | None, typer.Option("--sensitivity", help="public|internal|confidential|secret.")
    ] = None,
    session: Annotated[str | None, typer.Option("--session", help="Only this IID.")] = None,
    since: SinceOption = None,
    until: UntilOption = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many rows.")] = 50,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every tool call (run or refused) with caller, arguments as recorded, result, decision."""
    c = cli(ctx, as_json)
    filters = {
        "tool": tool,
        "agent": agent,
        "decision": decision,
        "sensitivity": sensitivity,
        "iid": session,
    }
    params = {**{k: v for k, v in filters.items() if v is not None}, **_range(since, until)}
    answer = run(c, ask_named(c, "ledger", {**params, "limit": limit}, db=db))
    if c.json:
        emit_json(answer.model_dump(mode="json"))
        return
    columns = ("seq", "ts", "iid", "agent", "tool", "version", "arguments", "sensitivity")
    rows = getattr(answer, "rows", [])
    table = table_of("tool-call ledger", rows, (*columns, "result_class", "decision", "rule"))
    drop = ("version", "sensitivity", "seq", "rule", "ts", "agent", "arguments")
    c.out.print(fit(table, c.out, drop=drop, keep=("iid", "tool", "decision")))


def sql(
    ctx: typer.Context,
    statement: Annotated[str, typer.Argument(help="One read-only statement (SELECT …).")],
    limit: Annotated[int, typer.Option("--limit", help="At most this many rows.")] = 1000,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run one read-only SQL statement against the projection (writes are refused)."""
    c = cli(ctx, as_json)

    async def _ask() -> SqlAnswer:
        params = SqlParams(sql=statement, limit=limit)
        if db is not None:
            from shoal.projections.sql import run_sql

            ds = open_local(db)
            try:
                return await asyncio.to_thread(run_sql, ds, params)
            finally:
                ds.close()
        try:
            async with open_bus(c.settings, start=False, provision=False, name="shoal-sql") as bus:
                return await QueryClient(bus.nc, c.settings).sql(statement, limit)
        except (NatsUnreachable, ServiceUnavailable):
            from shoal.projections.sql import run_sql

            return await asyncio.to_thread(_locally, c, lambda ds: run_sql(ds, params))

    try:
        answer = run(c, _ask())
    except Refused as e:  # a write statement: the user's SQL to change, a usage error
        raise InvalidOption(str(e)) from None
    if c.json:
        emit_json(answer.model_dump(mode="json"))
        return
    table = Table(title_justify="left")
    for name, type_ in zip(answer.columns, answer.types, strict=True):
        table.add_column(f"{name}\n[dim]{type_}[/]")
    for row in answer.rows:
        # Exact values here (a named query's table rounds money to 6 places).
        table.add_row(*("NULL" if v is None else str(v) for v in row))
    c.out.print(table)
    note = f" (cut at --limit {limit})" if answer.truncated else ""
    c.out.print(f"{len(answer.rows)} row(s){note}")


def register(app: typer.Typer) -> None:
    app.command()(cost)
    app.command()(outcomes)
    app.command()(query)
    app.command()(sql)
    app.add_typer(tools_app, name="tools")
