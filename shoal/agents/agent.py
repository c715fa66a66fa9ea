"""Declaring an agent: identity, capability manifest, tools, and typed async task handlers.

.. code-block:: python

    agent = Agent("summarizer", fleet="docs", version="1.2", manifest=manifest, tools=[read_file])

    class In(BaseModel):
        path: str

    class Out(BaseModel):
        summary: str

    @agent.handler("summarize")
    async def summarize(ctx: TaskContext, task: In) -> Out:
        text = await ctx.tools.call("read_file", path=task.path)
        answer = await ctx.model.complete(text, system="Summarise the document.")
        return Out(summary=answer.text)

The handler's second parameter's annotation (a pydantic model, or ``dict``) validates the
task input; a task whose input fails validation is dead-lettered, not retried. The return
value (a pydantic model or a dict) becomes ``task.completed``'s ``output``.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_type_hints

from pydantic import BaseModel, TypeAdapter

from shoal.agents.tools import Tool
from shoal.bus import check_token
from shoal.schemas.manifest import CapabilityManifest

if TYPE_CHECKING:
    from shoal.agents.context import TaskContext

__all__ = ["Agent", "GoalHandler", "Handler"]

HandlerFn = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Handler:
    """One capability: the function and the adapter that validates its input."""

    capability: str
    fn: HandlerFn
    input: TypeAdapter[Any]

    def parse(self, raw: dict[str, Any]) -> Any:
        """Validate the task input (raises pydantic's ValidationError)."""
        return self.input.validate_python(raw)


GoalHandler = Callable[["TaskContext", Any], Awaitable[Any]]
"""``async def on_goal(ctx, goal: GoalSubmitted) -> GoalOutcome``, for orchestrators."""


class Agent:
    """A declared agent: name, fleet, version, manifest, tools and handlers by capability."""

    def __init__(
        self,
        name: str,
        *,
        fleet: str,
        version: str = "0",
        manifest: CapabilityManifest | None = None,
        tools: Iterable[Tool] = (),
        description: str = "",
    ) -> None:
        self.name = check_token(name, "agent")
        self.fleet = check_token(fleet, "fleet")
        self.version = version
        self.manifest = manifest or CapabilityManifest()
        self.tools: dict[str, Tool] = {t.name: t for t in tools}
        self.description = description
        self.handlers: dict[str, Handler] = {}
        self.goal_handler: GoalHandler | None = None

    @property
    def capabilities(self) -> list[str]:
        """The capabilities this agent serves (``goals`` stands for the fleet's goal subject)."""
        return [*self.handlers, *(["goals"] if self.goal_handler else [])]

    def handler(self, capability: str | None = None) -> Callable[[HandlerFn], HandlerFn]:
        """Register an async task handler for ``capability`` (default: the function's name)."""

        def register(fn: HandlerFn) -> HandlerFn:
            cap = check_token(capability or fn.__name__, "capability")
            self.handlers[cap] = Handler(cap, fn, TypeAdapter(_input_type(fn)))
            return fn

        return register

    def on_goal(self, fn: GoalHandler) -> GoalHandler:
        """Register the fleet's goal handler: this agent then consumes ``<p>.goals.<fleet>``."""
        self.goal_handler = fn
        return fn

    def bound(self, *, fleet: str, name: str) -> Agent:
        """This declaration running as ``fleet``/``name`` (itself if nothing changes)."""
        if fleet == self.fleet and name == self.name:
            return self
        clone = copy.copy(self)
        clone.fleet, clone.name = check_token(fleet, "fleet"), check_token(name, "agent")
        return clone

    def with_manifest(self, manifest: CapabilityManifest) -> Agent:
        """This declaration with ``manifest`` in place of its own (a fleet spec's override)."""
        clone = copy.copy(self)
        clone.manifest = manifest
        return clone

    def add_tool(self, tool: Tool) -> None:
        self.tools[tool.name] = tool

    def __repr__(self) -> str:
        return f"Agent({self.name!r}, fleet={self.fleet!r}, capabilities={self.capabilities})"


def _input_type(fn: HandlerFn) -> Any:
    params = list(inspect.signature(fn).parameters)
    if len(params) < 2:
        raise TypeError(f"handler {fn.__name__} must take (ctx, input)")
    try:
        hints = get_type_hints(fn)
    except Exception:  # unresolvable forward refs: validate as a plain dict
        hints = {}
    return hints.get(params[1], dict[str, Any])


def to_output(value: Any) -> dict[str, Any]:
    """A handler's return value as the ``output`` object of ``task.completed``."""
    if value is None:
        return {}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return value
    return {"result": value}
