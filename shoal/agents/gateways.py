"""The model gateway and the tool gateway: the only ways a handler reaches models and tools.

Each call path is one method (:meth:`ModelGateway.complete`, :meth:`ToolGateway.call`):
policy check first (:class:`~shoal.agents.policy.Policy`; a refused call never reaches the
model or tool), then the call, timed, then ``model.called`` / ``tool.called`` on the event
log — also when the call failed, with the error. Tracing wraps these two methods.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from shoal.agents.errors import ModelError, PolicyDenied
from shoal.agents.models import ChatMessage, ChatRequest, Completion, ModelClient
from shoal.agents.policy import Policy
from shoal.agents.session import Emitter, Session
from shoal.agents.tools import Tool, ToolEnv
from shoal.schemas import ModelCalled, ToolCalled, new_id
from shoal.schemas.manifest import ToolGrant

__all__ = ["ModelGateway", "ToolGateway", "redact"]


class ModelGateway:
    """Model calls for one session: checked, made, recorded."""

    def __init__(
        self,
        policy: Policy,
        emitter: Emitter,
        clients: Sequence[ModelClient],
        session: Session,
    ) -> None:
        self.policy = policy
        self.emitter = emitter
        self.clients = clients
        self.session = session

    @property
    def default_model(self) -> str:
        models = self.policy.manifest.models
        if not models:
            raise PolicyDenied(
                f"agent {self.policy.identity.agent} has no model in its manifest",
                rule="manifest.model",
                target="",
            )
        return models[0]

    async def complete(
        self,
        messages: Sequence[ChatMessage] | str,
        *,
        model: str | None = None,
        system: str | None = None,
        max_tokens: int = 512,
        json_mode: bool = False,
    ) -> Completion:
        """Ask ``model`` (default: the manifest's first) and return its completion."""
        model = model or self.default_model
        await self.policy.check(self.session, "model.call", model)
        if isinstance(messages, str):
            messages = [ChatMessage("user", messages)]
        if system is not None:
            messages = [ChatMessage("system", system), *messages]
        request = ChatRequest(model, tuple(messages), max_tokens, json_mode=json_mode)
        client = next((c for c in self.clients if c.serves(model)), None)
        if client is None:
            raise ModelError(f"no model client serves {model!r} (set SHOAL_MODEL_BASE_URL?)")
        started = time.perf_counter()
        try:
            completion = await client.complete(request)
        except Exception as e:
            await self.emitter.emit(
                ModelCalled(
                    call_id=new_id(),
                    model=model,
                    provider=client.provider,
                    input_tokens=0,
                    output_tokens=0,
                    latency_ms=_ms(started),
                    finish_reason="error",
                    error=f"{type(e).__name__}: {e}"[:500],
                ),
                self.session,
            )
            raise
        if completion.cost_usd is not None:
            self.session.spent_usd += completion.cost_usd
        await self.emitter.emit(
            ModelCalled(
                call_id=new_id(),
                model=completion.model,
                provider=completion.provider,
                input_tokens=completion.input_tokens,
                output_tokens=completion.output_tokens,
                cached_tokens=completion.cached_tokens,
                latency_ms=_ms(started),
                finish_reason=completion.finish_reason,
                reported_cost_usd=completion.cost_usd,
            ),
            self.session,
        )
        return completion


class ToolGateway:
    """Tool calls for one session: checked against the manifest, made, recorded redacted."""

    def __init__(
        self,
        policy: Policy,
        emitter: Emitter,
        tools: Mapping[str, Tool],
        env: ToolEnv,
        session: Session,
        timeout_s: float = 30.0,
    ) -> None:
        self.policy = policy
        self.emitter = emitter
        self.tools = tools
        self.env = env
        self.session = session
        self.timeout_s = timeout_s

    async def call(self, name: str, /, **arguments: Any) -> Any:
        """Run tool ``name`` with ``arguments``; raise what the tool raised, after recording."""
        await self.policy.check(self.session, "tool.call", name)
        grant = self.policy.manifest.grant(name)
        assert grant is not None  # the policy check refused tools without a grant
        impl = self.tools.get(name)
        if impl is None:
            raise PolicyDenied(
                f"tool {name!r} is granted but {self.policy.identity.agent} has no implementation",
                rule="tool.missing",
                target=name,
            )
        started = time.perf_counter()
        result_class: Literal["ok", "error", "timeout"] = "ok"
        error: str | None = None
        result: Any = None
        try:
            result = await asyncio.wait_for(impl.fn(self.env, **arguments), self.timeout_s)
        except TimeoutError as e:
            result_class, error = "timeout", f"no result within {self.timeout_s:g}s"
            raise TimeoutError(f"tool {name}: {error}") from e
        except Exception as e:
            result_class, error = "error", f"{type(e).__name__}: {e}"[:500]
            raise
        finally:
            await self.emitter.emit(
                ToolCalled(
                    call_id=new_id(),
                    tool=name,
                    version=impl.version,
                    arguments=redact(arguments, grant),
                    sensitivity=grant.sensitivity,
                    result_class=result_class,
                    latency_ms=_ms(started),
                    side_effects=list(impl.side_effects or grant.side_effects),
                    error=error,
                ),
                self.session,
            )
        return result


def redact(arguments: Mapping[str, Any], grant: ToolGrant) -> dict[str, Any]:
    """Arguments as ``tool.called`` may record them, by the tool's sensitivity.

    ``public``/``internal``: as given (minus names in ``grant.redact``); ``confidential``:
    each value replaced by a marker with its length; ``secret``: only the argument names.
    """
    if grant.sensitivity == "secret":
        return {"_redacted": sorted(arguments)}
    out: dict[str, Any] = {}
    for key, value in arguments.items():
        if grant.sensitivity == "confidential" or key in grant.redact:
            out[key] = f"[redacted {len(str(value))} chars]"
        else:
            out[key] = value if isinstance(value, str | int | float | bool | None) else str(value)
    return out


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
