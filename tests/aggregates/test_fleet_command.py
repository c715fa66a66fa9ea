"""Command agents in fleet specs: exactly one of target and command, refused naming the field;
the command reaches desired state, the run fingerprint, rollbacks and the instance's argv and
environment."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from shoal.aggregates.fleet import Fleet, FleetApplication
from shoal.bus import ShoalSettings
from shoal.errors import InvalidSpec, Refused
from shoal.ops.instances import Launch, identity_env, instance_command, scoped_env
from shoal.schemas.fleet import DesiredAgent, parse_fleet_spec

NODE = """
fleet: wire
agents:
  - name: shouter
    command: [node, /srv/worker.mjs, --fast]
    capabilities: [shout, whisper]
    version: "3"
    replicas: 2
"""


@pytest.mark.parametrize(
    ("agent", "message"),
    [
        (
            "{name: a}",
            "agents.0: give exactly one of 'target' (a Python module:attr) or 'command' "
            "(an executable and its arguments), not neither",
        ),
        (
            "{name: a, target: 'm:a', command: [node], capabilities: [x]}",
            "agents.0: give exactly one of 'target' (a Python module:attr) or 'command' "
            "(an executable and its arguments), not both",
        ),
        ("{name: a, command: [node]}", "agents.0: 'capabilities' is required with 'command'"),
        (
            "{name: a, target: 'm:a', capabilities: [x]}",
            "agents.0: 'capabilities' is only for a 'command' agent",
        ),
        ("{name: a, command: [], capabilities: [x]}", "agents.0.command: Tuple should have"),
        ("{name: a, command: [''], capabilities: [x]}", "agents.0.command: the executable"),
        ("{name: a, command: [node], capabilities: ['a.b']}", "agents.0.capabilities.0"),
    ],
)
def test_a_spec_agent_runs_exactly_one_of_target_and_command(agent: str, message: str) -> None:
    with pytest.raises(InvalidSpec) as refused:
        parse_fleet_spec(f"fleet: f\nagents:\n  - {agent}\n")
    assert message in str(refused.value)


def test_a_command_agent_reaches_desired_state_and_rolls_back_to_its_previous_command() -> None:
    fleet = Fleet("wire", parse_fleet_spec(NODE).model_dump(mode="json"), "alice", "")
    agent = fleet.desired().agents["shouter"]
    assert (agent.target, agent.command, agent.capabilities, agent.replicas) == (
        "",
        ("node", "/srv/worker.mjs", "--fast"),
        ("shout", "whisper"),
        2,
    )
    assert agent.runs == "node /srv/worker.mjs --fast"

    fleet.apply(parse_fleet_spec(NODE.replace("--fast", "--slow").replace('"3"', '"4"')), "bob")
    upgraded = fleet.desired().agents["shouter"]
    assert (upgraded.version, upgraded.command, upgraded.previous_version) == (
        "4",
        ("node", "/srv/worker.mjs", "--slow"),
        "3",
    )
    assert upgraded.fingerprint() != agent.fingerprint()
    with pytest.raises(Refused, match="runs a command, not a Python target: apply a spec"):
        fleet.upgrade("shouter", "5", "bob", target="shoal.agents.demo:summarizer_agent")
    fleet.rollback("shouter", "carol", "4 is slow")
    back = fleet.desired().agents["shouter"]
    assert (back.version, back.command) == ("3", ("node", "/srv/worker.mjs", "--fast"))
    assert back.fingerprint() == agent.fingerprint()


def test_a_command_agent_survives_persistence(tmp_path: Path) -> None:
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(tmp_path / "f.db")}
    app = FleetApplication(env=env)
    try:
        app.apply_spec(parse_fleet_spec(NODE), "alice")
        app.apply_spec(parse_fleet_spec(NODE.replace("--fast", "--slow")), "alice")
        app.command("wire", "rollback", "bob", agent="shouter")
        agent = app.get_fleet("wire").desired().agents["shouter"]
        assert agent.command == ("node", "/srv/worker.mjs", "--fast")
    finally:
        app.close()


def test_python_fingerprints_are_what_they_were_before_commands_existed() -> None:
    # Supervisors compare fingerprints with running instances: a Python agent's must not
    # change with this release, or every instance would be replaced on upgrade.
    agent = DesiredAgent(target="m:a", version="2", replicas=1, concurrency=3)
    run = {"target": "m:a", "version": "2", "concurrency": 3, "manifest": None}
    before = hashlib.sha256(json.dumps(run, sort_keys=True).encode()).hexdigest()[:16]
    assert agent.fingerprint() == before


def test_a_command_instance_runs_its_argv_with_its_identity_in_the_environment(
    tmp_path: Path,
) -> None:
    launch = Launch(
        fleet="wire",
        agent="shouter",
        target="",
        version="3",
        instance="01INST",
        slot=1,
        concurrency=4,
        supervisor="sup-a",
        manifest=tmp_path / "m.json",
        command=("node", "/srv/worker.mjs"),
        capabilities=("shout", "whisper"),
    )
    assert instance_command(launch) == ["node", "/srv/worker.mjs"]
    assert identity_env(launch) == {
        "SHOAL_FLEET": "wire",
        "SHOAL_AGENT": "shouter",
        "SHOAL_INSTANCE": "01INST",
        "SHOAL_VERSION": "3",
        "SHOAL_SLOT": "1",
        "SHOAL_CONCURRENCY": "4",
        "SHOAL_SUPERVISOR": "sup-a",
        "SHOAL_CAPABILITIES": "shout,whisper",
        "SHOAL_MANIFEST": str(tmp_path / "m.json"),
    }
    settings = ShoalSettings(data_dir=tmp_path / "data", prefix="p")  # no key store: no creds
    env = scoped_env({"PATH": "/bin"}, launch, settings)
    assert env == {"PATH": "/bin", **identity_env(launch)}
