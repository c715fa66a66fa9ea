"""The CLI as an operator meets it in an incident: a paused server, typos, odd input."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shoal.bus import Bus, ShoalSettings
from shoal.ops.cli import app
from shoal.ops.cli._group import normalize_args
from shoal.schemas import CloudEvent, TaskStarted
from tests.natsproc import NatsProcess

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def shoal_process(env: dict[str, str], *args: str, timeout: float = 60) -> tuple[int, str, str]:
    """The CLI as a real process (a hung server must not hang the test's own loop)."""
    done = subprocess.run(
        [sys.executable, "-m", "shoal", *args],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stdout, done.stderr


@pytest.fixture
def own_server(
    nats_process: Callable[..., NatsProcess], tmp_path: Path
) -> Iterator[tuple[NatsProcess, dict[str, str]]]:
    server = nats_process()
    env = {
        "NATS_URL": server.url,
        "SHOAL_PREFIX": "op",
        "SHOAL_DATA_DIR": str(tmp_path / "data"),
        "SHOAL_PRINCIPAL": "tester",
    }
    code, _, err = shoal_process(env, "up", "--no-services")
    assert code == 0, err
    yield server, env
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGCONT)


def test_kill_under_a_paused_server_says_not_written_then_written_once_it_resumes(
    own_server: tuple[NatsProcess, dict[str, str]],
) -> None:
    server, env = own_server
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    code, out, err = shoal_process(env, "--timeout", "2", "kill", "--all", "-r", "incident")
    [line] = err.splitlines()
    assert (code, out) == (1, "")
    match = re.fullmatch(
        r"error: kill switch all NOT confirmed written after (\d+) attempt\(s\) in 2s "
        r"\(the server did not answer in time\); assume it is not set: retry, or check "
        r"'shoal kill --list'",
        line,
    )
    assert match is not None, line
    assert int(match.group(1)) >= 2  # retried within the timeout
    code, out, err = shoal_process(env, "--timeout", "2", "--json", "kill", "--all")
    assert code == 1 and json.loads(err)["code"] == "kill_unconfirmed"

    os.kill(server.proc.pid, signal.SIGCONT)
    code, out, err = shoal_process(env, "--json", "kill", "--all", "-r", "incident")
    assert code == 0, err
    answer = json.loads(out)
    assert (answer["key"], answer["written"], answer["switch"]["reason"]) == (
        "all",
        True,
        "incident",
    )
    code, out, _ = shoal_process(env, "--json", "kill", "--list")
    assert [k["key"] for k in json.loads(out)] == ["all"]


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["fleet", "scale", "demo", "worker=2"],
        ["goal", "submit", "demo", "text", "--wait-for-fleet"],
        ["fleet", "ls"],
        ["events", "tail", "--from-start"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_a_command_under_a_paused_server_ends_in_its_timeout_with_one_line(
    own_server: tuple[NatsProcess, dict[str, str]], args: list[str]
) -> None:
    server, env = own_server
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    code, out, err = shoal_process(env, "--timeout", "1.5", *args)
    assert (code, out) == (1, "")
    [line] = err.splitlines()
    assert line == (
        f"error: NATS at {server.url} did not answer in time (request timeout 1.5s, "
        "command timeout 1.5s); the server may be paused or overloaded"
    )


def test_kill_names_an_unknown_target_and_sets_it_only_with_force(
    settings: ShoalSettings, bus: Bus
) -> None:
    env = _env(settings)
    cases = [
        (["--tool", "read_flie"], "unknown tool 'read_flie' (did you mean 'read_file'?)"),
        (["--fleet", "nosuch"], "no fleet 'nosuch': none declared, none running"),
        (["--session", "not-an-iid"], "no session 'not-an-iid' on the event log"),
        (["--goal", "G0"], "no goal 'G0' on the event log"),
        (["--instance", "i-0"], "no instance 'i-0' is running or on the event log"),
        (["--model", "gpt-9"], "unknown model 'gpt-9'"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["kill", *args], env=env)
        assert (result.exit_code, result.stdout) == (1, ""), result.stderr
        assert result.stderr.startswith(f"error: {message}")
        assert result.stderr.rstrip().endswith("pass --force to set the switch anyway")
    listed = runner.invoke(app, ["--json", "kill", "--list"], env=env)
    assert json.loads(listed.stdout) == []
    forced = runner.invoke(app, ["kill", "--tool", "read_flie", "--force"], env=env)
    assert forced.exit_code == 0, forced.stderr
    assert forced.stdout.startswith("kill switch tool.read_flie set: written")


async def test_kill_of_a_session_on_the_log_is_set_without_force(
    settings: ShoalSettings, bus: Bus
) -> None:
    import asyncio

    await bus.publish(CloudEvent.new(TaskStarted(capability="c"), iid="S1", source="s"))
    result = await asyncio.to_thread(
        runner.invoke, app, ["--json", "kill", "--session", "S1"], env=_env(settings)
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["key"] == "session.S1"


def test_a_goal_for_an_undeclared_fleet_is_refused_unless_it_may_wait(
    settings: ShoalSettings, bus: Bus
) -> None:
    env = _env(settings)
    refused = runner.invoke(app, ["goal", "submit", "nosuchfleet", "do it"], env=env)
    assert (refused.exit_code, refused.stdout) == (1, "")
    assert refused.stderr.strip() == (
        "error: no fleet 'nosuchfleet' is declared or running, so nothing would take the "
        "goal: apply a fleet spec first, or pass --wait-for-fleet to queue it"
    )
    queued = runner.invoke(
        app, ["--json", "goal", "submit", "nosuchfleet", "do it", "--wait-for-fleet"], env=env
    )
    assert queued.exit_code == 0, queued.stderr
    assert json.loads(queued.stdout)["fleet"] == "nosuchfleet"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["goal", "submit", "f", "t", "--budget", "-1"],
            "error: --budget -1: a budget is zero or more dollars",
        ),
        (
            ["projections", "rebuild", "--as-of", "-1"],
            "error: Invalid value for '--as-of': -1 is not >= 1 "
            "(see 'shoal projections rebuild --help')",
        ),
    ],
)
def test_values_that_cannot_be_meant_are_refused(
    settings: ShoalSettings, args: list[str], message: str
) -> None:
    result = runner.invoke(app, args, env=_env(settings))
    assert (result.exit_code, result.stdout, result.stderr.strip()) == (2, "", message)


def test_a_fleet_spec_that_is_not_utf8_is_one_line_exit_2(
    settings: ShoalSettings, tmp_path: Path
) -> None:
    spec = tmp_path / "fleet.yaml"
    spec.write_bytes(b"fleet: demo\ndescription: caf\xe9\n")
    result = runner.invoke(app, ["fleet", "apply", str(spec)], env=_env(settings))
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr.strip() == (
        f"error: fleet spec {spec} is not UTF-8 text (invalid continuation byte at byte 28)"
    )


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (user namespaces)")
@pytest.mark.parametrize("args", [["session", "ls"], ["projections", "rebuild"]])
def test_a_read_only_data_dir_is_one_line(
    settings: ShoalSettings, tmp_path: Path, args: list[str]
) -> None:
    from shoal.aggregates import open_core

    data = settings.data_dir
    open_core(settings).close()
    # A read-only bind mount in a user namespace: read-only even for root.
    script = (
        f'mount --bind "{data}" "{data}" && mount -o remount,bind,ro "{data}" && '
        f'exec "{sys.executable}" -m shoal {" ".join(args)}'
    )
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
        env={**os.environ, **_env(settings)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "Operation not permitted" in done.stderr and "mount" in done.stderr:
        pytest.skip("user namespaces cannot mount here")
    [line] = done.stderr.splitlines()
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert line.startswith("error: ") and "read-only" in line, line


def test_global_flags_work_in_any_position() -> None:
    assert normalize_args(["fleet", "ls", "--json"]) == (["--json", "fleet", "ls"], True, False)
    assert normalize_args(["-o", "json", "status", "--debug"]) == (
        ["--json", "--debug", "status"],
        True,
        True,
    )
    assert normalize_args(["sql", "--", "--json"]) == (["sql", "--", "--json"], False, False)


def test_version_and_usage_errors_exit_differently_from_runtime_failures(
    tmp_path: Path,
) -> None:
    env = {"SHOAL_DATA_DIR": str(tmp_path / "d"), "NATS_URL": "nats://127.0.0.1:1"}
    version = runner.invoke(app, ["--version"])
    assert (version.exit_code, version.stdout) == (0, "shoal 0.1.0\n")
    usage = runner.invoke(app, ["kill", "--bogus"], env=env)
    assert (usage.exit_code, usage.stderr) == (
        2,
        "error: No such option: --bogus (see 'shoal kill --help')\n",
    )
    runtime = runner.invoke(app, ["fleet", "ls", "--json"], env=env)
    assert runtime.exit_code == 1
    error = json.loads(runtime.stderr)
    assert (error["code"], error["exit"]) == ("nats_unreachable", 1)
    assert error["error"].startswith("no NATS server reachable at nats://127.0.0.1:1")
    assert not (tmp_path / "d").exists()


def test_read_only_commands_never_create_the_data_dir(tmp_path: Path) -> None:
    env = {"SHOAL_DATA_DIR": str(tmp_path / "d"), "NATS_URL": ""}
    for args in (["status"], ["session", "ls"], ["goal", "ls"], ["cost"], ["fleet", "ls"]):
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 1, (args, result.stderr)
        assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "d").exists()


def test_help_has_panels_and_no_type_placeholders() -> None:
    top = runner.invoke(app, ["--help"], env={"COLUMNS": "100"})
    panels = re.findall(r"╭─ (\w+) ─", top.stdout)
    assert panels == ["Options", "run", "observe", "govern", "fleet", "data"]
    lines = top.stdout.splitlines()
    assert {len(line) for line in lines if line.startswith(("╭", "│", "╰"))} == {100}
    assert "│ deadletters  Messages no consumer could process: list, inspect, replay." in top.stdout
    assert "│ -o json, --json " in top.stdout and "<bool>" not in top.stdout
    bare = runner.invoke(app, [], env={"COLUMNS": "80"})
    assert bare.exit_code == 2 and "╭─ govern ─" in bare.stderr  # a usage error: on stderr
    from tests.ops.test_cli_options import _commands

    paths = [path.split() for path, _ in _commands()]
    assert len(paths) >= 40
    for args in paths:
        text = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "100"}).stdout
        assert "Usage: shoal " in text, args
        assert not re.search(r"<(bool|str|int|float|list\[str\]|path)>|``", text), args


