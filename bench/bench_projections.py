"""Benchmark: the DuckDB projection's build rate and the named queries' latency.

1. Build rate. A realistic workload is folded into a real core store (SQLite, untimed set-up),
   then the projection is rebuilt from the core's notification log (``rebuild``: read the log,
   decode each event with the core's mapper, batch rows, write Arrow batches + tracking).
   Ceilings measured in the same run: reading + decoding the same log without DuckDB, and a
   plain DuckDB bulk insert of the very rows the projection produced (Arrow tables, one
   transaction).
2. Query latency. Synthetic projections of 1M and 10M events with the workload's mix
   (60% model calls, 27% tool calls, 3% policy decisions, 3% approvals, 1% outcomes, a
   session per 16 events, a goal per 3 sessions, each call during its session's life),
   generated inside DuckDB (10M rows take minutes to fold on 2 cores; SQL makes them in
   seconds), the rollups filled from them by the projection's own backfill statements.
   ``cost`` queries are also timed on the raw rows alone (``raw rows ms``), same answer.
   Each named query is timed directly (the function the service runs) and over NATS
   request/reply through the query service (same process, real nats-server); the
   difference is the NATS overhead.

Run: ``uv run python bench/bench_projections.py`` (``--sizes 1000000`` for a shorter run,
``--goals`` to size the build workload). Medians of ``--repeat`` runs after one warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import nats

from shoal.aggregates.application import ShoalCore, open_core
from shoal.bus import ShoalSettings
from shoal.projections import rollups
from shoal.projections.answers import CostParams
from shoal.projections.client import QueryClient
from shoal.projections.host import ProjectionHost
from shoal.projections.queries import run_named
from shoal.projections.queries.cost import cost
from shoal.projections.rebuild import rebuild
from shoal.projections.schema import TABLES, create_statements
from shoal.projections.service import run_query_service
from tests.natsproc import NatsProcess
from tests.projections.workload import Workload, ingest

SINCE = "2026-01-05T12:00:00+00:00"
QUERIES: list[tuple[str, str, dict[str, Any]]] = [
    ("cost --by model", "cost", {"by": ["model"]}),
    ("cost --by fleet", "cost", {"by": ["fleet"]}),
    ("cost --by agent,model", "cost", {"by": ["agent", "model"]}),
    ("cost --by principal", "cost", {"by": ["principal"]}),
    ("cost --by goal", "cost", {"by": ["goal"]}),
    ("cost --by outcome", "cost", {"by": ["outcome"]}),
    ("cost --by model --since", "cost", {"by": ["model"], "since": "2026-01-05T12:00:00+00:00"}),
    (
        "cost --by outcome --since",
        "cost",
        {"by": ["outcome"], "since": "2026-01-05T12:00:00+00:00"},
    ),
    ("cost-per-success", "cost-per-success", {}),
    ("failed-spend", "failed-spend", {}),
    ("retries", "retries", {}),
    ("ledger --decision deny", "ledger", {"decision": "deny", "limit": 100}),
    ("ledger --tool search", "ledger", {"tool": "search", "limit": 100}),
    ("sessions active", "sessions", {"state": "active"}),
    ("sessions stuck", "sessions", {"state": "stuck", "now": "2026-02-01T00:00:00+00:00"}),
    ("sessions looping", "sessions", {"state": "looping"}),
    ("workflows by spend", "workflows", {"order": "spend"}),
    ("workflows by successes", "workflows", {"order": "successes"}),
    ("interventions", "interventions", {}),
    ("outcomes", "outcomes", {}),
    ("cost --by team,workflow,capability", "cost", {"by": ["team", "workflow", "capability"]}),
    ("evals --by agent_version", "evals", {"by": ["agent_version"]}),
    ("evals --by task_class,model", "evals", {"by": ["task_class", "model"]}),
    ("evals --by prompt,tool_set", "evals", {"by": ["prompt_template", "tool_set"]}),
    ("evals --by capability --since", "evals", {"by": ["capability"], "since": SINCE}),
    (
        "evals compare --agent",
        "evals-compare",
        {
            "baseline": {"agent": "agent-7", "agent_version": "1.0"},
            "candidate": {"agent": "agent-7", "agent_version": "1.1"},
        },
    ),
    ("report", "report", {"since": "2026-01-01T00:00:00+00:00"}),
]

# The same questions asked of DuckDB directly, as plainly as SQL allows: the sessions table
# alone (no goal labels, no effective outcome view, no latency quantiles, no bootstrap).
RAW: dict[str, str] = {
    "evals --by agent_version": """
        SELECT agent_version, count(*) AS n,
               count(*) FILTER (status = 'completed') AS ok, sum(cost_usd) AS spend,
               sum(attempts - 1) AS retries,
               count(*) FILTER (approvals_requested > 0 OR asks > 0) AS interventions
        FROM sessions WHERE capability IS NOT NULL GROUP BY ALL
    """,
    "evals compare --agent": """
        SELECT agent_version, count(*) AS n, count(*) FILTER (status = 'completed') AS ok,
               sum(cost_usd) AS spend
        FROM sessions WHERE capability IS NOT NULL AND agent = 'agent-7'
              AND agent_version IN ('1.0', '1.1')
        GROUP BY ALL
    """,
}


# -- 1. build rate ------------------------------------------------------------------------------


def bench_build(tmp: Path, goals: int, rounds: int = 3) -> None:
    core = open_core(ShoalSettings(data_dir=tmp / "core"))
    started = time.perf_counter()
    ingest(core, Workload(goals=goals, seed=3))
    notifications = core.recorder.max_notification_id() or 0
    took = time.perf_counter() - started
    print(f"set-up: {goals} goals -> {notifications} core events in {took:.1f}s")

    # Alternate rounds, medians: load bursts on a shared machine hit both sides alike.
    reads, builds = [], []
    for _ in range(rounds):
        reads.append(_read_only(core))
        built = rebuild(core, tmp / "built.duckdb")
        builds.append(built.seconds)
    read_s, build_s = statistics.median(reads), statistics.median(builds)
    rate = built.events / build_s
    rows, insert_s = _bulk_insert_ceiling(tmp / "built.duckdb", tmp / "ceiling.duckdb")
    core.close()

    n = built.events
    print(f"\n== projection build (core log -> DuckDB), median of {rounds} rounds ==")
    print(f"shoal rebuild:               {n:>9} events in {build_s:6.2f}s = {rate:>9,.0f}/s")
    print(f"ceiling, read+decode only:   {n:>9} events in {read_s:6.2f}s = {n / read_s:>9,.0f}/s")
    print(
        f"ceiling, DuckDB bulk insert: {rows:>9} rows   in {insert_s:6.2f}s = "
        f"{rows / insert_s:>9,.0f}/s (the same content: {n / insert_s:,.0f} events/s)"
    )
    print(
        f"ratio shoal / read+decode: {rate / (n / read_s):.2f}; bulk insert is "
        f"{insert_s / build_s:.0%} of the build time; target >= 50,000 events/s"
    )


def _read_only(core: ShoalCore) -> float:
    from shoal.projections.projection import CostProjection

    topics = CostProjection.topics
    started, position = time.perf_counter(), 0
    while True:
        page = core.recorder.select_notifications(
            start=position, limit=5000, topics=topics, inclusive_of_start=False
        )
        for n in page:
            core.mapper.to_domain_event(n)
        if len(page) < 5000:
            return time.perf_counter() - started
        position = page[-1].id


def _bulk_insert_ceiling(built: Path, target: Path) -> tuple[int, float]:
    source = duckdb.connect(str(built), read_only=True)
    arrow = {t.name: source.sql(f"SELECT * FROM {t.name}").to_arrow_table() for t in TABLES}
    source.close()
    con = duckdb.connect(str(target))
    for statement in create_statements():
        con.execute(statement)
    started = time.perf_counter()
    con.begin()
    for name, table in arrow.items():
        con.register("staging", table)
        con.execute(f"INSERT INTO {name} SELECT * FROM staging")
        con.unregister("staging")
    con.commit()
    elapsed = time.perf_counter() - started
    con.close()
    return sum(t.num_rows for t in arrow.values()), elapsed


# -- 2. query latency -------------------------------------------------------------------------


def generate(path: Path, events: int) -> dict[str, int]:
    """A synthetic projection of ``events`` events with the workload's mix, made in DuckDB."""
    con = duckdb.connect(str(path))
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    for statement in create_statements() + rollups.create_statements():
        con.execute(statement)
    n_sessions, n_goals = events // 16, events // 48
    counts = {
        "model_calls": events * 60 // 100,
        "tool_calls": events * 27 // 100,
        "policy_decisions": events * 3 // 100,
        "approvals": events * 3 // 100,
        "outcomes": events // 100,
        "sessions": n_sessions,
        "goals": n_goals,
    }
    base = "TIMESTAMPTZ '2026-01-05 09:00:00+00'"
    # Per-session attributes are a function of the session number, so facts agree with it.
    fleet = "'fleet-' || (({s}) % 12)"
    # A call belongs to a session and happens during its life (the 800 ms after it opened):
    # the i-th of n calls goes to session i * sessions / n, in order.
    of_session = f"(i * {n_sessions}) // {{n}}"
    during = f"{base} + to_milliseconds(s * 16 * 50 + (i % 16) * 50)"
    agent = "'agent-' || (({s}) % 40)"
    labels = """
        ['payments', 'search', 'growth', 'infra', 'data', 'support'][1 + ({g}) % 6] AS team,
        'repo-' || (({g}) % 30) AS repo, 'wf-' || (({g}) % 20) AS workflow,
        'class-' || (({g}) % 8) AS task_class, 'tpl-' || (({g}) % 5) AS prompt_template,
        'v' || (({g}) % 3) AS prompt_version
    """
    con.execute(f"""
        INSERT INTO goals BY NAME SELECT 'g' || i AS gid, uuid()::VARCHAR AS goal_id,
            {fleet.format(s="i * 3")} AS fleet, 'user-' || (i % 200) AS principal,
            'goal ' || i AS text, 's' || (i * 3) AS root_iid,
            CASE WHEN i % 10 < 7 THEN 'completed' WHEN i % 10 < 9 THEN 'failed' ELSE 'running' END
                AS status,
            false AS budget_exceeded, 3 AS sessions,
            {base} + to_milliseconds(i * 48 * 50) AS opened_at,
            {base} + to_milliseconds(i * 48 * 50) AS submitted_at,
            {base} + to_milliseconds(i * 48 * 50) AS last_event_at,
            CASE WHEN i % 7 = 0 THEN 'success' WHEN i % 13 = 0 THEN 'abandoned' END AS outcome,
            CASE WHEN i % 7 = 0 THEN 'success' WHEN i % 13 = 0 THEN 'abandoned' END
                AS root_outcome,
            30 AS model_calls, 0.0369 AS cost_usd, {labels.format(g="i")}
        FROM range({n_goals}) t(i)
    """)
    con.execute(f"""
        INSERT INTO sessions BY NAME SELECT 's' || i AS iid, uuid()::VARCHAR AS session_id,
            'g' || (i // 3) AS gid, CASE WHEN i % 3 = 0 THEN NULL ELSE 's' || (i - i % 3) END
                AS parentiid,
            {fleet.format(s="i - i % 3")} AS fleet, 'user-' || ((i // 3) % 200) AS principal,
            CASE WHEN i % 3 = 0 THEN NULL ELSE 'cap-' || (i % 9) END AS capability,
            {agent.format(s="i")} AS agent, 'inst-' || (i % 400) AS instance,
            CASE WHEN i % 100 < 80 THEN 'completed' WHEN i % 100 < 92 THEN 'failed'
                 WHEN i % 100 < 95 THEN 'killed' ELSE 'running' END AS status,
            1 + (i % 10 = 0)::INTEGER AS attempts,
            {base} + to_milliseconds(i * 16 * 50) AS opened_at,
            {base} + to_milliseconds(i * 16 * 50 + 800) AS last_event_at,
            10 AS model_calls, 4 AS tool_calls, 0 AS input_tokens, 0 AS output_tokens,
            0 AS cached_tokens, 0.0123 AS cost_usd, 0 AS reported_cost_usd, 0 AS errors,
            0 AS denials, (i % 20 = 0)::INTEGER AS approvals_requested, 0 AS rejected,
            false AS budget_exceeded, false AS stuck, (i % 997 = 0) AS looping,
            {base} + to_milliseconds(i * 16 * 50 + 100) AS started_at,
            CASE WHEN i % 100 < 95 THEN {base} + to_milliseconds(i * 16 * 50 + 500 + i % 5000)
                END AS ended_at,
            {labels.format(g="i // 3")},
            CASE WHEN i % 3 <> 0 THEN '1.' || ((i // 40) % 4) END AS agent_version,
            ['gpt-4o-mini', 'gpt-4o', 'claude-haiku-3.5', 'offline-small', 'o3-mini'][1 + i % 5]
                AS model,
            [['search'], ['read_file', 'search'], NULL, ['crm_lookup']][1 + i % 4] AS tools,
            (i % 50 = 0)::BIGINT AS asks
        FROM range({n_sessions}) t(i)
    """)
    con.execute(f"""
        INSERT INTO model_calls BY NAME SELECT i AS seq,
            {during} AS ts, 's' || s AS iid, 'g' || (s // 3) AS gid,
            {fleet.format(s="s - s % 3")} AS fleet, {agent.format(s="s")} AS agent,
            'inst-' || (s % 400) AS instance, 'user-' || ((s // 3) % 200) AS principal,
            'ev' || i AS event_id, 'm' || i AS call_id,
            ['gpt-4o-mini', 'gpt-4o', 'claude-haiku-3.5', 'offline-small', 'o3-mini'][1 + i % 5]
                AS model, 'openai' AS provider,
            100 + i % 4000 AS input_tokens, 10 + i % 1500 AS output_tokens,
            i % 50 AS cached_tokens, 80.0 + i % 3000 AS latency_ms, 'stop' AS finish_reason,
            ((100 + i % 4000) * 0.15 + (10 + i % 1500) * 0.6)::DECIMAL(18,10) / 1000000
                AS cost_usd,
            'gpt-4o-mini' AS priced_as
        FROM (SELECT i, {of_session.format(n=counts["model_calls"])} AS s
              FROM range({counts["model_calls"]}) t(i))
    """)
    con.execute(f"""
        INSERT INTO tool_calls BY NAME SELECT i AS seq,
            {during} AS ts, 's' || s AS iid, 'g' || (s // 3) AS gid,
            {fleet.format(s="s - s % 3")} AS fleet, {agent.format(s="s")} AS agent,
            'inst-' || (s % 400) AS instance, 'user-' || ((s // 3) % 200) AS principal,
            'et' || i AS event_id, 'c' || i AS call_id,
            ['search', 'read_file', 'crm_lookup', 'send_email', 'run_tests'][1 + i % 5] AS tool,
            '1' AS version, '{{"q": "item ' || (i % 50) || '"}}' AS arguments,
            ['public', 'internal', 'confidential', 'secret'][1 + i % 4] AS sensitivity,
            CASE WHEN i % 20 = 0 THEN 'error' ELSE 'ok' END AS result_class,
            1.0 + i % 400 AS latency_ms
        FROM (SELECT i, {of_session.format(n=counts["tool_calls"])} AS s
              FROM range({counts["tool_calls"]}) t(i))
    """)
    con.execute(f"""
        INSERT INTO policy_decisions BY NAME SELECT i AS seq,
            {base} + to_milliseconds(i * 1000) AS ts, 's' || s AS iid, 'g' || (s // 3) AS gid,
            {fleet.format(s="s - s % 3")} AS fleet, {agent.format(s="s")} AS agent,
            'ep' || i AS event_id, 'tool.call' AS action,
            ['search', 'send_email'][1 + i % 2] AS target,
            CASE WHEN i % 3 = 0 THEN 'needs_approval' ELSE 'deny' END AS decision,
            'manifest.tool' AS rule
        FROM (SELECT i, (i * 31) % {n_sessions} AS s FROM range({counts["policy_decisions"]}) t(i))
    """)
    con.execute(f"""
        INSERT INTO approvals BY NAME SELECT i AS seq, {base} + to_milliseconds(i * 1000) AS ts,
            's' || ((i * 17) % {n_sessions}) AS iid, 'a' || i AS request_id,
            ['requested', 'granted'][1 + i % 2] AS state
        FROM range({counts["approvals"]}) t(i)
    """)
    con.execute(f"""
        INSERT INTO outcomes BY NAME SELECT i AS seq, {base} + to_milliseconds(i * 3000) AS ts,
            's' || ((i * 3) % {n_sessions}) AS iid, 'success' AS outcome
        FROM range({counts["outcomes"]}) t(i)
    """)
    # The rollups, from the rows just made, by the projection's own backfill statements (what
    # a projection built from these events would hold: tests/projections/test_rollups.py).
    for statement in rollups.backfill_statements():
        con.execute(statement)
    for t in rollups.ROLLUP_TABLES:
        counts[t] = len(con.execute(f"SELECT 1 FROM {t}").fetchall())
    con.close()
    return counts


