"""Secrets stay secret end to end: agent, event log, core, DuckDB projection and spans.

A real runtime runs the tools, a real core folds the log, the projection writes DuckDB and
the spans go to the span file: a secret tool's failure text reaches none of them, and
redacted arguments still let the core tell a new query from a repeated one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from shoal.agents import Agent, AgentRuntime, CapabilityManifest, TaskContext, ToolEnv, ToolGrant
from shoal.agents import tool as declare_tool
from shoal.bus import Bus
from shoal.bus.genai import GenAI
from shoal.bus.spanfile import read_spans
from shoal.bus.telemetry import setup_telemetry, spans_path
from shoal.schemas import TaskFailed, ToolCalled
from tests.agents.conftest import of_type, submit_task, wait_events
from tests.aggregates.test_ingestion import ingest
from tests.bus.test_telemetry import otel_settings
from tests.projections.conftest import build

pytestmark = pytest.mark.timeout(90)

SECRET = "sk-live-4f9d2c81e7b3a6"


@declare_tool("vault")
async def vault(env: ToolEnv, name: str) -> str:
    """A secret lookup whose failure names the credential it used."""
    raise PermissionError(f"credential {SECRET} was revoked (reading {name})")


@declare_tool("search")
async def search(env: ToolEnv, query: str) -> list[str]:
    """A secret search: its queries must not be recorded."""
    return [f"hit for {len(query)} chars"]


def keeper(fleet: str) -> Agent:
    manifest = CapabilityManifest(
        tools={
            "vault": ToolGrant(sensitivity="secret"),
            "search": ToolGrant(sensitivity="secret"),
        }
    )
    agent = Agent("keeper", fleet=fleet, manifest=manifest, tools=[vault, search])

    @agent.handler("unlock")
    async def unlock(ctx: TaskContext, task: dict[str, str]) -> dict[str, str]:
        return {"value": await ctx.tools.call("vault", name=task["name"])}

    @agent.handler("research")
    async def research(ctx: TaskContext, task: dict[str, Any]) -> dict[str, int]:
        for i in range(5):
            query = task["query"] if task["same"] else f"{task['query']} #{i} {ctx.iid}"
            await ctx.tools.call("search", query=query)
        return {"calls": 5}

    return agent


def files_with(root: Path, needle: str) -> tuple[list[Path], list[Path]]:
    """Every file under ``root``, and those whose bytes contain ``needle``."""
    files = [p for p in root.rglob("*") if p.is_file()]
    return files, [p for p in files if needle.encode() in p.read_bytes()]


async def test_a_secret_tools_error_text_reaches_no_event_row_span_or_log(
    fbus: Bus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tel_settings = otel_settings(tmp_path / "tel", trace_content=True)
    with setup_telemetry(tel_settings, "shoal-agent", install_global=False) as telemetry:
        runtime = AgentRuntime(fbus, keeper("vaults"), genai=GenAI(telemetry))
        async with runtime.running():
            task = await submit_task(fbus, "vaults", "unlock", {"name": "payments-db"})
            stored = await wait_events(
                fbus,
                fbus.subjects.session_events(task.iid),
                lambda e: any(
                    isinstance(f.data, TaskFailed) and f.data.final
                    for f in of_type(e, "task.failed")
                ),
            )
    # what the log says, redacted
    calls = [e.data for e in of_type(stored, "tool.called")]
    assert [(c.result_class, c.error) for c in calls if isinstance(c, ToolCalled)] == [
        ("error", "PermissionError: [redacted]")
    ] * 3
    failures = [e.data for e in of_type(stored, "task.failed")]
    assert [(f.error, f.error_type, f.final) for f in failures if isinstance(f, TaskFailed)] == [
        ("tool vault failed: PermissionError: [redacted]", "ToolFailed", False),
        ("tool vault failed: PermissionError: [redacted]", "ToolFailed", False),
        ("tool vault failed: PermissionError: [redacted]", "ToolFailed", True),
    ]
    # nowhere the secret: every stored message of the prefix's streams...
    topo = fbus.topology
    everything = []
    for stream in (topo.events.name, topo.deadletter.name, topo.control.name):
        everything += await fbus.read(f"{fbus.settings.prefix}.>", stream=stream)
    assert len(everything) >= 9 and not [s.subject for s in everything if SECRET.encode() in s.raw]
    # ...the core's store and the DuckDB projection...
    core = await ingest(fbus.settings)
    try:
        assert core.session(task.iid).status == "failed"
        rows = build(core, tmp_path / "view.duckdb").datastore.rows
    finally:
        core.close()
    errors = rows("SELECT error FROM tool_calls WHERE iid = ?", [task.iid])
    assert [r["error"] for r in errors] == ["PermissionError: [redacted]"] * 3
    tables = [r["table_name"] for r in rows("SELECT table_name FROM information_schema.tables")]
    leaks = [t for t in tables if SECRET in str(rows(f'SELECT * FROM "{t}"'))]
    assert len(tables) >= 5 and leaks == []
    written, leaking = files_with(tmp_path, SECRET)  # core store, DuckDB, span file, key
    assert {".sqlite", ".duckdb", ".jsonl", ".key"} <= {p.suffix for p in written}
    assert leaking == []
    # ...the spans (status, exception events and their stack traces) and the log lines
    spans = spans_path(tel_settings).read_text()
    assert SECRET not in spans
    tool_spans = [s for s in read_spans(spans_path(tel_settings)) if s.name == "execute_tool vault"]
    expected = "tool vault failed: PermissionError: [redacted]"
    assert [
        (
            s.status,
            s.raw["status"]["description"],
            s.attributes["error.type"],
            [(e["name"], e["attributes"]["exception.message"]) for e in s.raw["events"]],
        )
        for s in tool_spans
    ] == [("ERROR", f"ToolFailed: {expected}", "ToolFailed", [("exception", expected)])] * 3
    assert "PermissionError" in caplog.text and SECRET not in caplog.text


@pytest.mark.parametrize(("same", "flags"), [(False, []), (True, ["looping"])])
async def test_five_secret_searches_are_looping_only_when_the_queries_repeat(
    fbus: Bus, same: bool, flags: list[str]
) -> None:
    async with AgentRuntime(fbus, keeper("research")).running():
        task = await submit_task(
            fbus, "research", "research", {"query": "quarterly churn", "same": same}
        )
        stored = await wait_events(
            fbus, fbus.subjects.session_events(task.iid), lambda e: of_type(e, "task.completed")
        )
    calls = [e.data for e in of_type(stored, "tool.called") if isinstance(e.data, ToolCalled)]
    assert [c.arguments for c in calls] == [{"_redacted": ["query"]}] * 5  # all alike, redacted
    assert len({c.arguments_digest for c in calls}) == (1 if same else 5)
    core = await ingest(fbus.settings)
    try:
        session = core.session(task.iid)
        assert (session.tool_calls, session.flags) == (5, flags)
    finally:
        core.close()
    flagged = of_type(await fbus.session_events(task.iid), "session.flagged")
    assert [e.data.reason for e in flagged] == (  # type: ignore[attr-defined]
        ["tool search called 5x with the same arguments"] if same else []
    )
