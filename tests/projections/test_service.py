"""The query service over a real nats-server: discoverable, typed answers, refusals, freshness."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from rich.console import Console
from typer.testing import CliRunner

from shoal.aggregates.application import ShoalCore, open_core
from shoal.bus import ShoalSettings
from shoal.errors import QueryFailed, Refused, ServiceUnavailable
from shoal.ops.cli import app
from shoal.ops.cli.cost import fetch_demo_summary, render_demo_summary
from shoal.projections.client import QueryClient
from shoal.projections.queries import EXAMPLE_COMPARE, NAMED_QUERIES, CostAnswer, SessionsAnswer
from shoal.projections.rebuild import rebuild
from shoal.projections.service import MICRO_NAME, SERVICE_ENDPOINTS, run_query_service
from tests.natsproc import NatsProcess
from tests.projections.conftest import NOW, WORKLOAD, as_tenant
from tests.projections.workload import Workload, ingest


@dataclass
class Running:
    settings: ShoalSettings
    nc: NATS
    client: QueryClient


@pytest.fixture
async def service(
    nats_server: NatsProcess, settings_with_core: ShoalSettings, prefix: str
) -> AsyncIterator[Running]:
    settings = as_tenant(settings_with_core, prefix, nats_server.url)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_query_service(settings, nats_server.url, stop, ready=ready))
    await asyncio.wait_for(ready.wait(), 30)
    nc = await nats.connect(nats_server.url)
    client = QueryClient(nc, settings)
    await client.ask("sync", timeout=30)  # the service answers at once; catch up first
    try:
        yield Running(settings, nc, client)
    finally:
        await nc.close()
        stop.set()
        await asyncio.wait_for(task, 30)


def _core_cost_by_model(core: ShoalCore) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    for s in core.sessions():
        for model, cost in s.cost_by_model.items():
            totals[model] = totals.get(model, Decimal(0)) + cost
    return totals


async def test_cost_over_nats_equals_the_cores_server_side_cost(
    service: Running, core: ShoalCore
) -> None:
    answer = await service.client.query("cost", {"by": ["model"]})
    assert isinstance(answer, CostAnswer)
    assert {r.key[0]: r.cost_usd for r in answer.rows} == _core_cost_by_model(core)


async def test_every_named_query_answers_over_nats(service: Running) -> None:
    for name in NAMED_QUERIES:
        params = EXAMPLE_COMPARE if name == "evals-compare" else {}
        answer = await service.client.query(name, params)
        assert isinstance(answer, NAMED_QUERIES[name].answer)
    looping = await service.client.query("sessions", {"state": "looping"})
    assert isinstance(looping, SessionsAnswer)
    assert [r.iid for r in looping.rows] == ["t-live-loop"]
    stuck = await service.client.query("sessions", {"state": "stuck", "now": NOW.isoformat()})
    assert isinstance(stuck, SessionsAnswer)
    assert sorted(r.iid for r in stuck.rows) == ["r-live", "t-live-loop", "t-live-work"]


async def test_the_service_is_discoverable_with_srv_ping_and_info(service: Running) -> None:
    ping = json.loads((await service.nc.request(f"$SRV.PING.{MICRO_NAME}", b"", timeout=5)).data)
    assert ping["name"] == MICRO_NAME
    assert ping["metadata"]["prefix"] == service.settings.prefix
    info = json.loads((await service.nc.request(f"$SRV.INFO.{MICRO_NAME}", b"", timeout=5)).data)
    subjects = {e["name"]: e["subject"] for e in info["endpoints"]}
    assert subjects == {
        name: f"{service.settings.prefix}.api.query.{name}" for name in SERVICE_ENDPOINTS
    }


async def test_sql_delete_over_nats_is_refused(service: Running) -> None:
    with pytest.raises(Refused) as refused:
        await service.client.sql("DELETE FROM sessions")
    assert str(refused.value) == (
        "shoal sql is read-only: DELETE statements are refused (only SELECT runs)"
    )
    with pytest.raises(QueryFailed, match=r'^Parser Error: syntax error at or near "sessions"$'):
        await service.client.sql("SELECT 1 FORM sessions")
    rows = (await service.client.sql("SELECT count(*) FROM sessions WHERE status = 'killed'")).rows
    assert rows[0][0] > 0


async def test_a_fresh_query_sees_what_the_core_recorded_after_the_service_started(
    service: Running,
) -> None:
    core = open_core(service.settings)
    try:
        before = await service.client.query("cost", {"by": ["fleet"]})
        last = core.recorder.max_notification_id() or 0
        more = Workload(goals=15, seed=99, prefix=WORKLOAD.prefix)
        await asyncio.to_thread(ingest, core, more, start_seq=100_000)
        assert (core.recorder.max_notification_id() or 0) > last
        after = await service.client.query("cost", {"by": ["fleet"]}, fresh=True)
        assert isinstance(before, CostAnswer) and isinstance(after, CostAnswer)
        expected = sum((s.cost_usd for s in core.sessions()), Decimal(0))
        assert after.total_usd == expected > before.total_usd
    finally:
        core.close()


async def test_a_rebuilt_file_is_swapped_in_and_answers_the_same(service: Running) -> None:
    before = await service.client.query("cost", {"by": ["agent", "model"]})
    core = open_core(service.settings)
    target = service.settings.data_dir / "projections.rebuild.duckdb"
    built = await asyncio.to_thread(rebuild, core, target.resolve())
    core.close()
    status = await service.client.ask("swap", {"path": str(target.resolve())})
    assert status["position"] == built.position
    assert not target.exists()
    assert await service.client.query("cost", {"by": ["agent", "model"]}) == before


async def test_the_cli_asks_the_service(service: Running) -> None:
    s = service.settings
    args = ["--nats-url", s.nats_url or "", "--prefix", s.prefix, "--data-dir", str(s.data_dir)]
    result = await asyncio.to_thread(
        CliRunner().invoke, app, [*args, "cost", "--by", "agent,model", "--json"]
    )
    assert result.exit_code == 0, result.output
    direct = await service.client.query("cost", {"by": ["agent", "model"]})
    assert json.loads(result.output) == direct.model_dump(mode="json")


async def test_without_a_service_the_client_says_so(nats_server: NatsProcess, prefix: str) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        client = QueryClient(nc, ShoalSettings(nats_url=nats_server.url, prefix=prefix))
        with pytest.raises(ServiceUnavailable) as missing:
            await client.query("cost", {})
        assert str(missing.value) == (
            f"no query service answers on {prefix}.api.query.cost; "
            "start one with 'shoal projections serve'"
        )
    finally:
        await nc.close()


async def test_a_second_service_on_the_same_file_is_refused_in_one_line(
    service: Running,
) -> None:
    s = service.settings
    args = ["--nats-url", s.nats_url or "", "--prefix", s.prefix, "--data-dir", str(s.data_dir)]
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "shoal", *args, "projections", "serve"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1  # held by another process: a failure at run time
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: cannot open {s.store_dir / 'projections.duckdb'}: IO Error")


async def test_the_demo_summary_shows_cost_by_agent_and_model_and_per_success(
    service: Running, core: ShoalCore
) -> None:
    cost, success = await fetch_demo_summary(service.nc, service.settings)
    assert cost.by == ["agent", "model"]
    assert cost.total_usd == sum((s.cost_usd for s in core.sessions()), Decimal(0))
    assert success.total.successes > 0
    console = Console(record=True, width=200)
    render_demo_summary(console, cost, success)
    text = console.export_text()
    assert "cost by agent, model (USD, server-side)" in text
    assert "cost per successful outcome (USD)" in text
    assert f"{cost.total_usd:.6f}" in text
    assert f"{success.total.cost_per_success_usd:.6f}" in text


async def test_export_writes_only_under_the_export_root(service: Running, tmp_path: Path) -> None:
    root = Path.cwd().resolve()
    outside = tmp_path / "elsewhere"
    with pytest.raises(Refused) as refused:
        await service.client.ask("export", {"directory": str(outside)})
    assert str(refused.value) == (
        f"export writes only under {root} (SHOAL_EXPORT_ROOT), not {outside.resolve()}"
    )
    assert not outside.exists()


async def test_swap_takes_only_the_rebuilt_file_in_the_data_dir(
    service: Running, tmp_path: Path
) -> None:
    before = await service.client.query("cost", {"by": ["fleet"]})
    forged = tmp_path / "projections.rebuild.duckdb"
    forged.write_bytes(b"not a database")
    with pytest.raises(Refused, match="swap takes only a rebuilt database"):
        await service.client.ask("swap", {"path": str(forged)})
    assert forged.exists()
    assert await service.client.query("cost", {"by": ["fleet"]}) == before


async def test_every_endpoint_refuses_an_unknown_field_the_same_way_naming_it(
    service: Running,
) -> None:
    # ``export`` used to ignore an unknown field and write to the default directory.
    for endpoint, body in (
        ("export", {"directroy": "x"}),
        ("cost", {"by": ["model"], "bye": 1}),
        ("status", {"verbose": True}),
        ("sql", {"sql": "SELECT 1", "rows": 5}),
    ):
        unknown = next(k for k in body if k not in ("by", "sql"))
        with pytest.raises(QueryFailed) as refused:
            await service.client.ask(endpoint, body)
        assert str(refused.value) == f"{unknown}: Extra inputs are not permitted", endpoint
    with pytest.raises(QueryFailed, match=r"^the request must be a JSON object of parameters$"):
        await _raw(service, b"[1]")
    with pytest.raises(QueryFailed, match=r"^the request is not JSON: "):
        await _raw(service, b"{oops")


async def _raw(service: Running, payload: bytes) -> None:
    reply = await service.nc.request(
        f"{service.settings.prefix}.api.query.cost", payload, timeout=5
    )
    headers = reply.headers or {}
    assert headers.get("Nats-Service-Error-Code") == "400"
    raise QueryFailed(headers["Nats-Service-Error"])


async def test_each_endpoint_lists_its_request_and_reply_schema_ids_in_its_metadata(
    service: Running,
) -> None:
    info = json.loads((await service.nc.request(f"$SRV.INFO.{MICRO_NAME}", b"", timeout=5)).data)
    metadata = {e["name"]: e["metadata"] for e in info["endpoints"]}
    assert metadata["export"] == {
        "kind": "admin",
        "request_schema": "urn:shoal:schema:api:query.export.request",
        "reply_schema": "urn:shoal:schema:api:query.export.reply",
    }
    assert metadata["cost"]["request_schema"] == "urn:shoal:schema:api:query.cost.request"
    assert {m["reply_schema"] for m in metadata.values()} == {
        f"urn:shoal:schema:api:query.{name}.reply" for name in SERVICE_ENDPOINTS
    }
