"""``shoal registry ls`` and ``show`` fit 80 columns and keep every key fact; at 200 they
show the purpose too (the registry store read directly: no server needed)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from shoal.bus import ShoalSettings
from shoal.ops.cli import app
from shoal.ops.registry import open_registry_app
from shoal.schemas.registry import AgentRegistration

PURPOSE = "Summarise every document of a workspace into one paragraph for the docs team."


def test_registry_ls_and_show_fit_80_columns_and_show_the_purpose_at_200(
    tmp_path: Path,
) -> None:
    settings = ShoalSettings(data_dir=tmp_path / "data", prefix="lay")
    reg = open_registry_app(settings)
    agent = AgentRegistration(
        name="summarizer",
        version="1.0",
        purpose=PURPOSE,
        owner="docs-team",
        capabilities=[{"name": "summarize"}, {"name": "lookup"}],
    )
    reg.register(agent, "alice")
    reg.transition("summarizer", "1.0", "certify", "carol", "evals passed: 97/100 " * 4)
    reg.close()
    env = {"SHOAL_DATA_DIR": str(settings.data_dir), "SHOAL_PREFIX": "lay", "NATS_URL": ""}
    for width in (80, 200):
        for command in (["registry", "ls"], ["registry", "show", "summarizer"]):
            result = CliRunner().invoke(app, command, env={**env, "COLUMNS": str(width)})
            assert result.exit_code == 0, result.stderr
            lines = result.stdout.splitlines()
            assert max(len(line) for line in lines) <= width, [x for x in lines if len(x) > width]
    narrow = CliRunner().invoke(app, ["registry", "ls"], env={**env, "COLUMNS": "80"}).stdout
    [row] = [x for x in narrow.splitlines() if "summarizer" in x]
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    assert cells == ["summarizer", "1.0", "certified", "agent", "docs-team", "summarize, lookup"]
    assert PURPOSE not in narrow  # the purpose column is the first to go
    wide = CliRunner().invoke(app, ["registry", "ls"], env={**env, "COLUMNS": "200"}).stdout
    assert PURPOSE in wide
