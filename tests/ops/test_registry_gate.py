"""Production fleets run certified versions only: ``fleet apply`` and ``fleet upgrade`` refuse
any other, naming agent, version and state, against a real nats-server and SQLite stores."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest
from nats.errors import NoRespondersError
from nats.js.errors import KeyNotFoundError

from shoal.aggregates.definitions import RegistryApplication
from shoal.aggregates.fleet import FleetApplication
from shoal.bus import Bus, ShoalSettings
from shoal.errors import Refused
from shoal.ops.fleets import apply_fleet, fleet_command, open_fleet_app
from shoal.ops.registry import open_registry_app
from shoal.schemas.fleet import parse_fleet_spec
from shoal.schemas.registry import AgentRegistration, parse_registration

pytestmark = pytest.mark.timeout(120)

PROD = """
fleet: prod
production: true
agents:
  - name: worker
    target: shoal.agents.demo:summarizer_agent
    version: "1.0"
    replicas: 2
"""


@pytest.fixture
async def app(settings: ShoalSettings) -> AsyncIterator[FleetApplication]:
    application = open_fleet_app(settings)
    yield application
    application.close()


def registry(settings: ShoalSettings) -> RegistryApplication:
    return open_registry_app(settings)


def certify(settings: ShoalSettings, agent: str, version: str) -> None:
    reg = registry(settings)
    try:
        reg.transition(agent, version, "certify", "carol", "evals passed")
    finally:
        reg.close()


async def audit(bus: Bus) -> list[tuple[str, str, str]]:
    stored = await bus.read(bus.subjects.all_control, stream=bus.topology.control.name)
    return [
        (
            s.subject.removeprefix(bus.settings.prefix + "."),
            s.event.type,
            s.event.data.model_dump()["reason"],
        )
        for s in stored
        if s.event
    ]


async def test_a_production_fleet_refuses_a_draft_version_and_applies_a_certified_one(
    bus: Bus, app: FleetApplication, settings: ShoalSettings
) -> None:
    spec = parse_fleet_spec(PROD)
    with pytest.raises(Refused) as e:
        await apply_fleet(bus, app, spec, by="alice", reason="launch")
    line = (
        "fleet prod is production: agent worker version 1.0 is draft, not certified "
        "(shoal registry certify worker 1.0 --reason ...)"
    )
    assert str(e.value) == line
    assert not app.exists("prod")  # nothing applied
    with pytest.raises(KeyNotFoundError):
        await (await bus.kv(bus.topology.fleets.name)).get("prod")
    # The apply registered the version as a draft, with what the code declares.
    reg = registry(settings)
    entry = reg.get("agent", "worker").entry("1.0")
    assert (entry.state, entry.content["target"]) == ("draft", "shoal.agents.demo:summarizer_agent")
    assert [c["name"] for c in entry.content["capabilities"]] == ["summarize"]
    assert entry.content["capabilities"][0]["input_schema"]["required"] == ["path"]
    reg.close()

    certify(settings, "worker", "1.0")
    desired = await apply_fleet(bus, app, spec, by="alice", reason="launch")
    assert (desired.agents["worker"].version, desired.replicas("worker")) == ("1.0", 2)
    assert await audit(bus) == [
        ("control.fleet.apply", "shoal.control.refused", line),
        ("control.fleet.apply", "shoal.control.accepted", "launch"),
    ]


async def test_an_upgrade_of_a_production_fleet_to_an_uncertified_version_is_refused(
    bus: Bus, app: FleetApplication, settings: ShoalSettings
) -> None:
    spec = parse_fleet_spec(PROD)
    with pytest.raises(Refused):
        await apply_fleet(bus, app, spec, by="alice")  # registers 1.0 as a draft
    certify(settings, "worker", "1.0")
    await apply_fleet(bus, app, spec, by="alice")
    with pytest.raises(Refused) as e:
        await fleet_command(bus, app, "prod", "upgrade", by="bob", agent="worker", version="1.1")
    assert str(e.value) == (
        "fleet prod is production: agent worker version 1.1 is draft, not certified "
        "(shoal registry certify worker 1.1 --reason ...)"
    )
    assert app.get_fleet("prod").agents["worker"].version == "1.0"
    assert [h.command for h in app.history("prod")] == ["apply"]

    certify(settings, "worker", "1.1")
    with pytest.raises(Refused) as e:  # certified for the code's target, not another one
        await fleet_command(
            bus,
            app,
            "prod",
            "upgrade",
            by="bob",
            agent="worker",
            version="1.1",
            target="shoal.agents.demo:orchestrator_agent",
        )
    assert str(e.value) == (
        "fleet prod is production: agent worker version 1.1 was certified for target "
        "shoal.agents.demo:summarizer_agent, not shoal.agents.demo:orchestrator_agent"
    )
    desired = await fleet_command(
        bus, app, "prod", "upgrade", by="bob", agent="worker", version="1.1"
    )
    assert desired.agents["worker"].version == "1.1"

    reg = registry(settings)
    reg.transition("worker", "1.0", "deprecate", "dave", "1.1 replaces it")
    reg.close()
    with pytest.raises(Refused) as e:  # a deprecated version is not certified either
        await apply_fleet(bus, app, spec, by="alice")
    assert str(e.value) == (
        "fleet prod is production: agent worker version 1.0 is deprecated, not certified "
        "(shoal registry certify worker 1.0 --reason ...)"
    )


async def test_a_fleet_that_is_not_production_runs_a_draft_and_records_it(
    bus: Bus, app: FleetApplication, settings: ShoalSettings
) -> None:
    spec = parse_fleet_spec(PROD.replace("production: true", "production: false"))
    desired = await apply_fleet(bus, app, spec, by="alice")
    assert desired.agents["worker"].version == "1.0"
    await fleet_command(bus, app, "prod", "upgrade", by="bob", agent="worker", version="1.1")
    reg = registry(settings)
    worker = reg.get("agent", "worker")
    assert [(v.version, v.state) for v in worker.versions.values()] == [
        ("1.0", "draft"),
        ("1.1", "draft"),
    ]
    reg.close()
    # Turning production on takes effect on the next apply: 1.0 is still a draft.
    with pytest.raises(Refused) as e:
        await apply_fleet(bus, app, parse_fleet_spec(PROD), by="alice")
    assert "agent worker version 1.0 is draft, not certified" in str(e.value)


async def test_shoal_core_serves_the_registry_over_nats_and_stops_cleanly(
    bus: Bus, settings: ShoalSettings
) -> None:
    reg = registry(settings)
    reg.register(AgentRegistration(name="reviewer", version="7", purpose="Review."), "alice")
    reg.close()
    assert settings.nats_url
    args = ["--nats-url", settings.nats_url, "--prefix", settings.prefix]
    core = subprocess.Popen(  # noqa: ASYNC220 - started once; the test then only polls it
        [sys.executable, "-m", "shoal", *args, "--data-dir", str(settings.data_dir), "core"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        subject = bus.subjects.api("registry", "ls")
        deadline = time.monotonic() + 60
        while True:
            assert core.poll() is None, "the core exited early"
            try:
                msg = await bus.nc.request(subject, b"{}", timeout=2)
                break
            except NoRespondersError:
                assert time.monotonic() < deadline, "no registry service came up"
                await asyncio.sleep(0.1)
        rows = json.loads(msg.data)["rows"]
        assert [(r["name"], r["version"], r["state"], r["purpose"]) for r in rows] == [
            ("reviewer", "7", "draft", "Review.")
        ]
        core.send_signal(signal.SIGTERM)
        out, _ = await asyncio.to_thread(core.communicate, timeout=30)
    finally:
        if core.poll() is None:
            core.kill()
            core.wait()
    assert core.returncode == 0, out
    with pytest.raises(NoRespondersError):
        await bus.nc.request(subject, b"{}", timeout=2)


COLLABORATION = """
agents:
  - name: planner
    version: "1"
    target: shoal.agents.demo:orchestrator_agent
    capabilities: [{name: goals}]
    manifest: {delegates: [summarize]}
  - name: worker
    version: "1"
    target: shoal.agents.demo:summarizer_agent
    capabilities: [{name: summarize}]
    collaborators: {called_by: [reviewer]}