async def bench_queries(
    tmp: Path, events: int, repeat: int, nats_url: str, only: list[str] | None = None
) -> None:
    path = tmp / f"q{events}.duckdb"
    started = time.perf_counter()
    counts = generate(path, events)
    print(f"\n== named queries on {events:,} synthetic events ==")
    print(f"generated in {time.perf_counter() - started:.1f}s: {counts}")
    settings = ShoalSettings(data_dir=tmp / f"svc{events}", nats_url=nats_url, prefix=f"b{events}")
    empty_core = tmp / f"emptycore{events}"
    host = ProjectionHost(
        settings, path=path, app_factory=lambda: open_core(ShoalSettings(data_dir=empty_core))
    )
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_query_service(settings, nats_url, stop, ready=ready, host=host))
    waiting = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiting}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # the service failed to start: say why
    nc = await nats.connect(nats_url)
    client = QueryClient(nc, settings)
    print(
        f"{'query':<36}{'DuckDB ms':>11}{'over NATS ms':>14}{'NATS adds ms':>14}"
        f"{'raw DuckDB ms':>15}{'raw rows ms':>13}"
    )
    worst, overheads = 0.0, []
    try:
        ping = await _ping_ms(nc, repeat * 5)
        for label, name, params in QUERIES:
            if only and not any(label.startswith(o) for o in only):
                continue
            direct, over, added = await _paired_ms(
                partial(run_named, host.datastore, name, params),
                partial(client.ask, name, params, timeout=60),
                repeat,
            )
            raw = _raw_ms(host, RAW[label], repeat) if label in RAW else None
            worst = max(worst, direct)
            overheads.append(added)
            ceiling = "" if raw is None else f"{raw:>15.1f}"
            rows = ""
            if name == "cost":  # the same answer from the raw rows alone, for comparison
                p = CostParams.model_validate(params)
                rows = f"{_median_ms(partial(cost, host.datastore, p, rollups=False), 3):>13.1f}"
                ceiling = ceiling or " " * 15
            print(f"{label:<36}{direct:>11.1f}{over:>14.1f}{added:>14.1f}{ceiling}{rows}")
    finally:
        await nc.close()
        stop.set()
        await task
    print(
        f"slowest named query: {worst:.1f} ms (target < 200 ms); NATS adds "
        f"{statistics.median(overheads):.1f} ms median, {max(overheads):.1f} ms at most "
        f"(target < 5 ms); a bare $SRV.PING round trip: {ping:.2f} ms"
    )


