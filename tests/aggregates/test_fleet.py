"""The Fleet aggregate: commands validated against state, events with who/when/why, and the
desired state derived from them — persisted in a real SQLite file."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.aggregates.fleet import Fleet, FleetApplication
from shoal.errors import InvalidSpec, NotFound, Refused
from shoal.schemas.fleet import MAX_REPLICAS, FleetDesired, FleetSpec, parse_fleet_spec

SPEC = """
fleet: docs
budget_usd: "12.50"
rollout: {batch: 3}
agents:
  - name: orchestrator
    target: shoal.agents.demo:orchestrator_agent
  - name: worker
    target: shoal.agents.demo:summarizer_agent
    version: "1.0"
    replicas: 2
"""


def spec(text: str = SPEC) -> FleetSpec:
    return parse_fleet_spec(text)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[FleetApplication]:
    application = FleetApplication(env=_env(tmp_path))
    yield application
    application.close()


def _env(tmp_path: Path) -> dict[str, str]:
    return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(tmp_path / "f.db")}


def test_applied_spec_becomes_desired_state() -> None:
    fleet = Fleet("docs", spec().model_dump(mode="json"), "alice", "first rollout")
    desired = fleet.desired()
    assert desired.fleet == "docs" and desired.running is True and desired.generation == 1
    assert {n: (a.version, a.replicas) for n, a in desired.agents.items()} == {
        "orchestrator": ("1", 1),
        "worker": ("1.0", 2),
    }
    assert str(desired.budget_usd) == "12.50" and desired.rollout.batch == 3
    assert desired.updated_by == "alice"


def test_scaling_a_stopped_fleet_is_refused() -> None:
    fleet = Fleet("docs", spec().model_dump(mode="json"), "alice", "")
    fleet.stop("bob", "maintenance")
    with pytest.raises(Refused, match="fleet docs is stopped: start it before scaling"):
        fleet.scale({"worker": 3}, "bob")
    assert fleet.desired().replicas("worker") == 0  # stopped: nothing should run
    fleet.start("bob")
    fleet.scale({"worker": 3}, "bob")
    assert fleet.desired().replicas("worker") == 3


def test_negative_and_unknown_scale_targets_are_refused_without_an_event() -> None:
    fleet = Fleet("docs", spec().model_dump(mode="json"), "alice", "")
    with pytest.raises(Refused, match="cannot scale worker to -1: replicas must be 0 to 1000"):
        fleet.scale({"worker": -1}, "bob")
    with pytest.raises(Refused, match=r"no agent 'critic' \(agents: orchestrator, worker\)"):
        fleet.scale({"critic": 1}, "bob")
    with pytest.raises(Refused, match="fleet docs is already running"):
        fleet.start("bob")
    assert fleet.version == 1  # nothing was recorded


def test_rollback_needs_a_previous_version_and_restores_version_and_target() -> None:
    fleet = Fleet("docs", spec().model_dump(mode="json"), "alice", "")
    with pytest.raises(Refused, match="docs/worker has no previous version to roll back to"):
        fleet.rollback("worker", "bob")
    fleet.upgrade("worker", "2.0", "bob", "faster", target="tests.ops.kill_agents:probe_agent")
    fleet.upgrade("worker", "3.0", "bob")
    assert fleet.desired().agents["worker"].previous_version == "2.0"
    fleet.rollback("worker", "carol", "3.0 crashes")
    worker = fleet.desired().agents["worker"]
    assert (worker.version, worker.target) == ("2.0", "tests.ops.kill_agents:probe_agent")
    fleet.rollback("worker", "carol")
    worker = fleet.desired().agents["worker"]
    assert (worker.version, worker.target) == ("1.0", "shoal.agents.demo:summarizer_agent")
    with pytest.raises(Refused, match="no previous version"):
        fleet.rollback("worker", "carol")
    with pytest.raises(Refused, match=r"already runs version 1\.0"):
        fleet.upgrade("worker", "1.0", "carol")


def test_applying_a_changed_version_counts_as_an_upgrade(app: FleetApplication) -> None:
    app.apply_spec(spec(), "alice", "v1")
    app.apply_spec(
        spec(SPEC.replace('"1.0"', '"1.1"').replace("replicas: 2", "replicas: 4")), "alice"
    )
    worker = app.get_fleet("docs").desired().agents["worker"]
    assert (worker.version, worker.replicas, worker.previous_version) == ("1.1", 4, "1.0")
    with pytest.raises(Refused, match="spec is for fleet 'other', not 'docs'"):
        app.get_fleet("docs").apply(spec(SPEC.replace("fleet: docs", "fleet: other")), "x")


def test_every_command_is_in_the_history_with_who_when_why(
    app: FleetApplication, tmp_path: Path
) -> None:
    app.apply_spec(spec(), "alice", "launch")
    app.command("docs", "scale", "bob", "more traffic", replicas={"worker": 5})
    app.command("docs", "upgrade", "bob", "new prompt", agent="worker", version="2.0")
    app.command("docs", "rollback", "carol", "regression", agent="worker")
    app.command("docs", "stop", "dave", "incident")
    app.command("docs", "start", "dave", "resolved")
    with pytest.raises(Refused):
        app.command("docs", "start", "dave", "twice")

    # A fresh application on the same SQLite file sees the same history and state.
    again = FleetApplication(env=_env(tmp_path))
    history = again.history("docs")
    assert [(h.version, h.command, h.by, h.reason) for h in history] == [
        (1, "apply", "alice", "launch"),
        (2, "scale", "bob", "more traffic"),
        (3, "upgrade", "bob", "new prompt"),
        (4, "rollback", "carol", "regression"),
        (5, "stop", "dave", "incident"),
        (6, "start", "dave", "resolved"),
    ]
    assert history[1].detail == {"replicas": {"worker": 5}}
    assert history[2].detail["version"] == "2.0" and history[3].detail["version"] == "1.0"
    assert all(a.at <= b.at for a, b in itertools.pairwise(history))
    desired = again.get_fleet("docs").desired()
    assert (desired.running, desired.generation, desired.replicas("worker")) == (True, 6, 5)
    again.close()


def test_unknown_fleet_is_not_found(app: FleetApplication) -> None:
    with pytest.raises(NotFound, match="no fleet named 'ghost'"):
        app.command("ghost", "stop", "x")
    with pytest.raises(NotFound):
        app.history("ghost")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "fleet: a.b\nagents: [{name: w, target: 'm:a'}]",
            "fleet: 'a.b' must be one subject token",
        ),
        ("fleet: f\nagents: []", "agents: List should have at least 1 item"),
        ("fleet: f\nagents: [{name: w, target: 'nocolon'}]", "agents.0.target: 'nocolon' is not"),
        ("fleet: f\nagents: [{name: w, target: 'm:a', replicas: -2}]", "agents.0.replicas:"),
        ("fleet: f\nagents: [{name: w, target: 'm:a', replica: 2}]", "agents.0.replica: Extra"),
        (
            "fleet: f\nagents: [{name: w, target: 'm:a'}, {name: w, target: 'm:b'}]",
            "agent names must be unique; repeated: w",
        ),
        ("- just\n- a list", "must be a YAML mapping"),
        ("fleet: [unclosed", "is not valid YAML"),
    ],
)
def test_invalid_specs_name_the_field_and_the_reason(text: str, message: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        parse_fleet_spec(text, origin="spec.yaml")
    assert message in str(err.value)


def test_an_agents_manifest_in_the_spec_is_validated_like_a_capability_manifest() -> None:
    text = SPEC + "    manifest: {models: [offline-small], tools: [read_file], budget_usd: '0.5'}\n"
    parsed = parse_fleet_spec(text)
    worker = parsed.agent("worker")
    assert worker is not None and worker.manifest is not None
    assert (worker.manifest.models, list(worker.manifest.tools)) == (
        ("offline-small",),
        ["read_file"],
    )
    fleet = Fleet("docs", parsed.model_dump(mode="json"), "alice", "")
    assert fleet.spec == parsed  # survives the event's JSON round trip
    with pytest.raises(InvalidSpec, match=r"agents\.1\.manifest\.tool: Extra inputs"):
        parse_fleet_spec(SPEC + "    manifest: {tool: [read_file]}\n")


def test_concurrent_commands_of_two_operators_all_land_once(
    app: FleetApplication, tmp_path: Path
) -> None:
    app.apply_spec(spec(), "alice")
    other = FleetApplication(env=_env(tmp_path))  # a second operator, same database

    def scale_many(application: FleetApplication, who: str) -> None:
        for n in range(15):
            application.command("docs", "scale", who, replicas={"worker": n})

    threads = [
        threading.Thread(target=scale_many, args=(a, who))
        for a, who in ((app, "alice"), (other, "bob"))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    history = app.history("docs")
    assert [h.version for h in history] == list(range(1, 32))  # none lost, none doubled
    assert sorted(h.by for h in history[1:]) == ["alice"] * 15 + ["bob"] * 15
    other.close()


def test_applying_a_spec_without_an_agent_removes_it_from_desired_state() -> None:
    fleet = Fleet("docs", spec().model_dump(mode="json"), "alice", "")
    without = SPEC[: SPEC.index("  - name: worker")]
    fleet.apply(spec(without), "alice", "worker retired")
    assert list(fleet.desired().agents) == ["orchestrator"]
    with pytest.raises(Refused, match="fleet docs has no agent 'worker'"):
        fleet.scale({"worker": 1}, "bob")


def test_scale_is_held_to_the_same_replica_limit_as_apply() -> None:
    fleet = Fleet("docs", spec().model_dump(mode="json"), "alice", "")
    with pytest.raises(Refused, match="cannot scale worker to 100000: replicas must be 0 to 1000"):
        fleet.scale({"worker": 100_000}, "bob")
    with pytest.raises(Refused, match="cannot scale worker to 1001: replicas must be 0 to 1000"):
        fleet.scale({"orchestrator": 2, "worker": MAX_REPLICAS + 1}, "bob")
    assert (fleet.version, fleet.desired().replicas("orchestrator")) == (1, 1)  # nothing recorded
    fleet.scale({"worker": MAX_REPLICAS}, "bob")
    assert fleet.desired().replicas("worker") == 1000
    with pytest.raises(
        InvalidSpec, match=r"agents\.1\.replicas: Input should be less than or equal"
    ):
        parse_fleet_spec(SPEC.replace("replicas: 2", "replicas: 1001"))


def test_a_desired_document_beyond_the_limits_is_not_a_valid_document() -> None:
    doc = Fleet("docs", spec().model_dump(mode="json"), "alice", "").desired()
    raw = doc.model_dump(mode="json")
    raw["agents"]["worker"]["replicas"] = 100_000  # written by hand, past every command
    with pytest.raises(ValueError, match=r"agents\.worker\.replicas"):
        FleetDesired.model_validate(raw)


def test_upgrade_to_a_malformed_version_or_target_is_refused_like_a_spec() -> None:
    fleet = Fleet("docs", spec().model_dump(mode="json"), "alice", "")
    with pytest.raises(Refused, match="'two words' is not a version label"):
        fleet.upgrade("worker", "two words", "bob")
    with pytest.raises(Refused, match="'nocolon' is not a run target"):
        fleet.upgrade("worker", "2", "bob", target="nocolon")
    assert fleet.version == 1


def test_every_spec_field_reaches_the_desired_document() -> None:
    text = (
        SPEC.replace("fleet: docs\n", "fleet: docs\ndescription: Summaries for the docs team\n")
        + "    concurrency: 4\n"
        + "    manifest: {models: [offline-small], tools: [list_files], budget_usd: '0.25'}\n"
    )
    parsed = parse_fleet_spec(text)
    desired = Fleet("docs", parsed.model_dump(mode="json"), "alice", "").desired()
    worker = desired.agents["worker"]
    assert desired.description == "Summaries for the docs team"
    assert (str(desired.budget_usd), desired.rollout.batch) == ("12.50", 3)
    assert (worker.target, worker.version, worker.replicas, worker.concurrency) == (
        "shoal.agents.demo:summarizer_agent",
        "1.0",
        2,
        4,
    )
    assert worker.manifest is not None and list(worker.manifest.tools) == ["list_files"]
    assert worker.manifest == parsed.agents[1].manifest
    assert desired.agents["orchestrator"].manifest is None


def test_a_changed_manifest_or_concurrency_changes_what_instances_run() -> None:
    fleet = Fleet("docs", spec().model_dump(mode="json"), "alice", "")
    before = fleet.desired().agents["worker"].fingerprint()
    fleet.apply(spec(SPEC + "    manifest: {tools: [list_files]}\n"), "alice")
    with_manifest = fleet.desired().agents["worker"].fingerprint()
    fleet.apply(spec(SPEC + "    manifest: {tools: [list_files]}\n    concurrency: 2\n"), "al")
    with_concurrency = fleet.desired().agents["worker"].fingerprint()
    fleet.scale({"worker": 5}, "bob")  # the number of instances is not what each one runs
    assert fleet.desired().agents["worker"].fingerprint() == with_concurrency
    assert len({before, with_manifest, with_concurrency}) == 3
