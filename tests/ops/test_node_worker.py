"""A Node worker (NATS.js, examples/node-worker) as a supervised fleet member, auth on.

The fleet spec declares it as ``command: [node, worker.mjs]``: the supervisor starts it with
its identity in the environment and credentials minted for the instance. Its sessions are
counted by the core at the price table's cost; it is scaled 1 → 2, killed with a kill
switch on its instance, and replaced after a SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shoal.aggregates import open_core, run_core
from shoal.auth import KeyStore
from shoal.bus import Bus, Presence, ShoalSettings
from shoal.ops.cli import app as cli_app
from shoal.ops.connect import open_bus, resolve_url
from shoal.ops.fleets import apply_fleet, describe_fleet, fleet_command, kv_snapshot, open_fleet_app
from shoal.schemas import GoalCompleted, TaskAssigned
from shoal.schemas.fleet import parse_fleet_spec
from shoal.schemas.pricing import builtin_prices
from tests.agents.conftest import of_type, shout_goal
from tests.auth.conftest import local, secured, secured_dir  # noqa: F401
from tests.auth.test_supervised import start_supervisor
from tests.ops.fleetprocs import eventually, live_procs, process_env

pytestmark = pytest.mark.timeout(240)

WORKER_DIR = Path(__file__).parents[2] / "examples" / "node-worker"
NODE = shutil.which("node")
MODEL = "gpt-4o-mini"


def _node_ready() -> str | None:
    """Why the Node worker cannot run here, or None."""
    if NODE is None:
        return "node is not installed (apt-get install nodejs npm)"
    if not (WORKER_DIR / "node_modules" / "@nats-io" / "transport-node").is_dir():
        return f"run `npm ci` in {WORKER_DIR}"
    return None


@pytest.fixture(autouse=True)
def node_available() -> None:
    # CI installs node and the worker's packages (.ci/run): a missing one is a failure
    # there, never a silent skip. Locally, without node, the test says why it skipped.
    why = _node_ready()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


def spec(replicas: int) -> str:
    return f"""
fleet: wire
agents:
  - name: shouter
    command: ["{NODE}", "{WORKER_DIR / "worker.mjs"}"]
    capabilities: [shout]
    replicas: {replicas}
    manifest: {{models: [{MODEL}]}}
"""


@dataclass(frozen=True)
class NodeProc:
    pid: int
    instance: str


def node_procs(prefix: str) -> list[NodeProc]:
    """Live ``node worker.mjs`` processes of this test's prefix, from ``/proc``."""
    return sorted(
        (
            NodeProc(pid, env.get("SHOAL_INSTANCE", ""))
            for pid, argv, env in live_procs(prefix)
            if argv[0].endswith("node") and any(a.endswith("worker.mjs") for a in argv)
        ),
        key=lambda p: p.instance,
    )


async def present(bus: Bus) -> list[Presence]:
    kv = await bus.kv(bus.topology.presence.name)
    entries = (await kv_snapshot(kv, "wire.shouter.>")).values()
    return sorted(
        (Presence.model_validate_json(e.value or b"{}") for e in entries), key=lambda p: p.instance
    )


@pytest.fixture
async def admin(local: ShoalSettings) -> AsyncIterator[Bus]:  # noqa: F811
    async with open_bus(local) as bus:
        yield bus


def supervisor(local: ShoalSettings, log_path: Path) -> subprocess.Popen[bytes]:  # noqa: F811
    store = KeyStore.for_data_dir(local.data_dir)
    env = {
        **process_env(local),
        "NATS_URL": resolve_url(local, start=False),
        "NATS_CREDS": str(store.creds_path("supervisor")),  # as `shoal up` starts it
    }
    return start_supervisor(env, log_path)


async def shout(admin: Bus, words: list[str]) -> tuple[dict[str, str], list[str]]:
    """Submit a goal of ``words`` through the orchestrator; its outputs and child IIDs."""
    goal, events = await shout_goal(admin, words, fleet="wire")
    [done] = of_type(events, "goal.completed")
    assert isinstance(done.data, GoalCompleted)
    children = [e.iid for e in of_type(events, "task.assigned") if isinstance(e.data, TaskAssigned)]
    outputs = {iid: out["text"] for iid, out in done.data.result["outputs"].items()}
    assert goal.gid is not None
    return outputs, children


