"""The registry's aggregates on a real SQLite store: versions, lifecycle, search, cards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from a2a.client.card_resolver import parse_agent_card
from google.protobuf.json_format import MessageToDict  # type: ignore[import-untyped]

from shoal.aggregates.agent_cards import PROTOCOL_BINDING, REGISTRY_EXTENSION, agent_card
from shoal.aggregates.definitions import RegistryApplication
from shoal.aggregates.registry_query import search
from shoal.errors import InvalidOption, InvalidSpec, NotFound, Refused
from shoal.schemas.registry import AgentRegistration, ToolRegistration, parse_registration

FILE = """
agents:
  - name: summarizer
    version: "1.0"
    purpose: Summarise documents for the docs team.
    owner: docs-team
    target: shoal.agents.demo:summarizer_agent
    capabilities:
      - name: summarize
        description: One paragraph from a file.
        input_schema: {type: object, properties: {path: {type: string}}, required: [path]}
        output_schema: {type: object, properties: {summary: {type: string}}}
    manifest: {models: [offline-small], tools: [read_file], budget_usd: "0.05"}
    collaborators: {called_by: [planner]}
  - name: planner
    version: "2"
    purpose: Plan a goal into tasks.
    owner: platform
    capabilities: [{name: goals}]
    manifest: {delegates: [summarize]}
tools:
  - name: read_file
    version: "1"
    purpose: Read a file in the sandbox.
    owner: platform
    input_schema: {type: object, properties: {path: {type: string}}}