def _raw_ms(host: ProjectionHost, sql: str, repeat: int) -> float:
    """The median time of one plain SQL statement on the service's own connection."""
    ds = host.datastore
    ds.rows(sql)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        ds.rows(sql)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def _paired_ms(
    direct: Callable[[], object], over_nats: Callable[[], Any], repeat: int
) -> tuple[float, float, float]:
    """Medians of direct and over-NATS times, and of their paired differences.

    The two run alternately, so a burst of load on this shared machine hits both alike.
    """
    direct()
    await over_nats()
    d_times, n_times, diffs = [], [], []
    for _ in range(repeat):
        started = time.perf_counter()
        direct()
        d = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        await over_nats()
        n = (time.perf_counter() - started) * 1000
        d_times.append(d)
        n_times.append(n)
        diffs.append(n - d)
    return statistics.median(d_times), statistics.median(n_times), statistics.median(diffs)


def _median_ms(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def _ping_ms(nc: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await nc.request("$SRV.PING.shoal-query", b"", timeout=5)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--goals", type=int, default=2000, help="Build workload size (goals).")
    parser.add_argument("--sizes", default="1000000,10000000", help="Synthetic event counts.")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-build", action="store_true", help="Skip the build benchmark.")
    parser.add_argument(
        "--only", default="", help="Only queries whose label starts with one of these (a,b)."
    )
    args = parser.parse_args()
    only = [o.strip() for o in args.only.split(",") if o.strip()] or None
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as d:
        tmp = Path(d)
        if not args.no_build:
            bench_build(tmp, args.goals)
        server = NatsProcess(tmp / "nats").start()
        try:
            for size in (int(s) for s in args.sizes.split(",") if s):
                asyncio.run(bench_queries(tmp, size, args.repeat, server.url, only))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
