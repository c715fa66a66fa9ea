"""``shoal trace``: a session's span tree from the local span file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shoal.bus.genai import GenAI, session_attributes
from shoal.bus.telemetry import setup_telemetry
from shoal.bus.tracecontext import current_traceparent, extract_context
from shoal.ops.cli import app
from tests.bus.test_telemetry import otel_settings

runner = CliRunner()


def shoal(data_dir: Path, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--data-dir", str(data_dir), *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    """A goal G (session P) that delegated session C, traced by two 'processes'."""
    data_dir = tmp_path / "data"
    settings = otel_settings(data_dir)
    with setup_telemetry(settings, "shoal-orchestrator", install_global=False) as orchestrator:
        g = GenAI(orchestrator)
        parent = session_attributes(iid="P", gid="G", fleet="docs", agent="planner")
        with g.invoke_agent("planner", parent):
            with g.chat("offline", parent, provider="shoal-offline") as chat:
                chat.response(model="offline", input_tokens=10, output_tokens=4)
            handoff = current_traceparent()
    with setup_telemetry(settings, "shoal-worker", install_global=False) as worker:
        g = GenAI(worker)
        child = session_attributes(iid="C", gid="G", parentiid="P", fleet="docs", agent="reader")
        with g.invoke_agent("reader", child, parent=extract_context({}, handoff)):
            with g.execute_tool("read_file", child, call_id="T1") as tool:
                tool.decided("deny", "manifest.tool")
    with setup_telemetry(settings, "shoal-other", install_global=False) as other:
        with GenAI(other).invoke_agent("x", session_attributes(iid="OTHER")):
            pass
    return data_dir


def names(tree: dict[str, object]) -> object:
    children = tree["children"]
    assert isinstance(children, list)
    return [tree["name"], [names(c) for c in children]]


def test_trace_of_a_session_is_its_subtree_with_delegated_sessions(recorded: Path) -> None:
    code, out, _ = shoal(recorded, "trace", "P", "--json")
    assert code == 0
    doc = json.loads(out)
    assert len(doc["trace_ids"]) == 1
    assert [names(t) for t in doc["spans"]] == [
        [
            "invoke_agent planner",
            [["chat offline", []], ["invoke_agent reader", [["execute_tool read_file", []]]]],
        ]
    ]
    [root] = doc["spans"]
    assert root["resource"]["service.name"] == "shoal-orchestrator"
    assert root["children"][1]["resource"]["service.name"] == "shoal-worker"


def test_trace_of_a_child_session_starts_at_its_own_agent_span(recorded: Path) -> None:
    code, out, _ = shoal(recorded, "trace", "C", "--json")
    assert code == 0
    assert [names(t) for t in json.loads(out)["spans"]] == [
        ["invoke_agent reader", [["execute_tool read_file", []]]]
    ]


def test_trace_of_a_goal_shows_the_whole_trace(recorded: Path) -> None:
    code, out, _ = shoal(recorded, "trace", "G", "--json")
    assert code == 0
    [root] = json.loads(out)["spans"]
    assert root["name"] == "invoke_agent planner"


def test_trace_prints_a_tree_with_calls_and_decisions(recorded: Path) -> None:
    code, out, _ = shoal(recorded, "trace", "P")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("trace ")
    assert "invoke_agent planner" in lines[1] and "iid=P" in lines[1]
    assert "chat offline" in lines[2] and "shoal-offline:offline in=10 out=4" in lines[2]
    assert "invoke_agent reader" in lines[3] and "shoal-worker" in lines[3]
    assert "execute_tool read_file" in lines[4] and "policy deny" in lines[4]
    assert len(lines) == 5


def test_an_unknown_iid_is_one_line_and_a_non_zero_exit(recorded: Path) -> None:
    code, out, err = shoal(recorded, "trace", "NOPE")
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [
        f"error: no spans of session or goal NOPE in {recorded / 'traces' / 'spans.jsonl'}"
    ]


def test_no_span_file_says_why(tmp_path: Path) -> None:
    code, _, err = shoal(tmp_path, "trace", "P")
    assert code == 1
    assert "no span file at" in err and len(err.strip().splitlines()) == 1