"""


def sqlite_app(path: Path) -> RegistryApplication:
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)}
    return RegistryApplication(env=env)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[RegistryApplication]:
    application = sqlite_app(tmp_path / "registry.sqlite")
    doc = parse_registration(FILE)
    for tool in doc.tools:
        application.register(tool, "alice", "first registration")
    for agent in doc.agents:
        application.register(agent, "alice", "first registration")
    yield application
    application.close()


def test_a_version_goes_draft_certified_deprecated_retired_with_who_and_why(
    app: RegistryApplication, tmp_path: Path
) -> None:
    app.transition("summarizer", "1.0", "certify", "carol", "evals passed: 97/100")
    app.transition("summarizer", "1.0", "deprecate", "dave", "1.1 replaces it")
    app.transition("summarizer", "1.0", "retire", "erin", "no fleet runs it")
    app.close()
    reopened = sqlite_app(tmp_path / "registry.sqlite")  # what was saved, not what is cached
    entry = reopened.get("agent", "summarizer").entry("1.0")
    assert [(t.state, t.by, t.reason) for t in entry.history] == [
        ("draft", "alice", "first registration"),
        ("certified", "carol", "evals passed: 97/100"),
        ("deprecated", "dave", "1.1 replaces it"),
        ("retired", "erin", "no fleet runs it"),
    ]
    assert entry.state == "retired"
    certified = entry.certified_by
    assert certified is not None and (certified.by, certified.reason) == (
        "carol",
        "evals passed: 97/100",
    )
    reopened.close()


def test_a_transition_out_of_order_or_without_a_reason_is_refused(
    app: RegistryApplication,
) -> None:
    with pytest.raises(Refused) as e:
        app.transition("summarizer", "1.0", "deprecate", "dave", "old")
    assert str(e.value) == (
        "cannot deprecate agent summarizer version 1.0: it is draft "
        "(deprecate applies to certified)"
    )
    with pytest.raises(Refused) as e:
        app.transition("summarizer", "1.0", "certify", "carol", "  ")
    assert str(e.value).startswith("certify needs --reason")
    with pytest.raises(NotFound) as nf:
        app.transition("summarizer", "9", "certify", "carol", "x")
    assert str(nf.value) == "agent summarizer has no version '9' (versions: 1.0)"
    assert app.get("agent", "summarizer").entry("1.0").state == "draft"


def test_certified_content_is_pinned_and_a_draft_is_revised_in_place(
    app: RegistryApplication,
) -> None:
    same = parse_registration(FILE).agents[0]
    assert app.register(same, "alice")[1] == "unchanged"
    changed = same.model_copy(update={"target": "my.agents:other"})
    assert app.register(changed, "bob", "new target")[1] == "revised"
    entry = app.get("agent", "summarizer").entry("1.0")
    assert (entry.content["target"], entry.digest) == ("my.agents:other", changed.digest())
    app.transition("summarizer", "1.0", "certify", "carol", "reviewed")
    with pytest.raises(Refused) as e:
        app.register(same, "mallory")
    assert str(e.value) == (
        f"agent summarizer version 1.0 is certified with content {changed.digest()}; this "
        f"registration differs ({same.digest()}): register a new version"
    )
    assert app.register(same.model_copy(update={"version": "1.1"}), "bob")[1] == "added"
    assert list(app.get("agent", "summarizer").versions) == ["1.0", "1.1"]


def test_search_matches_text_capability_state_and_kind(app: RegistryApplication) -> None:
    app.transition("planner", "2", "certify", "carol", "ok")
    every = [(r.kind, r.name, r.version, r.state) for r in search(app.all())]
    assert every == [
        ("agent", "planner", "2", "certified"),
        ("agent", "summarizer", "1.0", "draft"),
        ("tool", "read_file", "1", "draft"),
    ]
    assert [r.name for r in search(app.all(), "DOCS team")] == ["summarizer"]
    assert [r.name for r in search(app.all(), "one paragraph")] == ["summarizer"]
    assert [r.name for r in search(app.all(), capability="summarize")] == ["summarizer"]
    assert [r.name for r in search(app.all(), "platform", kind="tool")] == ["read_file"]
    [row] = search(app.all(), state="certified")
    assert (row.name, row.by, row.reason, row.capabilities) == (
        "planner",
        "carol",
        "ok",
        ("goals",),
    )
    with pytest.raises(InvalidOption) as e:
        search(app.all(), state="bogus")
    assert str(e.value) == "--state 'bogus' is not one of draft, certified, deprecated, retired"


def test_the_a2a_sdk_parses_the_agent_card(app: RegistryApplication) -> None:
    app.transition("summarizer", "1.0", "certify", "carol", "evals passed")
    doc = agent_card(
        app.get("agent", "summarizer"), prefix="shoal", base_url="http://console.example"
    )
    card = parse_agent_card(json.loads(json.dumps(doc)))  # the SDK's own parser and type
    assert (card.name, card.version, card.description) == (
        "summarizer",
        "1.0",
        "Summarise documents for the docs team.",
    )
    assert (card.provider.organization, card.provider.url) == (
        "docs-team",
        "http://console.example",
    )
    assert [(s.id, s.description, list(s.input_modes)) for s in card.skills] == [
        ("summarize", "One paragraph from a file.", ["application/json"])
    ]
    [interface] = card.supported_interfaces
    assert (interface.protocol_binding, interface.url) == (
        PROTOCOL_BINDING,
        "nats:shoal.tasks.<fleet>.<capability>",
    )
    [extension] = card.capabilities.extensions
    params = MessageToDict(extension.params)
    assert extension.uri == REGISTRY_EXTENSION
    assert (params["state"], params["certified_by"], params["certified_reason"]) == (
        "certified",
        "carol",
        "evals passed",
    )
    assert params["called_by"] == ["planner"]
    assert params["schemas"]["summarize"]["input"]["required"] == ["path"]
    assert params["manifest"]["budget_usd"] == "0.05"


def test_the_card_shows_the_newest_certified_version_and_tools_have_none(
    app: RegistryApplication,
) -> None:
    newer = parse_registration(FILE).agents[0].model_copy(update={"version": "1.1"})
    app.register(newer, "bob")
    app.transition("summarizer", "1.0", "certify", "carol", "ok")
    assert agent_card(app.get("agent", "summarizer"), prefix="p")["version"] == "1.0"
    assert agent_card(app.get("agent", "summarizer"), "1.1", prefix="p")["version"] == "1.1"
    with pytest.raises(NotFound) as e:
        agent_card(app.get("tool", "read_file"), prefix="p")
    assert str(e.value) == "read_file is a tool: only agents have agent cards"


def test_a_registration_file_names_the_bad_field() -> None:
    with pytest.raises(InvalidSpec) as e:
        parse_registration("agents: [{name: a, version: '1', purpos: typo}]", origin="f.yaml")
    assert "purpos" in str(e.value) and str(e.value).startswith("invalid f.yaml:")
    with pytest.raises(InvalidSpec) as e:
        parse_registration("tools: []")
    assert "at least one of 'agents' or 'tools'" in str(e.value)
    assert ToolRegistration(name="t", version="1").kind == "tool"
    assert AgentRegistration(name="a", version="1").content()["collaborators"] == {"called_by": []}
