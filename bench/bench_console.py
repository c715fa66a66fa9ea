"""Benchmark: the console's server time per page on a 1M-event projection, and how soon a live
session page shows a newly published event.

Set-up (untimed): a real nats-server; a synthetic projection of ``--events`` events with the
workload's mix (``bench_projections.generate``), shifted so its last day is today; the query
service owning it (this process); a demo fleet applied (its history in the data dir), a few
kill switches and presences; 15,000 approval documents (20 pending); one session of 40 events
on ``SHOAL_EVENTS``; and the console as its own process (``python -m shoal console --port
0``), signed in with an operator token.

1. Server time. Each page is asked ``--repeat`` times in turn; the figure is the console's
   own ``Server-Timing: app;dur=`` (request in to response start), p50 and p95 per page,
   beside the client's wall time. Ceiling measured in the same run, alternating with the
   page: the page's reads alone (the same ``ConsoleData`` calls over NATS, made from this
   process, no web layer or templates).
2. Live latency. A streaming client holds ``/sessions/<iid>/stream`` open; events of that
   session are published one by one (awaiting each ack) and the time from publish to the
   SSE frame carrying its sequence is taken, p50/p99. Ceiling in the same run: a bare
   JetStream ordered consumer on the same subject, publish to delivery.

Run: ``uv run python bench/bench_console.py`` (``--events 100000`` for a quick run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx
from nats.js.api import DeliverPolicy

from bench.bench_projections import generate
from shoal.aggregates.application import open_core
from shoal.aggregates.pricing import PriceTable
from shoal.aggregates.replay import fold_replay
from shoal.bus import Bus, KillScope, KillSwitch, Presence, ShoalSettings, kill_key, presence_key
from shoal.console import KVTokenStore, control
from shoal.console.approvals import DECIDED_IDS, PENDING_IDS, get_or_none
from shoal.console.data import ConsoleData, SessionFilter
from shoal.ops.fleets import apply_fleet, open_fleet_app
from shoal.policy import Approvals, ApprovalState
from shoal.projections.host import ProjectionHost
from shoal.projections.service import run_query_service
from shoal.schemas import CloudEvent, ModelCalled, TaskStarted, ToolCalled, new_id, utcnow
from shoal.schemas.fleet import parse_fleet_spec
from tests.natsproc import NatsProcess

SPEC = """
fleet: fleet-1
agents:
  - {name: orchestrator, target: shoal.agents.demo:orchestrator_agent, version: "1", replicas: 1}
  - {name: worker, target: shoal.agents.demo:summarizer_agent, version: "1", replicas: 4}
