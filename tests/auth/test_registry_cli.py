"""``shoal registry`` with authentication on: operators write, viewers read, every command
audited; ``fleet apply`` of a production spec refuses an uncertified version in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from a2a.client.card_resolver import parse_agent_card

from shoal.bus import ShoalSettings
from shoal.ops.connect import open_bus
from shoal.schemas import parse_event
from tests.auth.test_operators import add, shoal

pytestmark = pytest.mark.timeout(120)

REGISTRATION = """
agents:
  - name: reviewer
    version: "1"
    purpose: Review code changes before merge.
    owner: code-review
    capabilities:
      - name: review
        input_schema: {type: object, properties: {diff: {type: string}}}
    manifest: {models: [offline-small], tools: [read_file]}
tools:
  - name: read_file
    version: "1"
    purpose: Read a file in the sandbox.
    owner: platform
"""

PROD = """
fleet: review-prod
production: true
agents:
  - name: worker
    target: shoal.agents.demo:summarizer_agent
    version: "3.0"
"""


async def test_operators_register_and_certify_and_viewers_only_read(
    local: ShoalSettings, tmp_path: Path
) -> None:
    async with open_bus(local):
        pass  # streams and buckets exist, as after 'shoal up'
    viewer, operator = await add(local, "vera", "viewer"), await add(local, "otto", "operator")
    file = tmp_path / "registry.yaml"
    file.write_text(REGISTRATION)

    code, out, err = await shoal(local, "registry", "register", str(file), "--json", creds=operator)
    assert code == 0, err
    assert json.loads(out) == [
        {"kind": "tool", "name": "read_file", "version": "1", "outcome": "added"},
        {"kind": "agent", "name": "reviewer", "version": "1", "outcome": "added"},
    ]
    code, out, err = await shoal(
        local, "registry", "certify", "reviewer", "1", "--reason", "ok", creds=viewer
    )
    assert (code, out, err.strip()) == (
        2,
        "",
        "error: registry.certify requires role operator; vera has role viewer",
    )
    code, out, err = await shoal(
        local, "registry", "certify", "reviewer", "1", "-r", "evals passed", creds=operator
    )
    assert (code, out.strip()) == (0, "agent reviewer 1: certified by otto (evals passed)"), err

    code, out, err = await shoal(local, "registry", "ls", "--json", creds=viewer)
    assert code == 0, err
    assert [(r["kind"], r["name"], r["version"], r["state"], r["by"]) for r in json.loads(out)] == [
        ("agent", "reviewer", "1", "certified", "otto"),
        ("tool", "read_file", "1", "draft", "otto"),
    ]
    code, out, err = await shoal(
        local, "registry", "search", "CODE changes", "--state", "certified", "--json", creds=viewer
    )
    assert code == 0, err
    assert [r["name"] for r in json.loads(out)] == ["reviewer"]
    code, out, err = await shoal(
        local, "registry", "ls", "--capability", "review", "--state", "draft", "--json"
    )
    assert (code, out, err) == (0, "[]\n", "")
    code, out, err = await shoal(local, "registry", "ls", "--state", "bogus", creds=viewer)
    assert (code, out, err.strip()) == (
        2,
        "",
        "error: Invalid value for '--state': 'bogus' is not one of draft, certified, "
        "deprecated, retired (see 'shoal registry ls --help')",
    )

    code, out, err = await shoal(local, "registry", "show", "reviewer", "--json", creds=viewer)
    assert code == 0, err
    [version] = json.loads(out)["versions"]
    assert [(h["state"], h["by"], h["reason"]) for h in version["history"]] == [
        ("draft", "otto", ""),
        ("certified", "otto", "evals passed"),
    ]
    code, out, err = await shoal(local, "registry", "card", "reviewer", "--json", creds=viewer)
    assert code == 0, err
    card = parse_agent_card(json.loads(out))
    assert (card.name, card.version, card.provider.organization, [s.id for s in card.skills]) == (
        "reviewer",
        "1",
        "code-review",
        ["review"],
    )
    code, _, err = await shoal(local, "registry", "show", "nobody", creds=viewer)
    assert (code, err.strip()) == (
        1,
        "error: nothing named 'nobody' in the registry (see 'shoal registry ls')",
    )

    async with open_bus(local) as bus:
        control = await bus.read(bus.subjects.all_control, stream=bus.topology.control.name)
    records = [(s.subject.split(".", 1)[1], parse_event(s.raw)) for s in control]
    assert [(subj, ev.type, ev.data.model_dump()["by"]) for subj, ev in records] == [
        ("control.registry.register", "shoal.control.accepted", "otto"),
        ("control.registry.refused.cli.vera", "shoal.control.refused", "vera"),
        ("control.registry.certify", "shoal.control.accepted", "otto"),
    ]


async def test_fleet_apply_of_a_production_spec_refuses_an_uncertified_version_in_one_line(
    local: ShoalSettings, tmp_path: Path
) -> None:
    async with open_bus(local):
        pass
    operator = await add(local, "opal", "operator")
    spec = tmp_path / "prod.yaml"
    spec.write_text(PROD)
    code, out, err = await shoal(local, "fleet", "apply", str(spec), creds=operator)
    assert (code, out, err.strip()) == (
        1,
        "",
        "error: fleet review-prod is production: agent worker version 3.0 is draft, not "
        "certified (shoal registry certify worker 3.0 --reason ...)",
    )
    code, out, err = await shoal(
        local, "registry", "certify", "worker", "3.0", "-r", "canary clean", creds=operator
    )
    assert code == 0, err
    code, out, err = await shoal(local, "fleet", "apply", str(spec), "--json", creds=operator)
    assert code == 0, err
    assert json.loads(out)["desired"]["agents"]["worker"]["version"] == "3.0"
