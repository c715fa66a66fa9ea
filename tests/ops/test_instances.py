"""How the supervisor starts an instance: its environment and the lean ``agent run`` entry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.bus import ShoalSettings
from shoal.ops.instances import instance_env


def test_instances_share_a_bytecode_cache_when_the_caller_forbids_writing_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("PYTHONPYCACHEPREFIX", raising=False)
    env = instance_env(ShoalSettings(prefix="t", data_dir=tmp_path), "nats://127.0.0.1:4222")
    assert "PYTHONDONTWRITEBYTECODE" not in env
    assert env["PYTHONPYCACHEPREFIX"] == str(tmp_path / "cache" / "shoal" / "pycache")
    assert env["NATS_URL"] == "nats://127.0.0.1:4222"


def test_instances_keep_the_usual_pycache_when_writing_is_allowed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    monkeypatch.delenv("PYTHONPYCACHEPREFIX", raising=False)
    env = instance_env(ShoalSettings(prefix="t", data_dir=tmp_path), "nats://127.0.0.1:4222")
    assert "PYTHONPYCACHEPREFIX" not in env
    assert "PYTHONDONTWRITEBYTECODE" not in env


@pytest.mark.parametrize(
    "argv",
    [
        ["-m", "shoal", "agent", "run"],  # the lean route supervisors take
        ["-m", "shoal.agents", "run"],
        ["-c", "from shoal.ops.cli import app; app()", "agent", "run"],  # the typer command
    ],
)
def test_agent_run_refuses_invalid_settings_with_one_line_and_exit_2(
    argv: list[str], tmp_path: Path
) -> None:
    env = dict(os.environ, SHOAL_PRESENCE_TTL_S="soon", SHOAL_DATA_DIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, *argv, "demo", "summarizer"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: invalid settings: ")
    assert "presence_ttl_s" in lines[0]
