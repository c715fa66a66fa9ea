"""``shoal evals``, ``shoal evals compare``, ``shoal report`` and ``goal submit --label``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shoal.ops.cli import app
from tests.projections.evalstream import Goal, project

runner = CliRunner()


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("evals")
    goals = [Goal(i, "1.0", succeed=i < 36, team="payments") for i in range(40)]
    goals += [Goal(100 + i, "1.1", succeed=i < 24, cents=2, team="search") for i in range(40)]
    project(tmp, goals).close()
    return tmp / "projection.duckdb"


def _shoal(tmp: Path, *args: str) -> tuple[int, str, str]:
    env = {"SHOAL_DATA_DIR": str(tmp / "data"), "NATS_URL": "nats://127.0.0.1:1"}
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_evals_by_agent_version_as_json(db: Path, tmp_path: Path) -> None:
    code, out, err = _shoal(tmp_path, "evals", "--by", "agent_version", "--db", str(db), "--json")
    assert code == 0, err
    answer = json.loads(out)
    rows = {r["key"][0]: r for r in answer["rows"]}
    assert (rows["1.0"]["successes"], rows["1.0"]["decided"]) == (36, 40)
    assert rows["1.0"]["success_rate"] == "0.9000000000"
    assert rows["1.1"]["cost_per_success_usd"] == "0.0333333333"
    assert answer["total"]["sessions"] == 80


def test_evals_table_shows_rates_per_group(db: Path, tmp_path: Path) -> None:
    code, out, err = _shoal(tmp_path, "evals", "--by", "team", "--db", str(db))
    assert code == 0, err
    assert "evaluations by team" in out
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("│ ")}
    assert "90.0% of 40" in lines["payments"] and "60.0% of 40" in lines["search"]


def test_compare_flags_the_regression_and_check_exits_1(db: Path, tmp_path: Path) -> None:
    args = ["evals", "compare", "--agent", "worker", "--from", "1.0", "--to", "1.1"]
    code, out, err = _shoal(tmp_path, *args, "--db", str(db), "--json")
    assert code == 0, err
    answer = json.loads(out)
    assert (answer["success_rate"]["n_a"], answer["success_rate"]["n_b"]) == (40, 40)
    assert answer["regressed"] is True
    code, out, _ = _shoal(tmp_path, *args, "--db", str(db), "--check")
    assert code == 1
    assert "n=40 vs 40" in out and out.strip().splitlines()[-1].startswith("regressed:")


def test_compare_needs_a_baseline_and_a_candidate(tmp_path: Path) -> None:
    for args, message in (
        (["--agent", "w", "--from", "1.0"], "error: --to: give the candidate"),
        (["--agent", "w", "--to", "1.1"], "error: --from: give the baseline version"),
        (["--to", "1.1", "--from", "1.0"], "error: --agent: say whose versions to compare"),
        (["--model", "a", "--from", "b", "--to", "c"], "error: --from: with --model X --to Y"),
        (["--model", "a", "--to", "a"], "error: --to a: the same as the baseline"),
    ):
        code, out, err = _shoal(tmp_path, "evals", "compare", *args)
        assert (code, out) == (2, ""), err
        assert err.startswith(message) and err.count("\n") == 1, err


def test_evals_refuses_an_unknown_dimension(tmp_path: Path) -> None:
    code, _, err = _shoal(tmp_path, "evals", "--by", "colour")
    assert code == 2
    assert err.startswith("error: Invalid value for '--by': 'colour' is not one of task_class")


def test_report_writes_markdown_and_json(db: Path, tmp_path: Path) -> None:
    md = tmp_path / "report.md"
    code, out, err = _shoal(
        tmp_path, "report", "--since", "2026-11-01T00:00", "--db", str(db), "--markdown", str(md)
    )
    assert code == 0, err
    text = md.read_text()
    assert text.startswith("# Agent work report\n\nPeriod: 2026-11-01T00:00:00+00:00 to now.")
    assert "| rev | payments | 40 | 36 | 0.400000 | 0.011111 | 0 | 0/0 | 0 | 0 |" in text
    assert "| all |  | 80 | 60 | 1.200000 | 0.020000 | 0 | 0/0 | 0 | 0 |" in text
    since = ["--since", "2026-11-01T00:00"]
    code, out, err = _shoal(tmp_path, "report", *since, "--db", str(db), "--json")
    assert code == 0, err
    total = json.loads(out)["total"]
    assert (total["units"], total["successes"], total["spend_usd"]) == (80, 60, "1.2000000000")


def test_goal_submit_refuses_an_unknown_label_naming_it(tmp_path: Path) -> None:
    code, out, err = _shoal(tmp_path, "goal", "submit", "f", "t", "--label", "colour=red")
    assert (code, out) == (2, "")
    assert err.startswith(
        "error: Invalid value for '--label': 'colour=red': unknown label 'colour'; one of team"
    ), err