"""

TEAM = """
fleet: team
production: true
agents:
  - {name: planner, target: "shoal.agents.demo:orchestrator_agent", version: "1"}
  - {name: worker, target: "shoal.agents.demo:summarizer_agent", version: "1"}
"""


async def test_a_production_fleet_refuses_a_delegation_the_callee_does_not_accept(
    bus: Bus, app: FleetApplication, settings: ShoalSettings
) -> None:
    reg = registry(settings)
    doc = parse_registration(COLLABORATION)
    for agent in doc.agents:
        reg.register(agent, "alice")
        reg.transition(agent.name, "1", "certify", "carol", "reviewed")
    reg.close()
    with pytest.raises(Refused) as e:
        await apply_fleet(bus, app, parse_fleet_spec(TEAM), by="alice")
    assert str(e.value) == (
        "fleet team is production: agent planner may not delegate summarize to worker 1, "
        "which may be called by reviewer only"
    )
    assert not app.exists("team")
    allowed = COLLABORATION.replace("called_by: [reviewer]", "called_by: [reviewer, planner]")
    reg = registry(settings)
    worker = parse_registration(allowed).agents[1].model_copy(update={"version": "2"})
    reg.register(worker, "alice")
    reg.transition("worker", "2", "certify", "carol", "planner may call it")
    reg.close()
    desired = await apply_fleet(
        bus,
        app,
        parse_fleet_spec(
            TEAM.replace('summarizer_agent", version: "1"', 'summarizer_agent", version: "2"')
        ),
        by="alice",
    )
    assert desired.agents["worker"].version == "2"
    with pytest.raises(Refused) as e:  # and an upgrade back to the narrower version is refused
        await fleet_command(bus, app, "team", "upgrade", by="bob", agent="worker", version="1")
    assert "agent planner may not delegate summarize to worker 1" in str(e.value)
