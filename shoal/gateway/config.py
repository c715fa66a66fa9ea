"""The gateway's configuration file: upstream providers, model aliases, routing, cache.

.. code-block:: yaml

    providers:
      openai: {base_url: https://api.openai.com/v1, api_key_env: OPENAI_UPSTREAM_KEY}
      local:  {base_url: http://127.0.0.1:8000/v1, timeout_s: 30}
    models:
      fast:                                   # what clients ask for (and manifests list)
        targets: [local/llama-3.1-8b, openai/gpt-4o-mini]   # in order; next on 5xx/timeout
        task_classes: {code: [openai/gpt-4o]} # X-Shoal-Task-Class picks another list
      openai/gpt-4o: {capabilities: [chat, tools, json, vision]}
    cache: {enabled: true, ttl_s: 300}
    principal_budgets: {alice: "5.00"}
    mcp_servers:
      files: {command: [python, -m, my_mcp_server]}   # stdio
      search: {url: http://127.0.0.1:9000/mcp}        # Streamable HTTP
    argument_rules:                                   # tool -> argument -> full-match regex
      write_file: {path: "workspace/.*"}

A target is ``<provider>/<model>``; its price is the core's price table entry for ``<model>``
(:mod:`shoal.aggregates.pricing`), so the gateway reserves and charges what the core will
record. A model name that is not an alias but has a provider prefix routes to itself.
Upstream API keys are never in the file: ``api_key_env`` names the variable holding one.
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from shoal.errors import InvalidSpec
from shoal.schemas.envelope import describe_validation_error

__all__ = ["Alias", "CacheConfig", "GatewayConfig", "Provider", "Target"]

ALL_CAPABILITIES = ("chat", "tools", "json", "vision")


class Provider(BaseModel):
    """One OpenAI-compatible upstream (OpenAI, vLLM, Ollama's /v1, LiteLLM…)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    base_url: str = Field(pattern=r"^https?://")
    api_key_env: str | None = None
    timeout_s: float = Field(default=60.0, gt=0)

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class Target(BaseModel):
    """One provider model a call can go to."""

    model_config = ConfigDict(frozen=True)
    provider: str
    model: str
    capabilities: tuple[str, ...] = ALL_CAPABILITIES

    @property
    def name(self) -> str:
        return f"{self.provider}/{self.model}"


class Alias(BaseModel):
    """A model name clients use, routed to provider models in order."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    targets: tuple[str, ...] = ()
    task_classes: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    capabilities: tuple[str, ...] = ALL_CAPABILITIES


class CacheConfig(BaseModel):
    """The exact-match response cache (scope: the caller's fleet)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = True
    ttl_s: float = Field(default=300.0, gt=0)


class GatewayConfig(BaseModel):
    """The whole gateway file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    providers: dict[str, Provider] = Field(default_factory=dict)
    models: dict[str, Alias] = Field(default_factory=dict)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    principal_budgets: dict[str, Decimal] = Field(default_factory=dict)
    mcp_servers: dict[str, McpServer] = Field(default_factory=dict)
    argument_rules: dict[str, dict[str, str]] = Field(default_factory=dict)
    reservation_ttl_s: float = Field(default=600.0, gt=0)
    _routes: dict[tuple[str, str | None, frozenset[str]], list[Target]] = PrivateAttr(
        default_factory=dict
    )

    @model_validator(mode="after")
    def _targets_name_providers(self) -> GatewayConfig:
        for alias, spec in self.models.items():
            for target in (*spec.targets, *(t for ts in spec.task_classes.values() for t in ts)):
                provider, sep, model = target.partition("/")
                if not sep or not model:
                    raise ValueError(f"models.{alias}: target {target!r} is not provider/model")
                if provider not in self.providers:
                    raise ValueError(f"models.{alias}: provider {provider!r} is not configured")
        return self

    @classmethod
    def load(cls, path: Path | None) -> GatewayConfig:
        """Read the file (``None``: an empty configuration: nothing to route to)."""
        if path is None:
            return cls()
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as e:
            raise InvalidSpec(f"cannot read gateway config {path}: {e.strerror or e}") from e
        except yaml.YAMLError as e:
            raise InvalidSpec(f"gateway config {path} is not valid YAML: {e}") from e
        return cls.from_dict(raw, origin=str(path))

    @classmethod
    def from_dict(cls, raw: Any, origin: str = "gateway config") -> GatewayConfig:
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise InvalidSpec(f"invalid {origin}: {describe_validation_error(e)}") from e

    def target(self, name: str) -> Target | None:
        """``provider/model`` as a target, with capabilities an entry of that name gives it."""
        provider, sep, model = name.partition("/")
        if not sep or provider not in self.providers:
            return None
        spec = self.models.get(name)
        return Target(
            provider=provider,
            model=model,
            capabilities=spec.capabilities if spec else ALL_CAPABILITIES,
        )

    def route(self, requested: str, task_class: str | None, needs: set[str]) -> list[Target]:
        """The targets a request for ``requested`` tries, in order (empty: none serves it)."""
        key = (requested, task_class, frozenset(needs))
        routes = self._routes
        found = routes.get(key)
        if found is None:
            if len(routes) > 10_000:  # names come from callers: keep the memo bounded
                routes.clear()
            found = routes[key] = self._route(requested, task_class, needs)
        return found

    def _route(self, requested: str, task_class: str | None, needs: set[str]) -> list[Target]:
        alias = self.models.get(requested)
        names: tuple[str, ...]
        if alias is not None and alias.targets:
            names = alias.task_classes.get(task_class or "", alias.targets)
        elif "/" in requested:
            names = (requested,)
        else:
            names = ()
        targets = [t for t in (self.target(n) for n in names) if t is not None]
        return [t for t in targets if needs <= set(t.capabilities)]

    def listed(self) -> list[str]:
        """Model names ``GET /v1/models`` shows: aliases with targets, then targets."""
        aliases = [name for name, spec in self.models.items() if spec.targets]
        targets = {t for spec in self.models.values() for t in spec.targets}
        return aliases + sorted(targets - set(aliases))


class McpServer(BaseModel):
    """An MCP server behind the gateway: a stdio command, or a Streamable HTTP URL."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    command: list[str] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    url: str | None = Field(default=None, pattern=r"^https?://")

    @model_validator(mode="after")
    def _one_transport(self) -> McpServer:
        if (self.command is None) == (self.url is None):
            raise ValueError("an MCP server needs exactly one of 'command' or 'url'")
        return self


GatewayConfig.model_rebuild()
