from __future__ import annotations

import pytest

from shoal.bus import Subjects
from shoal.errors import InvalidName

S = Subjects("shoal")


def test_subjects_follow_the_wire_contract() -> None:
    assert S.goals("onboarding") == "shoal.goals.onboarding"
    assert S.tasks("onboarding", "summarise") == "shoal.tasks.onboarding.summarise"
    assert S.event("G1", "I1", "model.called") == "shoal.events.G1.I1.model.called"
    assert S.event(None, "I1", "task.started", "core") == "shoal.events._.I1.task.started.core"
    assert S.session_events("I1") == "shoal.events.*.I1.>"
    assert S.goal_events("G1") == "shoal.events.G1.>"
    assert S.api("query", "cost") == "shoal.api.query.cost"
    assert S.control("fleet", "scale") == "shoal.control.fleet.scale"
    assert S.deadletter("tasks") == "shoal.deadletter.tasks"


def test_events_filter_narrows_by_any_combination() -> None:
    assert S.events_filter() == "shoal.events.*.*.>"
    assert S.events_filter(iid="I") == "shoal.events.*.I.>"
    assert (
        S.events_filter(gid="G", short_type="shoal.tool.called") == "shoal.events.G.*.tool.called.>"
    )


def test_event_subject_parses_back_to_its_parts() -> None:
    parsed = S.parse_event("shoal.events._.I9.policy.decided")
    assert (parsed.gid, parsed.iid, parsed.short_type) == (None, "I9", "policy.decided")
    assert parsed.publisher == ""
    parsed = S.parse_event("shoal.events.G.I9.model.called.agent.f.a.i")
    assert (parsed.short_type, parsed.publisher) == ("model.called", "agent.f.a.i")
    with pytest.raises(InvalidName):
        S.parse_event("shoal.goals.x")


@pytest.mark.parametrize("bad", ["a.b", "a*", "a>", "a b", "", "tab\t"])
def test_tokens_with_wildcards_dots_or_spaces_are_refused(bad: str) -> None:
    with pytest.raises(InvalidName, match="is not a valid name"):
        S.tasks("fleet", bad)


def test_prefix_must_be_one_token() -> None:
    with pytest.raises(InvalidName):
        Subjects("a.b")


def test_the_publisher_suffix_names_the_source() -> None:
    from shoal.bus.subjects import publisher_tokens

    assert publisher_tokens("shoal://core") == "core"
    assert publisher_tokens("shoal://cli/alice") == "cli.alice"
    assert publisher_tokens("shoal://supervisor/sup-1") == "supervisor.sup-1"
    assert publisher_tokens("shoal://docs/summarizer/I1") == "agent.docs.summarizer.I1"
    assert publisher_tokens("https://evil") == publisher_tokens("shoal://cli/a.b") == "other"
    assert S.events_as("agent.f.a.i") == "shoal.events.*.*.*.*.agent.f.a.i"


def test_an_identity_that_disagrees_with_the_subject_is_named() -> None:
    ok = S.misattributed("agent.f.a.i", "shoal://f/a/i", "f", "a", "i")
    assert ok is None
    assert S.misattributed("agent.f.a.i", "shoal://core", None, None, None) == (
        "published as 'agent.f.a.i' but claims source 'shoal://core'"
    )
    assert S.misattributed("agent.f.a.i", "shoal://f/a/i", "f", "a", "other") == (
        "source 'shoal://f/a/i' disagrees with fleet/agent/instance 'f'/'a'/'other'"
    )
    assert S.misattributed("", "shoal://cli/root", None, None, None) == (
        "published as 'no identity' but claims source 'shoal://cli/root'"
    )
