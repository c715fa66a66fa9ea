"""Every command refuses a bad value of each of its options in one line, exit 2, no traceback.

The command tree is walked, so a new option must be listed here: with the bad values it
must refuse, or as free text (any value is a valid answer, e.g. a filter that matches
nothing).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from shoal.ops.cli import app

runner = CliRunner()

BAD_TIME = ["garbage", "-5h", "99999999h", "P", "25:99"]
BAD_COUNT = ["x", "-1", "0"]
BAD_SECONDS = ["x", "-1"]
BAD_NAME = ["a.b", "a b", "*"]

BAD: dict[str, list[str]] = {
    "--since": BAD_TIME,
    "--until": BAD_TIME,
    "--limit": BAD_COUNT,
    "--batch": BAD_COUNT,
    "--partitions": [*BAD_COUNT, "65"],
    "--max-lag": ["x", "-1"],
    "--concurrency": BAD_COUNT,
    "--crashloop-after": BAD_COUNT,
    "--slot": ["x", "-1"],
    "--as-of": BAD_COUNT,
    "--budget": ["lots", "-1", "NaN", "Infinity"],
    "--inputs": ["{oops", "[1]"],
    "--timeout": BAD_SECONDS,
    "--drain-grace": BAD_SECONDS,
    "--wait-timeout": BAD_SECONDS,
    "--tick": ["x", "-1", "0"],
    "--backoff": BAD_SECONDS,
    "--resync": ["x", "-1", "0"],
    "--at": ["garbage", "-3"],
    "--db": ["/nonexistent/x.duckdb"],
    "--state": ["bogus"],
    "--order": ["bogus"],
    "--status": ["bogus"],
    "--decision": ["bogus"],
    "--sensitivity": ["bogus"],
    "--outcome": ["bogus"],
    "--by": ["bogus"],
    "--type": ["bogus..type"],
    "--capacity": ["x", "-1"],
    "--rpm": BAD_COUNT,
    "--port": ["x"],
    "--mcp-port": ["x"],
    "--config": ["/nonexistent/gateway.yaml"],
    "--manifest": ["/nonexistent/manifest.yaml"],
    "--tier": ["bogus"],
    "--kind": ["bogus"],
    "--gateway-config": ["/nonexistent/gateway.yaml"],
    "--event": ["{oops", "[1]", '{"action": "tool.call"}'],
    "--format": ["bogus"],
    "--canary": ["x", "0", "-1", "0%", "100%"],
    "--min-samples": BAD_COUNT,
    "--label": ["bogus=1", "team", "team=", "team=a,team=b"],
}
"""Bad values by option name (the same name means the same thing in every command)."""

NAMES = {"--instance", "--session", "--goal", "--fleet", "--tool", "--model", "--principal"}
NAMES |= {"--origin", "--mcp"}
"""Name options: a value that is not one subject token is refused (kill, unkill, filters)."""

FREE = {"--reason", "--detail", "--signal", "--target", "--id", "--supervisor", "--version"}
FREE |= {"--consumer", "--agent", "--iid", "--gid", "--note", "--host"}
# shoal auth: paths, a role, sizes and capabilities, each checked by the command itself.
FREE |= {"--creds", "--role", "--out", "--capability", "--delegate", "--disk", "--memory"}
FREE |= {"--streams"}
# shoal evals compare: cohorts (an unknown version is an empty cohort); report --markdown.
FREE |= {"--from", "--to", "--prompt-template", "--task-class", "--markdown"}
"""Free text, or names whose unknown value is a valid (empty) answer."""

ARGS: dict[str, list[str]] = {
    "kill": ["--all"],
    "unkill": ["--all"],
    "trace": ["X"],
    "query": ["sessions"],
    "sql": ["SELECT 1"],
    "goal submit": ["demo", "text"],
    "goal show": ["G"],
    "schemas export": ["out"],
    "fleet apply": ["spec.yaml"],
    "fleet start": ["f"],
    "fleet stop": ["f"],
    "fleet scale": ["f", "a=1"],
    "fleet upgrade": ["f", "a", "2"],
    "fleet rollback": ["f", "a"],
    "fleet describe": ["f"],
    "fleet history": ["f"],
    "fleet delete": ["f"],
    "agent run": ["f", "a"],
    "export parquet": ["out"],
    "session show": ["I"],
    "session replay": ["I"],
    "outcome report": ["I", "--outcome", "success"],
    "deadletters show": ["1"],
    "deadletters replay": ["1"],
    "policy test": ["examples/guard.cedar"],
    "keys create": ["--fleet", "f", "--agent", "a"],
    "registry search": ["text"],
    "registry show": ["a"],
    "registry card": ["a"],
    "registry certify": ["a", "1"],
    "registry deprecate": ["a", "1"],
    "registry retire": ["a", "1"],
}
"""Positional arguments (and required options) each command needs to reach its options."""


def _commands() -> Iterator[tuple[str, Any]]:
    def walk(cmd: Any, path: list[str]) -> Iterator[tuple[str, Any]]:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                yield from walk(sub, [*path, name])
        else:
            yield " ".join(path), cmd

    root = typer.main.get_command(app)
    root.load_all()  # type: ignore[attr-defined]
    yield from walk(root, [])


def _cases() -> Iterator[Any]:
    for path, cmd in _commands():
        for param in cmd.params:
            if param.param_type_name != "option" or param.is_flag:
                continue
            option = param.opts[0]
            values = BAD.get(option) or (BAD_NAME if option in NAMES else [])
            if path in ("kill", "unkill") and option in NAMES:
                args = [a for a in ARGS.get(path, []) if a != "--all"]
            else:
                args = ARGS.get(path, [])
            for value in values:
                yield pytest.param(path, args, option, value, id=f"{path} {option} {value}")


def test_every_option_of_every_command_is_classified() -> None:
    unclassified = sorted(
        f"{path} {p.opts[0]}"
        for path, cmd in _commands()
        for p in cmd.params
        if p.param_type_name == "option"
        and not p.is_flag
        and p.opts[0] not in BAD
        and p.opts[0] not in NAMES
        and p.opts[0] not in FREE
    )
    assert unclassified == []


@pytest.mark.parametrize(("path", "args", "option", "value"), list(_cases()))
def test_a_bad_option_value_is_one_line_and_exit_2(
    path: str, args: list[str], option: str, value: str, tmp_path: Path
) -> None:
    env = {"SHOAL_DATA_DIR": str(tmp_path / "data"), "NATS_URL": "nats://127.0.0.1:1"}
    result = runner.invoke(app, [*path.split(), *args, option, value], env=env)
    assert (result.exit_code, result.stdout) == (2, ""), result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and "Traceback" not in result.stderr
    assert option in line or repr(value) in line or value in line, line
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("value", ["garbage", "-5h", "99999999h"])
def test_a_bad_since_is_a_json_error_on_stderr_with_json(value: str, tmp_path: Path) -> None:
    env = {"SHOAL_DATA_DIR": str(tmp_path / "data"), "NATS_URL": "nats://127.0.0.1:1"}
    result = runner.invoke(app, ["cost", "--since", value, "-o", "json"], env=env)
    assert (result.exit_code, result.stdout) == (2, "")
    error = json.loads(result.stderr)
    assert (error["code"], error["exit"]) == ("usage", 2)
    assert error["error"].startswith(f"Invalid value for '--since': {value!r}")
    assert error["error"].endswith("(see 'shoal cost --help')")
