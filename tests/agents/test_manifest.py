"""Capability manifests from YAML."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from shoal.agents import ToolGrant
from shoal.schemas.manifest import CapabilityManifest, InvalidManifest

YAML = """
models: [offline-small, gpt-4o-mini]
tools:
  read_file: {sensitivity: internal}
  send_email: {sensitivity: confidential, side_effects: [email], redact: [body]}
budget_usd: "0.25"
requires_approval: [tool.send_email]
delegates: [translate]
"""


def test_manifest_loads_from_yaml_with_every_field() -> None:
    m = CapabilityManifest.from_yaml(YAML)
    assert m.models == ("offline-small", "gpt-4o-mini")
    assert m.tools == {
        "read_file": ToolGrant(sensitivity="internal"),
        "send_email": ToolGrant(
            sensitivity="confidential", side_effects=("email",), redact=("body",)
        ),
    }
    assert m.budget_usd == Decimal("0.25")
    assert (m.needs_approval("tool.send_email"), m.needs_approval("tool.read_file")) == (
        True,
        False,
    )
    assert (m.allows_delegation("translate"), m.allows_delegation("deploy")) == (True, False)
    assert (m.allows_model("gpt-4o-mini"), m.allows_model("gpt-5")) == (True, False)


def test_tool_list_shorthand_grants_internal_tools(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("models: [offline-small]\ntools: [read_file, list_files]\n")
    m = CapabilityManifest.load(path)
    assert m.tools == {"read_file": ToolGrant(), "list_files": ToolGrant()}
    assert m.delegates == () and not m.allows_delegation("anything")  # deny by default


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "tools: {x: {sensitivity: top}}",
            "invalid manifest: tools.x.sensitivity: Input should be 'public', 'internal', "
            "'confidential' or 'secret'",
        ),
        (
            "budget_usd: -1",
            "invalid manifest: budget_usd: Input should be greater than or equal to 0",
        ),
        ("modles: [a]", "invalid manifest: modles: Extra inputs are not permitted"),
        # "any capability" is not expressible: delegation is deny by default
        ("delegates: null", "invalid manifest: delegates: Input should be a valid tuple"),
        ("- a\n- b", "manifest must be a YAML mapping"),
    ],
)
def test_invalid_manifest_names_the_field(text: str, message: str) -> None:
    with pytest.raises(InvalidManifest) as raised:
        CapabilityManifest.from_yaml(text)
    assert str(raised.value) == message


def test_unreadable_manifest_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidManifest, match=r"cannot read manifest .*missing\.yaml"):
        CapabilityManifest.load(tmp_path / "missing.yaml")
