"""The Fleet aggregate's canary: N slots on the new version, the rest held, until the core's
promotion or roll-back — validated against state, persisted in a real SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.aggregates.fleet import Fleet, FleetApplication
from shoal.errors import Refused
from shoal.schemas.fleet import DesiredCanary, canary_count, parse_fleet_spec

SPEC = """
fleet: docs
agents:
  - name: worker
    target: shoal.agents.demo:summarizer_agent
    version: "1"
    replicas: 4
"""
EVIDENCE = {"from_version": "1", "to_version": "2", "n_a": 20, "n_b": 20}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[FleetApplication]:
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(tmp_path / "f.db")}
    application = FleetApplication(env=env)
    yield application
    application.close()


def fleet() -> Fleet:
    return Fleet("docs", parse_fleet_spec(SPEC).model_dump(mode="json"), "alice", "")


def test_a_canary_runs_its_version_on_its_slots_only() -> None:
    f = fleet()
    f.upgrade("worker", "2", "alice", "try it", canary=1, min_samples=20)
    worker = f.desired().agents["worker"]
    assert (worker.version, worker.previous_version) == ("1", None)
    assert worker.canary == DesiredCanary(
        version="2", target="shoal.agents.demo:summarizer_agent", replicas=1, min_samples=20
    )
    assert [worker.for_slot(i).version for i in range(4)] == ["2", "1", "1", "1"]
    assert worker.for_slot(0).fingerprint() != worker.for_slot(1).fingerprint()


@pytest.mark.parametrize("slots", [0, 4, 5])  # (the CLI refuses 0 before it gets here)
def test_a_canary_of_no_slot_or_of_every_slot_is_refused(slots: int) -> None:
    with pytest.raises(Refused, match=f"needs 1 to 3 slots .*not {slots}"):
        fleet().upgrade("worker", "2", "alice", canary=slots)


def test_an_upgrade_during_a_canary_is_refused() -> None:
    f = fleet()
    f.upgrade("worker", "2", "alice", canary=1)
    with pytest.raises(Refused, match="canary of 2 in progress"):
        f.upgrade("worker", "3", "alice")


def test_promotion_moves_every_slot_and_keeps_the_old_version_to_roll_back_to() -> None:
    f = fleet()
    f.upgrade("worker", "2", "alice", canary=2)
    f.promote("worker", "2", EVIDENCE, "core", "not worse")
    worker = f.desired().agents["worker"]
    assert (worker.version, worker.previous_version, worker.canary) == ("2", "1", None)
    f.rollback("worker", "bob")
    assert f.desired().agents["worker"].version == "1"


def test_a_second_verdict_on_a_settled_canary_is_refused() -> None:
    f = fleet()
    f.upgrade("worker", "2", "alice", canary=1)
    f.abort_canary("worker", "2", EVIDENCE, "core", "regressed")
    with pytest.raises(Refused, match="no canary of 2 in progress"):
        f.abort_canary("worker", "2", EVIDENCE, "core", "regressed")
    with pytest.raises(Refused, match="no canary of 2 in progress"):
        f.promote("worker", "2", EVIDENCE, "core", "")
    worker = f.desired().agents["worker"]
    assert (worker.version, worker.previous_version, worker.canary) == ("1", None, None)


def test_an_operators_rollback_ends_the_canary_and_applying_a_spec_does_too() -> None:
    f = fleet()
    f.upgrade("worker", "2", "alice", canary=1)
    f.rollback("worker", "bob", "not now")
    assert f.desired().agents["worker"].canary is None
    f.upgrade("worker", "2", "alice", canary=1)
    f.apply(parse_fleet_spec(SPEC), "carol")
    assert f.desired().agents["worker"].canary is None


def test_the_history_records_the_canary_and_the_cores_figures(app: FleetApplication) -> None:
    app.apply_spec(parse_fleet_spec(SPEC), "alice")
    app.command("docs", "upgrade", "alice", "try", agent="worker", version="2", canary=1)
    app.command(
        "docs", "abort_canary", "core", "worse", agent="worker", version="2", evidence=EVIDENCE
    )
    history = app.history("docs")
    assert [(h.command, h.by, h.reason) for h in history] == [
        ("apply", "alice", ""),
        ("canary", "alice", "try"),
        ("rollback", "core", "worse"),
    ]
    assert history[1].detail == {
        "agent": "worker",
        "version": "2",
        "target": "shoal.agents.demo:summarizer_agent",
        "replicas": 1,
        "min_samples": 20,
    }
    assert history[2].detail == {"agent": "worker", "version": "2", "evidence": EVIDENCE}


@pytest.mark.parametrize(
    ("text", "replicas", "slots"), [("1", 4, 1), ("25%", 4, 1), ("50%", 3, 2), ("10%", 2, 1)]
)
def test_a_canary_is_a_count_or_a_percentage_rounded_up(
    text: str, replicas: int, slots: int
) -> None:
    assert canary_count(text, replicas) == slots


@pytest.mark.parametrize("text", ["x", "0", "-1", "0%", "100%", "-5%", "1.5"])
def test_a_canary_that_is_neither_is_refused_naming_it(text: str) -> None:
    with pytest.raises(ValueError, match=f"--canary '{text}' is not a count"):
        canary_count(text, 4)
