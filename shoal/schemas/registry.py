"""The registry's documents: what an agent or a tool is, per version, and its lifecycle.

A registration file (``shoal registry register FILE``) lists agents and tools:

.. code-block:: yaml

    agents:
      - name: summarizer
        version: "1.2"
        purpose: Summarise documents for the docs team.
        owner: docs-team
        target: my_agents.summarizer:agent
        capabilities:
          - name: summarize
            description: One paragraph from a file.
            input_schema: {type: object, properties: {path: {type: string}}}
            output_schema: {type: object, properties: {summary: {type: string}}}
        manifest: {models: [offline-small], tools: [read_file], delegates: [lookup]}
        collaborators: {called_by: [planner]}
    tools:
      - name: read_file
        version: "1"
        purpose: Read a file in the sandbox.
        owner: platform
        kind: tool
        input_schema: {type: object, properties: {path: {type: string}}}

Unknown fields are refused, naming the field. ``collaborators.delegates_to`` is the
manifest's ``delegates`` (what the broker lets the agent's instances publish to); it cannot
be declared apart from the manifest, so what the registry says is what is enforced.
``called_by`` names the agents allowed to delegate to this one (empty: any agent of its
fleet); a production fleet whose agent delegates to one that does not list it is refused.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shoal.errors import InvalidSpec
from shoal.schemas.envelope import Token, describe_validation_error
from shoal.schemas.manifest import CapabilityManifest

__all__ = [
    "LIFECYCLE",
    "TRANSITIONS",
    "AgentRegistration",
    "CapabilitySpec",
    "Collaborators",
    "LifecycleState",
    "RegistrationFile",
    "ToolKind",
    "ToolRegistration",
    "parse_registration",
]

LifecycleState = Literal["draft", "certified", "deprecated", "retired"]
LIFECYCLE: tuple[LifecycleState, ...] = ("draft", "certified", "deprecated", "retired")

TRANSITIONS: dict[str, tuple[tuple[LifecycleState, ...], LifecycleState]] = {
    "certify": (("draft",), "certified"),
    "deprecate": (("certified",), "deprecated"),
    "retire": (("draft", "certified", "deprecated"), "retired"),
}
"""Verb → (states it may start from, the state it leads to)."""

ToolKind = Literal["tool", "mcp-server"]

_VERSION = Field(min_length=1, max_length=64, pattern=r"^[^\s]+$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CapabilitySpec(_Strict):
    """One capability an agent serves, with the JSON Schemas of its task input and output."""

    name: Token
    description: str = ""
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None


class Collaborators(_Strict):
    """Which agents may delegate to this one (``delegates_to`` comes from the manifest)."""

    called_by: tuple[Token, ...] = ()


class AgentRegistration(_Strict):
    """One version of one agent, as registered."""

    name: Token
    version: str = _VERSION
    purpose: str = Field(default="", max_length=2000)
    owner: str = Field(default="", max_length=200)
    target: str | None = None
    capabilities: list[CapabilitySpec] = Field(default_factory=list)
    manifest: CapabilityManifest = Field(default_factory=CapabilityManifest)
    collaborators: Collaborators = Field(default_factory=Collaborators)

    @model_validator(mode="after")
    def _unique_capabilities(self) -> AgentRegistration:
        names = [c.name for c in self.capabilities]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"capability names must be unique; repeated: {', '.join(repeated)}")
        return self

    def content(self) -> dict[str, Any]:
        """What a version *is* (certification pins it): target, capabilities, manifest,
        collaborators — not the purpose or owner, which describe the agent."""
        return self.model_dump(
            mode="json", include={"target", "capabilities", "manifest", "collaborators"}
        )

    def digest(self) -> str:
        return content_digest(self.content())


class ToolRegistration(_Strict):
    """One version of one tool or MCP server."""

    name: Token
    version: str = _VERSION
    kind: ToolKind = "tool"
    purpose: str = Field(default="", max_length=2000)
    owner: str = Field(default="", max_length=200)
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    server: dict[str, Any] | None = Field(
        default=None, description="An MCP server's transport: {command: [...]} or {url: ...}."
    )
    side_effects: tuple[str, ...] = ()

    def content(self) -> dict[str, Any]:
        return self.model_dump(
            mode="json",
            include={"kind", "input_schema", "output_schema", "server", "side_effects"},
        )

    def digest(self) -> str:
        return content_digest(self.content())


def content_digest(content: dict[str, Any]) -> str:
    """A short stable digest of a version's content (sorted-key JSON, SHA-256)."""
    body = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()[:16]


class RegistrationFile(_Strict):
    """The document ``shoal registry register`` reads."""

    agents: list[AgentRegistration] = Field(default_factory=list)
    tools: list[ToolRegistration] = Field(default_factory=list)

    @model_validator(mode="after")
    def _something(self) -> RegistrationFile:
        if not self.agents and not self.tools:
            raise ValueError("a registration file needs at least one of 'agents' or 'tools'")
        return self


def parse_registration(text: str, origin: str = "registration") -> RegistrationFile:
    """Parse YAML (or JSON) text; :class:`InvalidSpec` names the failing field and why."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InvalidSpec(f"{origin} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise InvalidSpec(f"{origin} must be a YAML mapping with 'agents' and/or 'tools'")
    try:
        return RegistrationFile.model_validate(data)
    except ValidationError as e:
        raise InvalidSpec(f"invalid {origin}: {describe_validation_error(e)}") from e
