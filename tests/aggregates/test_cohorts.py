"""The core counts outcomes per agent version and flags a regression after an upgrade once,
with the figures — against a real nats-server and a real SQLite file."""

from __future__ import annotations

import json
from pathlib import Path

from shoal.bus import Bus, ShoalSettings
from shoal.ops.fleets import write_desired
from shoal.ops.regressions import open_regressions
from shoal.schemas import (
    AgentStarted,
    EvaluationRegressed,
    TaskAssigned,
    TaskCompleted,
    TaskFailed,
    TaskStarted,
)
from shoal.schemas.fleet import DesiredAgent, FleetDesired
from shoal.stats import two_proportion
from tests.aggregates.eventmix import Agent, Mix, publish_all
from tests.aggregates.test_ingestion import dead_letter_reasons, ingest
from tests.ops.test_cli_health import invoke

OLD = Agent("docs", "summarizer", "inst-v1")
NEW = Agent("docs", "summarizer", "inst-v2")


async def upgraded(bus: Bus, version: str = "2", previous: str | None = "1") -> None:
    """The fleet's desired state after ``fleet upgrade docs summarizer 2``."""
    agent = DesiredAgent(
        target="shoal.agents.demo:summarizer_agent",
        version=version,
        replicas=2,
        previous_version=previous,
    )
    generation = 2 if previous else 3
    doc = FleetDesired(
        fleet="docs", running=True, generation=generation, agents={"summarizer": agent}
    )
    assert await write_desired(bus, doc)


def sessions(mix: Mix, by: Agent, outcomes: list[bool]) -> None:
    for ok in outcomes:
        iid = mix._id("s")
        mix.emit(TaskAssigned(capability="summarize"), iid=iid, gid=None)
        mix.emit(TaskStarted(capability="summarize"), iid=iid, gid=None, by=by)
        if ok:
            mix.emit(TaskCompleted(capability="summarize"), iid=iid, gid=None, by=by)
        else:
            done = TaskFailed(capability="summarize", error="boom", final=True)
            mix.emit(done, iid=iid, gid=None, by=by)


def mix_of_two_versions() -> tuple[Mix, list[bool]]:
    mix = Mix(seed=31)
    for a, version in ((OLD, "1"), (NEW, "2")):
        data = AgentStarted(version=version, capabilities=["summarize"], host="h", pid=1)
        mix.emit(data, iid=mix._id("boot"), gid=None, by=a)
    sessions(mix, OLD, [True] * 30)
    new = [i % 5 in (0, 1) for i in range(40)]  # 40 % succeed
    sessions(mix, NEW, new)
    return mix, new


def first_regression(new: list[bool]) -> tuple[int, int]:
    """(successes, n) of version 2 at the outcome the test first calls a regression."""
    for n in range(1, len(new) + 1):
        good = sum(new[:n])
        if two_proportion(30, 30, good, n, alpha=0.01, min_samples=20).regressed:
            return good, n
    raise AssertionError("never regressed")


async def test_an_upgrade_that_fails_more_is_flagged_once_with_its_figures(
    bus: Bus, settings: ShoalSettings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"regression_min_samples": 20})
    await upgraded(bus)
    mix, new = mix_of_two_versions()
    await publish_all(bus, mix.events)

    app = await ingest(settings)

    cohorts = app.cohorts("docs", "summarizer")
    assert cohorts is not None
    assert cohorts.counts == {"1": [30, 30], "2": [sum(new), 40]}
    good, n = first_regression(new)
    evidence = cohorts.verdict("regressed", "1", "2")
    assert evidence is not None
    assert (evidence["successes_a"], evidence["n_a"]) == (30, 30)
    assert (evidence["successes_b"], evidence["n_b"]) == (good, n)
    assert evidence["canary"] is False and evidence["p_value"] < 0.01
    assert list(cohorts.verdicts) == ["regressed:1->2"]
    [flagged] = await bus.read(bus.subjects.events_filter(short_type="evaluation.regressed"))
    assert flagged.event is not None and isinstance(flagged.event.data, EvaluationRegressed)
    assert (flagged.event.source, flagged.event.data.n_b) == ("shoal://core", n)

    # The core reads its own verdict back from the log: applied, nothing dead-lettered.
    again = await ingest(settings)
    assert again.cohorts("docs", "summarizer") == cohorts
    assert await dead_letter_reasons(bus) == []
    # A fresh store folds the whole log again: the same verdict, published with the same id.
    fresh = await ingest(settings.model_copy(update={"data_dir": tmp_path / "fresh"}))
    assert fresh.cohorts("docs", "summarizer").verdicts == cohorts.verdicts  # type: ignore[union-attr]
    assert len(await bus.read(bus.subjects.events_filter(short_type="evaluation.regressed"))) == 1

    # Open while version 2 runs, in `shoal status`; closed by the roll-back.
    [open_one] = await open_regressions(bus)
    line = f"docs/summarizer 2: {good}/{n} succeeded against 1 30/30 (p={evidence['p_value']:.2g})"
    assert open_one.line() == line
    status = json.loads((await invoke(settings, "status", "--json")).stdout)
    [shown] = status["regressions"]
    assert (shown["to_version"], shown["successes_b"], shown["n_b"]) == ("2", good, n)
    assert f"regression: {line}" in (await invoke(settings, "status")).stdout
    await upgraded(bus, version="1", previous=None)
    assert await open_regressions(bus) == []
    assert json.loads((await invoke(settings, "status", "--json")).stdout)["regressions"] == []


async def test_too_few_sessions_of_the_new_version_flag_nothing(
    bus: Bus, settings: ShoalSettings
) -> None:
    settings = settings.model_copy(update={"regression_min_samples": 20})
    await upgraded(bus)
    mix = Mix(seed=32)
    for a, version in ((OLD, "1"), (NEW, "2")):
        data = AgentStarted(version=version, capabilities=["summarize"], host="h", pid=1)
        mix.emit(data, iid=mix._id("boot"), gid=None, by=a)
    sessions(mix, OLD, [True] * 30)
    sessions(mix, NEW, [False] * 19)  # every one failed, but 19 < 20
    await publish_all(bus, mix.events)

    cohorts = (await ingest(settings)).cohorts("docs", "summarizer")

    assert cohorts is not None and cohorts.counts == {"1": [30, 30], "2": [0, 19]}
    assert cohorts.verdicts == {}
    assert await bus.read(bus.subjects.events_filter(short_type="evaluation.regressed")) == []


async def test_an_evaluation_not_from_the_core_is_dead_lettered(
    bus: Bus, settings: ShoalSettings
) -> None:
    mix = Mix(seed=33)
    forged = EvaluationRegressed(
        fleet="docs", agent="summarizer", from_version="1", to_version="2",
        successes_a=30, n_a=30, successes_b=0, n_b=30, alpha=0.01, min_samples=20, seq=1,
    )  # fmt: skip
    mix.emit(forged, iid="forged-verdict", gid=None)  # from shoal://cli/alice
    await publish_all(bus, mix.events)

    app = await ingest(settings)

    assert app.cohorts("docs", "summarizer") is None
    assert await dead_letter_reasons(bus) == [
        "shoal.evaluation.regressed is recorded by the core only, not 'shoal://cli/alice'"
    ]
    assert await open_regressions(bus) == []
