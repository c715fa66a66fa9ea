"""``shoal --help`` imports no command module (lazy loading), and its listing is true."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer.main

from shoal.ops.cli import app
from shoal.ops.cli._group import COMMANDS, ShoalGroup

ROOT = Path(__file__).resolve().parents[2]
HEAVY = (
    "nats",
    "pydantic_settings",
    "eventsourcing",
    "duckdb",
    "pyarrow",
    "opentelemetry",
    "rich",  # the root help draws its own boxes (shoal/ops/cli/_help.py)
    "markdown_it",
)


def test_help_imports_none_of_the_heavy_dependencies() -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "shoal", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert sorted(m for m in imported if m.split(".")[0] in HEAVY) == []
    assert sorted(m for m in imported if m.startswith("shoal.ops.cli.")) == [
        "shoal.ops.cli._common",
        "shoal.ops.cli._group",
        "shoal.ops.cli._help",
    ]
    assert "╭─ govern ─" in done.stdout


def test_the_help_listing_matches_every_commands_own_help() -> None:
    root = typer.main.get_command(app)
    assert isinstance(root, ShoalGroup)
    root.load_all()
    assert sorted(root.commands) == sorted(COMMANDS)
    for name, (_, panel, short) in COMMANDS.items():
        command = root.commands[name]
        panel_of = getattr(command, "rich_help_panel", None)
        assert (command.get_short_help_str(200), panel_of) == (short, panel), name
