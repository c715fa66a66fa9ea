"""Readable at 80 and 200 columns: key facts whole, long values shortened in the middle."""

from __future__ import annotations

import re
from collections.abc import Callable

from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

from shoal.bus import ShoalSettings
from shoal.ops.cli import app
from shoal.ops.cli.layout import fit, fit_facts, fit_record, middle
from tests.natsproc import NatsProcess

IID = "01M8SNSJEWGZ1CG999XM56PQ8W"


def test_middle_keeps_the_start_and_the_end() -> None:
    assert middle("task.failed attempt=1 final=False", 20) == "task.faile…nal=False"
    assert middle("short", 20) == "short"
    assert len(middle("x" * 100, 30)) == 30


def test_fit_facts_cuts_the_last_facts_first_and_keeps_the_decisive_ones_whole() -> None:
    decided = ["needs_approval", "send_email", "tool.call", "rule=manifest.approval"]
    assert fit_facts(decided, 200) == "needs_approval send_email tool.call rule=manifest.approval"
    assert fit_facts(decided, 48, whole=2) == "needs_approval send_email tool.call rule=man…val"
    assert fit_facts(decided, 38, whole=2) == "needs_approval send_email tool.call …"
    assert fit_facts(decided, 30, whole=2) == "needs_approval send_email …"
    error = "error=model endpoint overloaded: rate limit exceeded (simulated); retrying"
    failed = fit_facts(["final=False", "attempt=1", error], 50, whole=2)
    assert failed == "final=False attempt=1 error=model endpo…; retrying"
    called = ["tool=read_file", "result_class=ok", "arguments={'path': 'event-sourcing.md'}"]
    assert fit_facts(called, 50) == "tool=read_file result_class=ok arguments={'pa…md'}"
    assert fit_facts(called, 20) == "tool=read_file …"
    assert len(fit_facts(called, 10)) == 10  # never wider than asked, even when too narrow


def _sessions_table() -> Table:
    table = Table("IID", "fleet", "agent", "capability", "status", "cost $", "calls", "flags")
    table.add_row(IID, "onboarding", "summarizer", "summarize", "failed", "0.0123", "3m/2t", "")
    table.add_row(IID[::-1], "code-review", "reviewer", "review", "running", "1.5", "40m/1t", "")
    return table


def test_a_total_is_a_row_at_200_and_a_name_value_list_at_80_with_no_value_cut() -> None:
    fields = [(f"field_{n}", f"0.1666{n}7") for n in range(10)]
    captured = {}
    for width in (80, 200):
        out = Console(width=width, record=True)
        out.print(fit_record("total", fields, out))
        captured[width] = out.export_text()
    assert "…" not in captured[80] and "…" not in captured[200]
    lines = captured[80].splitlines()
    assert len(lines) == 1 + 2 + len(fields)  # the title, the borders, one line per field
    for name, value in fields:
        assert any(name in line and value in line for line in lines), name
    assert len(captured[200].splitlines()) == 1 + 5  # title; top, header, rule, row, bottom
    assert all(len(line) <= 80 for line in lines)


def test_a_wide_table_drops_columns_by_priority_at_80_and_keeps_all_at_200() -> None:
    out = {}
    for width in (80, 200):
        console = Console(width=width, record=True, color_system=None)
        drop = ("flags", "calls", "capability", "fleet")
        console.print(fit(_sessions_table(), console, drop=drop, keep=("IID", "status")))
        out[width] = console.export_text()
    narrow = out[80].splitlines()
    assert max(len(line) for line in narrow) <= 80
    assert "…" not in out[80] and "…" not in out[200]
    assert IID in out[80] and IID[::-1] in out[80]  # ids whole, on one line
    header = narrow[1]
    assert "IID" in header and "status" in header and "cost $" in header
    assert "flags" not in header and "calls" not in header
    assert all(name in out[200] for name in ("capability", "calls", "flags", "fleet"))


def test_the_demo_at_80_and_200_columns_keeps_every_key_fact(
    settings: ShoalSettings, nats_process: Callable[..., NatsProcess]
) -> None:
    # Its own server: two whole demos, not slowed by what earlier tests left on the shared one.
    server = nats_process(store="layout")
    env = {
        "NATS_URL": server.url,
        "SHOAL_PREFIX": settings.prefix,
        "SHOAL_DATA_DIR": str(settings.data_dir),
    }
    for width in (80, 200):
        result = CliRunner().invoke(app, ["demo"], env={**env, "COLUMNS": str(width)})
        assert result.exit_code == 0, result.stderr
        lines = result.stdout.splitlines()
        assert max(len(line) for line in lines) <= width, [x for x in lines if len(x) > width]
        gid = re.match(r"goal (\w{26}) goal.completed", lines[0])
        assert gid is not None
        summary = lines[lines.index("summary") :]
        assert summary[0] == "summary" and len(summary) == 12  # the last: the console
        assert summary[1].startswith("  result   completed in ")
        assert summary[1].endswith("summarised 5 documents (167 words)")
        assert summary[2] == f"  goal     {gid.group(1)}"
        assert re.fullmatch(r"  cost     \$0\.\d{6} for 6 model call\(s\), server-side", summary[3])
        assert re.fullmatch(
            r"  denied   fetch_url in \w{26}: deny, rule manifest\.tool", summary[4]
        )
        assert re.match(r"  retried  \w{26} attempt 1: model endpoint ", summary[5])
        assert re.fullmatch(r"  approval send_email in \w{26}: timed out after \d\.\ds", summary[6])
        assert summary[7] == f"  look     shoal goal show {gid.group(1)}"
        assert summary[10] == "           shoal demo --approve   (grants the approval)"
        # The timeline's decisive facts are never cut.
        assert any("policy.decided deny fetch_url tool.call rule=" in x for x in lines)
        assert any("policy.decided needs_approval send_email tool.call" in x for x in lines)
        assert any("task.failed final=False attempt=1 error=model endpo" in x for x in lines)
        assert any("approval.requested target=send_email tier=high" in x for x in lines)
        assert any(re.search(r"tool\.called tool=read_file result_class=ok arg", x) for x in lines)
