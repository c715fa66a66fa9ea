"""Tool declarations: a name, a version, and an async function the tool gateway calls.

A tool function takes a :class:`ToolEnv` (settings and the sandbox root) and keyword
arguments, and returns something JSON-able. Tools are declared with :func:`tool` and given
to an :class:`~shoal.agents.agent.Agent`; whether a handler may call one is the manifest's
decision, taken by the gateway before the function runs.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.agents.digest import load_digest_key
from shoal.bus import ShoalSettings

__all__ = ["Tool", "ToolEnv", "ToolFn", "tool"]


@dataclass(frozen=True)
class ToolEnv:
    """What a tool may rely on: the settings, and the directory file tools are confined to.

    ``digest_key`` keys the argument digests the tool gateway records
    (:mod:`shoal.agents.digest`); built directly, an env has a random key of its own.
    """

    settings: ShoalSettings
    workspace: Path
    digest_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    @classmethod
    def for_settings(cls, settings: ShoalSettings) -> ToolEnv:
        workspace = settings.workspace_dir or settings.data_dir / "workspace"
        return cls(settings, workspace.resolve(), load_digest_key(settings))


ToolFn = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Tool:
    """A callable tool: ``fn(env, **arguments)``; ``side_effects`` name what it changes."""

    name: str
    fn: ToolFn
    version: str = "1"
    description: str = ""
    side_effects: tuple[str, ...] = ()


def tool(
    name: str, *, version: str = "1", side_effects: tuple[str, ...] = ()
) -> Callable[[ToolFn], Tool]:
    """Decorator: turn ``async def fn(env, **kwargs)`` into a :class:`Tool`."""

    def wrap(fn: ToolFn) -> Tool:
        doc = (fn.__doc__ or "").strip().splitlines()
        return Tool(name, fn, version, doc[0] if doc else "", side_effects)

    return wrap