"""

SHIFTED = {
    "model_calls": ["ts"],
    "tool_calls": ["ts"],
    "policy_decisions": ["ts"],
    "approvals": ["ts"],
    "outcomes": ["ts"],
    "sessions": ["opened_at", "last_event_at"],
    "goals": ["opened_at", "submitted_at", "last_event_at"],
}


def shift_to_today(path: Path) -> None:
    """Move every time so the newest model call is a minute ago (today's tiles have data)."""
    con = duckdb.connect(str(path))
    con.execute("SET TimeZone = 'UTC'")
    row = con.execute(
        "SELECT (epoch(now()) - epoch(max(ts)))::BIGINT - 60 FROM model_calls"
    ).fetchone()
    assert row is not None
    seconds = int(row[0])
    for table, columns in SHIFTED.items():
        sets = ", ".join(f"{c} = {c} + to_seconds({seconds})" for c in columns)
        con.execute(f"UPDATE {table} SET {sets}")
    con.close()


def one_session(iid: str, n: int) -> list[CloudEvent]:
    """A worker's session of ``n`` events: a start, then model and tool calls."""
    who: dict[str, Any] = {"fleet": "fleet-1", "agent": "worker", "instance": "inst-1"}
    events = [
        CloudEvent.new(
            TaskStarted(capability="summarize", attempt=1),
            iid=iid,
            source="shoal://fleet-1/worker/inst-1",
            **who,
        )
    ]
    for i in range(n - 1):
        data: Any
        if i % 2:
            data = ToolCalled(call_id=new_id(), tool="search", arguments={"q": f"item {i}"})
        else:
            data = ModelCalled(
                call_id=new_id(),
                model="gpt-4o-mini",
                provider="openai",
                input_tokens=900,
                output_tokens=120,
                latency_ms=800.0,
            )
        events.append(CloudEvent.new(data, iid=iid, source="shoal://fleet-1/worker/inst-1", **who))
    return events


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def sign_in(http: httpx.AsyncClient, token: str) -> None:
    page = await http.get("/login")
    login_csrf = re.search(r'name="login_csrf" value="([^"]+)"', page.text)
    assert login_csrf is not None
    answer = await http.post("/login", data={"login_csrf": login_csrf.group(1), "token": token})
    assert answer.status_code == 303, answer.text


async def bench(tmp: Path, events: int, repeat: int, live: int) -> None:
    server = NatsProcess(tmp / "nats").start()
    settings = ShoalSettings(
        nats_url=server.url, prefix="bc", data_dir=tmp / "data", principal="bench"
    )
    path = tmp / "projection.duckdb"
    started = time.perf_counter()
    counts = generate(path, events)
    shift_to_today(path)
    print(f"== console on {events:,} synthetic events (load average {os.getloadavg()[0]:.1f}) ==")
    print(f"generated in {time.perf_counter() - started:.1f}s: {counts}")
    empty_core = tmp / "emptycore"
    host = ProjectionHost(
        settings, path=path, app_factory=lambda: open_core(ShoalSettings(data_dir=empty_core))
    )
    stop, ready = asyncio.Event(), asyncio.Event()
    service = asyncio.create_task(
        run_query_service(settings, server.url, stop, ready=ready, host=host)
    )
    await asyncio.wait_for(ready.wait(), 120)
    console: subprocess.Popen[bytes] | None = None
    try:
        async with Bus.connect(server.url, settings, name="bench") as bus:
            await bus.provision()
            iid = new_id()
            await bus.publish_many(one_session(iid, 40))
            app = open_fleet_app(settings)
            try:
                await apply_fleet(bus, app, parse_fleet_spec(SPEC), by="bench")
            finally:
                app.close()
            kills = await bus.kv(bus.topology.kill.name)
            scopes: list[tuple[KillScope, str]] = [
                ("tool", "send_email"),
                ("session", "s42"),
                ("model", "o3-mini"),
            ]
            for scope, name in scopes:
                switch = KillSwitch(scope=scope, name=name, by="bench", reason="bench", at=utcnow())
                await kills.put(kill_key(scope, name), switch.model_dump_json().encode())
            presence = await bus.kv(bus.topology.presence.name)
            for i in range(5):
                p = Presence(
                    instance=f"i{i}",
                    fleet="fleet-1",
                    agent="worker",
                    version="1",
                    host="h",
                    pid=1000 + i,
                    started_at=utcnow(),
                    heartbeat_at=utcnow(),
                )
                await presence.put(
                    presence_key("fleet-1", "worker", f"i{i}"), p.model_dump_json().encode()
                )
            await seed_approvals(bus, APPROVALS)
            token, _ = await KVTokenStore.for_bus(bus).create("bench", "operator", by="bench")
            env = {
                **os.environ,
                "NATS_URL": server.url,
                "SHOAL_PREFIX": "bc",
                "SHOAL_DATA_DIR": str(settings.data_dir),
            }
            console = subprocess.Popen(  # noqa: ASYNC220 (started once, before timing)
                [sys.executable, "-m", "shoal", "console", "--port", "0"],
                env=env,
                stdout=(tmp / "console.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
            record = settings.data_dir.resolve() / "services" / "console-url.json"
            deadline = time.monotonic() + 60
            while not record.exists():
                if console.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        f"the console did not start: {(tmp / 'console.log').read_text()}"
                    )
                await asyncio.sleep(0.1)
            url = json.loads(record.read_text())["url"]
            async with httpx.AsyncClient(base_url=url, timeout=60) as http:
                await sign_in(http, token)
                await pages(http, bus, iid, repeat)
                await live_latency(bus, http, iid, live)
    finally:
        if console is not None:
            console.terminate()
            console.wait(20)
        stop.set()
        await service
        server.stop()


def page_reads(bus: Bus, iid: str) -> dict[str, Callable[[], Awaitable[object]]]:
    """Each page's reads over NATS, as the console makes them, without the web layer."""
    d = ConsoleData(bus)
    day = utcnow() - timedelta(hours=24)

    async def replay(at: int | None) -> object:
        return (await fold_replay(bus, iid, PriceTable.load(), at)).replay(iid)

    async def sessions(f: SessionFilter) -> object:
        return await asyncio.gather(d.sessions(f), d.goals(f.q), d.facets())

    async def approvals() -> object:
        store = await Approvals.open(bus)
        ids = await asyncio.gather(d.sql(PENDING_IDS, 100), d.sql(DECIDED_IDS, 20))
        return await asyncio.gather(*(get_or_none(store, r["request_id"]) for r in ids[0] + ids[1]))

    async def fleet() -> object:
        return await asyncio.gather(
            control.describe_fleet(bus, "fleet-1"), control.fleet_history(bus, "fleet-1")
        )

    return {
        "/": lambda: d.overview(300.0),
        "/fleets": lambda: control.list_fleets(bus),
        "/fleets/fleet-1": fleet,
        "/sessions": lambda: sessions(SessionFilter()),
        "/sessions?fleet=fleet-3&status=failed": lambda: sessions(
            SessionFilter(fleet="fleet-3", status="failed")
        ),
        "/sessions?q=user-7": lambda: sessions(SessionFilter(q="user-7")),
        f"/sessions/{iid}": lambda: replay(None),
        f"/sessions/{iid}?at=20": lambda: replay(20),
        "/cost?range=24h": lambda: d.cost(day),
        "/cost?range=all": lambda: d.cost(None),
        "/tools": lambda: d.ledger({"limit": 100}),
        "/tools?decision=deny": lambda: d.ledger({"decision": "deny", "limit": 100}),
        "/kills": lambda: control.list_kills(bus),
        "/approvals": approvals,
        "/gateway": lambda: d.gateway(day),
    }


APPROVALS = 15_000
"""Approval documents in the bucket (it keeps every request; the projection's 30,000 approval
rows are ~15,000 requests and their decisions); 20 of them pending."""


async def seed_approvals(bus: Bus, n: int, pending: int = 20) -> None:
    kv = await bus.kv(bus.topology.approvals.name)
    now = utcnow()
    docs = []
    for i in range(n):
        state = ApprovalState(
            id=f"apr-{i:020d}",
            iid=f"s{i}",
            fleet=f"fleet-{i % 5}",
            agent="worker",
            principal=f"user-{i % 40}",
            action="tool.call",
            target="send_email",
            rule="email-needs-approval",
            arguments={"to": 13, "body": 17},
            request_hash=f"{i:064x}",
            requested_at=now - timedelta(seconds=n - i),
        )
        if i >= pending:
            state = state.model_copy(
                update={"state": "granted", "decided_by": "olga", "decided_at": now}
            )
        docs.append(kv.put(state.id, state.model_dump_json().encode()))
        if len(docs) == 500:
            await asyncio.gather(*docs)
            docs = []
    await asyncio.gather(*docs)


async def pages(http: httpx.AsyncClient, bus: Bus, iid: str, repeat: int) -> None:
    print(f"{'page':<40}{'server p50':>11}{'p95 ms':>9}{'client p95':>12}{'reads p50':>11}")
    worst = 0.0
    for path, reads in page_reads(bus, iid).items():
        server_ms, client_ms, reads_ms = [], [], []
        await http.get(path)  # warm-up
        await reads()
        for _ in range(repeat):
            started = time.perf_counter()
            answer = await http.get(path)
            client_ms.append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
            server_ms.append(float(answer.headers["server-timing"].split("dur=")[1]))
            started = time.perf_counter()
            await reads()
            reads_ms.append((time.perf_counter() - started) * 1000)
        p95 = pct(server_ms, 95)
        worst = max(worst, p95)
        shown = path.replace(iid, "{iid}")
        print(
            f"{shown:<40}{statistics.median(server_ms):>11.1f}{p95:>9.1f}"
            f"{pct(client_ms, 95):>12.1f}{statistics.median(reads_ms):>11.1f}"
        )
    print(f"slowest page p95: {worst:.1f} ms (target < 200 ms)")


async def live_latency(bus: Bus, http: httpx.AsyncClient, iid: str, n: int) -> None:
    """Publish → SSE frame on the page's stream, and the bare ordered-consumer ceiling."""
    info = await bus.js.stream_info(bus.topology.events.name)
    after = info.state.last_seq
    seen: dict[int, float] = {}
    got = asyncio.Event()

    async def read() -> None:
        async with http.stream("GET", f"/sessions/{iid}/stream?after={after}") as answer:
            async for line in answer.aiter_lines():
                if line.startswith("id: "):
                    seen[int(line[4:])] = time.perf_counter()
                    got.set()

    reader = asyncio.create_task(read())
    raw: dict[int, float] = {}

    async def on_raw(msg: Any) -> None:
        raw[msg.metadata.sequence.stream] = time.perf_counter()

    sub = await bus.js.subscribe(
        bus.subjects.session_events(iid),
        stream=bus.topology.events.name,
        ordered_consumer=True,
        cb=on_raw,
        deliver_policy=DeliverPolicy.NEW,
    )
    await asyncio.sleep(1.0)  # both followers attached
    console_ms, raw_ms = [], []
    try:
        for event in one_session(iid, n + 1)[1:]:
            got.clear()
            started = time.perf_counter()
            ack = await bus.publish(event)
            await asyncio.wait_for(got.wait(), 5)
            while ack.seq not in seen:
                got.clear()
                await asyncio.wait_for(got.wait(), 5)
            console_ms.append((seen[ack.seq] - started) * 1000)
            for _ in range(100):
                if ack.seq in raw:
                    break
                await asyncio.sleep(0.001)
            raw_ms.append((raw[ack.seq] - started) * 1000)
            await asyncio.sleep(0.01)
    finally:
        reader.cancel()
        await sub.unsubscribe()
    print(
        f"live session page: publish → SSE frame p50 {pct(console_ms, 50):.1f} ms, "
        f"p99 {pct(console_ms, 99):.1f} ms over {n} events (target p99 < 500 ms); "
        f"ceiling, a bare ordered consumer: p50 {pct(raw_ms, 50):.1f} ms, "
        f"p99 {pct(raw_ms, 99):.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--live", type=int, default=200, help="Events published for the SSE test.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shoal-bench-console-") as d:
        asyncio.run(bench(Path(d), args.events, args.repeat, args.live))


if __name__ == "__main__":
    main()
