"""One tool call's ledger row (``tool.called``), as every tool gateway records it.

The SDK's in-process tool gateway (:class:`shoal.agents.gateways.ToolGateway`) and the MCP
gateway (:mod:`shoal.gateway.mcp`) both start a :class:`ToolCallRecord` once a call is
allowed, note how it ended, and emit :meth:`ToolCallRecord.event` whatever happened: the row
has one shape and one timing rule, wherever the tool ran.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from shoal.schemas import ToolCalled
from shoal.schemas.manifest import ToolGrant

__all__ = ["ToolCallRecord"]

ResultClass = Literal["ok", "error", "timeout"]


@dataclass
class ToolCallRecord:
    """A granted call in progress: its identity and arguments (already redacted by the
    grant's sensitivity), then how it ended."""

    call_id: str
    tool: str
    version: str
    arguments: dict[str, Any]
    grant: ToolGrant
    side_effects: tuple[str, ...] = ()
    arguments_digest: str | None = None
    result_class: ResultClass = "ok"
    error: str | None = None
    started: float = field(default_factory=time.perf_counter)

    def ended(self, result_class: ResultClass, error: str) -> None:
        """The call did not succeed: why (already redacted), truncated for the log."""
        self.result_class, self.error = result_class, error[:500]

    def event(self) -> ToolCalled:
        """The ``tool.called`` of this call, timed up to now."""
        return ToolCalled(
            call_id=self.call_id,
            tool=self.tool,
            version=self.version,
            arguments=self.arguments,
            sensitivity=self.grant.sensitivity,
            result_class=self.result_class,
            latency_ms=round((time.perf_counter() - self.started) * 1000, 3),
            side_effects=list(self.side_effects or self.grant.side_effects),
            error=self.error,
            arguments_digest=self.arguments_digest,
        )