def expected_cost(word: str) -> Decimal:
    """The worker's reported tokens for one word (worker.mjs), at the price table's price."""
    tokens = -(-len(word) // 4) + 4  # ceil(len / 4) + 4
    return builtin_prices().cost(MODEL, tokens + 3, tokens)


async def test_a_node_worker_is_supervised_counted_scaled_killed_and_replaced(
    admin: Bus,
    local: ShoalSettings,  # noqa: F811
    tmp_path: Path,
) -> None:
    prefix = local.prefix
    sup = supervisor(local, tmp_path / "sup.log")
    app = open_fleet_app(local)

    def log_tail() -> str:
        logs = [tmp_path / "sup.log", *sorted((local.data_dir / "logs").glob("*.log"))]
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in logs)

    try:
        await apply_fleet(admin, app, parse_fleet_spec(spec(1)), by="tester")
        try:
            [first] = await eventually(
                lambda: asyncio.to_thread(node_procs, prefix), lambda ps: len(ps) == 1, 60, "1"
            )
            [p1] = await eventually(lambda: present(admin), lambda ps: len(ps) == 1, 30, "hb")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{log_tail()}") from e
        assert (p1.instance, p1.pid, p1.capabilities, p1.slot) == (
            first.instance,
            first.pid,
            ["shout"],
            0,
        )

        # Its sessions complete through the orchestrator, as the worker of a goal.
        words = ["alpha", "beta", "gamma"]
        outputs, children = await shout(admin, words)
        assert sorted(outputs.values()) == ["ALPHA", "BETA", "GAMMA"]

        # Scaled 1 -> 2: a second process with an instance id of its own.
        await fleet_command(admin, app, "wire", "scale", by="tester", replicas={"shouter": 2})
        two = await eventually(
            lambda: asyncio.to_thread(node_procs, prefix), lambda ps: len(ps) == 2, 60, "2"
        )
        assert first in two
        [second] = [p for p in two if p != first]
        await eventually(lambda: present(admin), lambda ps: len(ps) == 2, 30, "2 heartbeats")

        # Killed through its instance's kill switch: it exits; its slot stays empty while
        # the switch is set.
        argv = ["kill", "--instance", first.instance, "--reason", "test"]
        env = {**process_env(local), "NATS_URL": ""}  # the embedded server, as `shoal up` runs
        killed = await asyncio.to_thread(CliRunner().invoke, cli_app, argv, env=env)
        assert killed.exit_code == 0, killed.output
        await eventually(
            lambda: asyncio.to_thread(node_procs, prefix), lambda ps: ps == [second], 30, "kill"
        )
        acks = [
            s.event
            for s in await admin.read(admin.subjects.session_events(first.instance))
            if s.event is not None and s.event.short_type == "agent.killed"
        ]
        assert [e.source for e in acks] == ["shoal://cli/tester"]
        worker_log = (local.data_dir / "logs" / "wire.shouter.0.log").read_text()
        assert f"killed (instance.{first.instance}) by tester: test" in worker_log

        # Replaced after a crash: SIGKILL the other process, the supervisor starts a new one.
        os.kill(second.pid, signal.SIGKILL)
        [third] = await eventually(
            lambda: asyncio.to_thread(node_procs, prefix),
            lambda ps: len(ps) == 1 and ps[0].instance not in (first.instance, second.instance),
            60,
            "replacement",
        )
        await eventually(
            lambda: present(admin),
            lambda ps: [p.instance for p in ps] == [third.instance],
            30,
            "replacement's heartbeat",
        )

        async def slot_states() -> list[tuple[int, str]]:
            [agent] = (await describe_fleet(admin, "wire")).agents
            assert agent.target == f"{NODE} {WORKER_DIR / 'worker.mjs'}"
            return sorted((s.slot, s.state) for s in agent.slots)

        await eventually(
            slot_states,
            lambda s: s == [(0, "killed"), (1, "running")],
            30,
            "slot states",
        )
        more_outputs, more_children = await shout(admin, ["delta"])
        assert list(more_outputs.values()) == ["DELTA"]
        stored = await admin.read(admin.subjects.events_filter(short_type="task.completed"))
        by = [s.event.instance for s in stored if s.event and s.event.iid in more_children]
        assert by == [third.instance]
    finally:
        app.close()
        sup.terminate()
        try:
            sup.wait(30)
        except subprocess.TimeoutExpired:
            sup.kill()
        for p in node_procs(prefix):
            os.kill(p.pid, signal.SIGKILL)

    # The core counts every session of the Node worker, at the price table's cost.
    stats = await run_core(local, resolve_url(local, start=False), asyncio.Event(), until_idle=True)
    assert (stats.rejected, stats.dead_lettered) == (0, 0)
    core = open_core(local)
    try:
        by_word = {**outputs, **more_outputs}
        sessions = {iid: core.session(iid) for iid in [*children, *more_children]}
        assert {iid: s.status for iid, s in sessions.items()} == dict.fromkeys(
            sessions, "completed"
        )
        assert {iid: s.cost_usd for iid, s in sessions.items()} == {
            iid: expected_cost(by_word[iid].lower()) for iid in sessions
        }
        assert sum(s.cost_usd for s in sessions.values()) == sum(
            expected_cost(w) for w in ["alpha", "beta", "gamma", "delta"]
        )
    finally:
        core.close()
