"""README truth: every ``uv run shoal …`` line of the README runs as written, in order, on a
fresh embedded server (a temporary working directory, so ``./.shoal`` is new)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOT_SHOAL = {"pip install uv", "uv run pytest"}
"""README lines that are not shoal commands (setup and the test suite itself)."""


def readme_commands() -> list[str]:
    """The lines of the README's ``sh`` code blocks, comments stripped."""
    text = (ROOT / "README.md").read_text()
    lines: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for raw in block.splitlines():
            line = re.sub(r"\s{2,}#.*$", "", raw).strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def _argv(command: str, env_vars: dict[str, str]) -> list[str]:
    for name, value in env_vars.items():
        command = command.replace(f"${name}", value)
    assert "$" not in command, f"unresolved variable in: {command}"
    words = shlex.split(command)
    assert words[:3] == ["uv", "run", "shoal"], f"not a shoal command: {command}"
    return [sys.executable, "-m", "shoal", *words[3:]]


@pytest.mark.timeout(1500)  # ~50 processes; under a loaded CI machine each takes seconds
def test_every_readme_command_runs_as_written(tmp_path: Path) -> None:
    commands = readme_commands()
    shoal_lines = [c for c in commands if c not in NOT_SHOAL]
    assert len(shoal_lines) >= 30
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOAL_", "NATS_", "OTEL_"))}
    env["PYTHONPATH"] = str(ROOT)
    # Free ports for the gateway 'shoal up' starts: tests run side by side on one machine, and
    # a gateway already on :4080 would leave this one down (and 'shoal status' exits 1).
    env.update(SHOAL_GATEWAY_PORT="0", SHOAL_GATEWAY_MCP_PORT="0")
    variables: dict[str, str] = {}

    def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )

    try:
        for line in shoal_lines:
            assigned = re.fullmatch(r"(\w+)=\$\((.*)\)", line)
            argv = _argv(assigned.group(2) if assigned else line, variables)
            done = run(argv)
            assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            assert "Traceback" not in done.stderr, line
            if assigned:
                value = done.stdout.strip()
                assert re.fullmatch(r"\w{26}", value), (line, value)
                variables[assigned.group(1)] = value
    finally:
        run([sys.executable, "-m", "shoal", "down"])
    assert (tmp_path / "out" / "model_calls.parquet").exists()
    assert any((tmp_path / "schemas").glob("shoal.*.json"))
