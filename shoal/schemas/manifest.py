"""Capability manifests: what an agent may use (models, tools), what it may spend, and which
actions need a human's approval. Written in YAML or built in Python. No I/O beyond reading
the YAML text a caller hands in (or a path it names).

.. code-block:: yaml

    models: [offline-small]
    tools:
      read_file: {sensitivity: internal}
      list_files: {sensitivity: public}
      send_email: {sensitivity: confidential, side_effects: [email]}
    budget_usd: "0.05"
    requires_approval: [tool.send_email]
    delegates: [summarize]
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shoal.errors import ShoalError
from shoal.schemas.envelope import describe_validation_error
from shoal.schemas.eventdata import Sensitivity

__all__ = ["CapabilityManifest", "InvalidManifest", "ToolGrant"]


class InvalidManifest(ShoalError):
    """A capability manifest is not valid (the text names the field and why)."""


class ToolGrant(BaseModel):
    """Permission to call one tool, and how sensitive its arguments are.

    The sensitivity decides how ``tool.called`` records the arguments: ``public`` and
    ``internal`` as given, ``confidential`` with every value replaced by its length,
    ``secret`` with nothing but the argument names. ``redact`` names arguments that are
    always redacted whatever the sensitivity (tokens, passwords).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    sensitivity: Sensitivity = "internal"
    redact: tuple[str, ...] = ()
    side_effects: tuple[str, ...] = ()


class CapabilityManifest(BaseModel):
    """What an agent may do: allowed models and tools, a budget, approval requirements.

    ``budget_usd`` is per session (one task); a task's own ``budget_usd`` overrides it.
    ``requires_approval`` lists actions as ``tool.<name>``, ``model.<name>`` or
    ``delegate.<capability>``. ``delegates`` lists the capabilities the agent may delegate
    to: deny by default, so an agent that names none delegates nothing (a plan steered by
    tool output into ``delete_all`` tasks is refused before any is assigned).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    models: tuple[str, ...] = ()
    tools: dict[str, ToolGrant] = Field(default_factory=dict)
    budget_usd: Decimal | None = Field(default=None, ge=0)
    requires_approval: tuple[str, ...] = ()
    delegates: tuple[str, ...] = ()

    @field_validator("tools", mode="before")
    @classmethod
    def _tool_list(cls, value: Any) -> Any:
        # ``tools: [read_file, list_files]`` is shorthand for default grants.
        if isinstance(value, list | tuple):
            return {name: {} for name in value}
        return value

    @classmethod
    def from_yaml(cls, text: str) -> CapabilityManifest:
        """Parse a manifest from YAML text; raise :class:`InvalidManifest` with the reason."""
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise InvalidManifest(f"manifest is not valid YAML: {e}") from e
        if not isinstance(raw, dict):
            raise InvalidManifest("manifest must be a YAML mapping")
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise InvalidManifest(f"invalid manifest: {describe_validation_error(e)}") from e

    @classmethod
    def load(cls, path: Path) -> CapabilityManifest:
        """Read and parse a manifest file."""
        try:
            text = path.read_text()
        except OSError as e:
            raise InvalidManifest(f"cannot read manifest {path}: {e.strerror or e}") from e
        return cls.from_yaml(text)

    def allows_model(self, model: str) -> bool:
        return model in self.models

    def grant(self, tool: str) -> ToolGrant | None:
        """The grant for ``tool``, or ``None`` when the manifest does not allow it."""
        return self.tools.get(tool)

    def needs_approval(self, action: str) -> bool:
        return action in self.requires_approval

    def allows_delegation(self, capability: str) -> bool:
        return capability in self.delegates