def _env(settings: ShoalSettings) -> dict[str, str]:
    return {
        "NATS_URL": settings.nats_url or "",
        "SHOAL_PREFIX": settings.prefix,
        "SHOAL_DATA_DIR": str(settings.data_dir),
        "SHOAL_PRINCIPAL": "tester",
    }


async def test_a_queued_goal_shows_waiting_for_a_fleet(settings: ShoalSettings, bus: Bus) -> None:
    import asyncio

    from tests.ops.test_core_cli import ingest

    env = _env(settings)
    queued = await asyncio.to_thread(
        runner.invoke,
        app,
        ["goal", "submit", "later", "do it", "--wait-for-fleet"],
        env=env,
    )
    assert queued.exit_code == 0, queued.stderr
    gid = queued.stdout.strip()
    await ingest(settings)
    shown = await asyncio.to_thread(runner.invoke, app, ["--json", "goal", "show", gid], env=env)
    assert shown.exit_code == 0, shown.stderr
    goal = json.loads(shown.stdout)
    assert (goal["fleet"], goal["status"]) == ("later", "waiting for a fleet")
    listed = await asyncio.to_thread(runner.invoke, app, ["goal", "ls", "-q"], env=env)
    assert listed.stdout.split() == [gid]


def test_shell_completion_completes_commands_and_subcommands() -> None:
    env = {"_SHOAL_COMPLETE": "complete_bash", "COMP_CWORD": "2"}
    result = runner.invoke(app, [], env={**env, "COMP_WORDS": "shoal fleet sc"}, prog_name="shoal")
    assert result.stdout.split() == ["scale"]
    # '--show-completion' detects the shell from the parent processes (shellingham), which
    # fails under a detached test run ("Shell  not supported"); typer's own switch makes it
    # take the shell as its value instead, so the script is checked whatever runs the test.
    no_detection = {"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    code, out, err = shoal_process(no_detection, "--show-completion", "bash")
    assert (code, err) == (0, "") and "_SHOAL_COMPLETE=complete_bash" in out


async def test_a_query_that_times_out_under_load_is_one_line_exit_1(
    settings: ShoalSettings, bus: Bus
) -> None:
    import asyncio

    async def never_answer(_: object) -> None:
        return None

    # A query service that takes requests and never answers: an overloaded one.
    await bus.nc.subscribe(f"{settings.prefix}.api.query.cost", cb=never_answer)
    env = {**_env(settings), "SHOAL_REQUEST_TIMEOUT": "0.5"}
    result = await asyncio.to_thread(runner.invoke, app, ["--timeout", "5", "cost"], env=env)
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [
        "error: the query service did not answer within 0.5s (it may still be catching up "
        "with the core: see 'shoal projections status')"
    ]


def test_the_revocation_warden_outlives_the_command_timeout(tmp_path: Path) -> None:
    """A service is not bounded by ``--timeout``: the warden once died 10 s after 'shoal up'."""
    import time

    from shoal.ops.server import EmbeddedServer

    env = {**os.environ, "SHOAL_DATA_DIR": str(tmp_path / "data"), "NATS_URL": ""}
    code, _, err = shoal_process(env, "up", "--no-services")
    assert code == 0, err
    warden = subprocess.Popen(
        [sys.executable, "-m", "shoal", "--timeout", "1", "auth", "warden"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert warden.stderr is not None
        line = warden.stderr.readline()
        assert line == "warden following the kill switches; SIGTERM stops it\n"
        time.sleep(3)  # three times its --timeout
        assert warden.poll() is None, warden.communicate()
        warden.send_signal(signal.SIGTERM)
        _, stderr = warden.communicate(timeout=30)
        assert (warden.returncode, stderr) == (0, "warden stopped: 0 credential(s) revoked\n")
    finally:
        if warden.poll() is None:
            warden.kill()
            warden.wait()
        EmbeddedServer(ShoalSettings(data_dir=tmp_path / "data")).stop()


def test_a_runtime_failure_reported_by_a_command_keeps_its_code_in_json(tmp_path: Path) -> None:
    env = {"SHOAL_DATA_DIR": str(tmp_path / "data"), "NATS_URL": ""}
    result = runner.invoke(app, ["--json", "trace", "01M8TAAXKRNF2ZYQTWFZRPHE58"], env=env)
    assert (result.exit_code, result.stdout) == (1, "")
    path = tmp_path / "data" / "traces" / "spans.jsonl"
    assert json.loads(result.stderr) == {
        "error": f"no span file at {path}: tracing was off or spans went to an OTLP endpoint",
        "code": "not_found",
        "exit": 1,
    }
