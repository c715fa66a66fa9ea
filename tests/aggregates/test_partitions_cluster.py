"""The partitioned core on the scale-out shape, auth on: a 3-node JetStream cluster, two
``shoal core --partitions 2`` processes, two supervisors running a demo fleet; the goals
complete and the partitions' session costs equal the price table's cost of the log's calls."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from shoal.agents.demo import DEMO_DOCUMENTS, DEMO_GOAL
from shoal.aggregates.partitioned import open_partitions
from shoal.aggregates.partitions import fnv1a32
from shoal.auth import KeyStore
from shoal.bus import Bus, ShoalSettings
from shoal.ops.fleets import apply_fleet, open_fleet_app
from shoal.ops.goals import build_goal, submit_goal
from shoal.schemas.events import ModelCalled
from shoal.schemas.fleet import parse_fleet_spec
from shoal.schemas.pricing import builtin_prices
from tests.aggregates.test_partitions import _positions, stop_cores
from tests.natscluster import NatsCluster
from tests.ops.fleetprocs import Supervisors, process_env, procs_now
from tests.ops.test_cluster import cluster, cluster_settings, provision  # noqa: F401

pytestmark = pytest.mark.timeout(120)

FLEET = "scale"
SPEC = f"""
fleet: {FLEET}
agents:
  - name: orchestrator
    target: shoal.agents.demo:orchestrator_agent
    version: "1"
    replicas: 1
    manifest:
      models: [offline-small]
      tools: {{list_files: {{sensitivity: public}}}}
      delegates: [summarize]
  - name: worker
    target: shoal.agents.demo:summarizer_agent
    version: "1"
    replicas: 2
"""
REPLICAS = {"SHOAL_STREAM_REPLICAS": "3"}
GOALS = 3
DOCUMENTS = ("nats.md", "event-sourcing.md", "kill-switches.md")
"""Documents of the workspace (none of the demo's simulated failures): tasks per goal."""


def _core(settings: ShoalSettings, url: str, creds: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "shoal", "core", "--partitions", "2"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**process_env(settings), **REPLICAS, "NATS_URL": url, "NATS_CREDS": str(creds)},
        )


async def test_two_core_partitions_and_two_supervisors_on_a_cluster_answer_to_the_cent(
    cluster: NatsCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    prefix = "t" + uuid.uuid4().hex[:10]
    settings = cluster_settings(cluster.urls[0], tmp_path, prefix).model_copy(
        update={"lease_ttl_s": 3.0, "presence_ttl_s": 3.0}
    )
    store = KeyStore.for_data_dir(settings.data_dir)
    workspace = settings.data_dir / "workspace"
    workspace.mkdir(parents=True)
    for name in DOCUMENTS:
        (workspace / name).write_text(DEMO_DOCUMENTS[name])
    logs = tmp_path / "logs"
    logs.mkdir()
    admin = store.creds_path("admin")
    cores = [
        _core(settings, url, admin, logs / f"core-{n}.log")
        for n, url in enumerate(cluster.urls[:2])
    ]
    sups = [
        Supervisors(
            settings,
            logs,
            env={**REPLICAS, "NATS_URL": url, "NATS_CREDS": str(store.creds_path("supervisor"))},
        )
        for url in cluster.urls[1:]
    ]

    def tails() -> str:
        return "\n".join(p.read_text(errors="replace")[-1500:] for p in sorted(logs.iterdir()))

    async def until(what: str, timeout: float, check: object) -> None:
        deadline = time.monotonic() + timeout
        while not await check():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"{what}\n{tails()}"
            assert all(p.poll() is None for p in cores), f"a core exited\n{tails()}"
            await asyncio.sleep(0.2)

    async with Bus.connect(cluster.urls[2], settings, name="test-scale") as bus:
        await provision(bus)
        stream = bus.topology.events.name
        fleets = open_fleet_app(settings)
        try:
            for n, sup in enumerate(sups):
                sup.start(f"sup-{n}")
            await apply_fleet(bus, fleets, parse_fleet_spec(SPEC), by="tester")

            async def three_instances() -> bool:
                return len(await procs_now(prefix)) == 3

            await until("3 instances", 60, three_instances)
            goals = [build_goal(FLEET, DEMO_GOAL, principal="tester") for _ in range(GOALS)]
            for goal in goals:
                await submit_goal(bus, goal)

            async def completed() -> bool:
                done = await bus.read(bus.subjects.events_filter(short_type="goal.completed"))
                return len(done) == GOALS

            await until("goals completed", 60, completed)

            async def folded() -> bool:
                last = (await bus.js.stream_info(stream)).state.last_seq
                positions = await asyncio.to_thread(_positions, settings, stream)
                return positions == [last] * 3

            await until("partitions caught up", 30, folded)
            calls = await bus.read(bus.subjects.events_filter(short_type="model.called"))
        finally:
            fleets.close()
            for sup in sups:
                sup.stop_all()
            stop_cores(cores)
    assert [core.returncode for core in cores] == [0, 0], tails()

    prices = builtin_prices()
    expected: dict[str, Decimal] = {}
    for stored in calls:
        assert stored.event is not None and isinstance(stored.event.data, ModelCalled)
        call = stored.event.data
        cost = prices.cost(call.model, call.input_tokens, call.output_tokens, call.cached_tokens)
        expected[stored.event.iid] = expected.get(stored.event.iid, Decimal(0)) + cost
    parts = open_partitions(settings, 2)
    costs = {s.iid: s.cost_usd for p in parts for s in p.sessions() if s.model_calls}
    assert costs == expected
    # Every goal: the orchestrator's plan call plus one summary per document, each in a
    # session of its own, all priced to the cent.
    assert len(calls) == len(costs) == GOALS * (len(DOCUMENTS) + 1)
    for goal in goals:
        assert goal.gid is not None
        home = parts[fnv1a32(goal.gid.encode()) % 2]
        assert home.goal(goal.gid).status == "completed"
        assert len(home.goal(goal.gid).plan) == len(DOCUMENTS)
    assert sum(costs.values()) == sum(expected.values()) > 0
