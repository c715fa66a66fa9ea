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
from functools import cached_property
from typing import TYPE_CHECKING, Any

from shoal.agents.digest import arguments_digest
from shoal.agents.errors import (
    ApprovalDenied,
    ApprovalRequired,
    ModelError,
    PolicyDenied,
    ToolFailed,
)
from shoal.agents.gateway_model import caller_headers
from shoal.agents.models import ChatMessage, ChatRequest, Completion, ModelClient
from shoal.agents.policy import Action, Policy
from shoal.agents.session import Emitter, Session
from shoal.agents.toolrecord import ToolCallRecord
from shoal.agents.tools import Tool, ToolEnv
from shoal.bus.genai import Attributes, Call, ChatCall, GenAI, ToolCall, session_attributes
from shoal.policy import prompt_arguments
from shoal.schemas import ModelCalled, new_id
from shoal.schemas.manifest import ToolGrant

if TYPE_CHECKING:
    from shoal.agents.mcp_tools import McpGatewayTools

__all__ = ["ModelGateway", "ToolGateway", "redact", "redact_error", "span_attributes"]


SENSITIVE = ("confidential", "secret")
"""Sensitivities whose tool errors never leave the gateway as the tool's own text."""


class ModelGateway:
    """Model calls for one session: checked, made, recorded."""

    def __init__(
        self,
        policy: Policy,
        emitter: Emitter,
        clients: Sequence[ModelClient],
        session: Session,
        genai: GenAI | None = None,
    ) -> None:
        self.policy = policy
        self.emitter = emitter
        self.clients = clients
        self.session = session
        self.genai = genai or GenAI.disabled()

    @cached_property
    def span_attrs(self) -> Attributes:
        """The session's span attributes, built on the first traced call (never if off)."""
        return span_attributes(self.policy, self.session) if self.genai.enabled else {}

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
        with self.genai.chat(model, self.span_attrs) as call:
            return await self._complete(call, messages, model, system, max_tokens, json_mode)

    async def _complete(
        self,
        call: ChatCall,
        messages: Sequence[ChatMessage] | str,
        model: str,
        system: str | None,
        max_tokens: int,
        json_mode: bool,
    ) -> Completion:
        if isinstance(messages, str):
            messages = [ChatMessage("user", messages)]
        if system is not None:
            messages = [ChatMessage("system", system), *messages]
        prompt = prompt_arguments(
            [{"role": m.role, "content": m.content} for m in messages], self.policy.digest_key
        )
        await checked(self.policy, self.session, call, "model.call", model, prompt)
        caller = caller_headers(self.session)  # read by a gateway client, ignored by others
        request = ChatRequest(
            model, tuple(messages), max_tokens, json_mode=json_mode, caller=caller
        )
        client = next((c for c in self.clients if c.serves(model)), None)
        if client is None:
            raise ModelError(f"no model client serves {model!r} (set SHOAL_MODEL_BASE_URL?)")
        call.provider(client.provider)
        started = time.perf_counter()
        try:
            completion = await client.complete(request)
        except PolicyDenied:
            raise  # the gateway refused it, and recorded that itself
        except Exception as e:
            if getattr(client, "records_calls", False):
                raise  # a gateway recorded the failed call itself: no second row
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
        if completion.provider != client.provider:  # a gateway names the provider it chose
            call.provider(completion.provider)
        call.response(
            model=completion.model,
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            finish_reason=completion.finish_reason,
            cost_usd=completion.cost_usd,
        )
        if completion.recorded:  # the gateway recorded it, from the upstream's own usage
            return completion
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
        genai: GenAI | None = None,
        mcp: McpGatewayTools | None = None,
    ) -> None:
        self.policy = policy
        self.emitter = emitter
        self.tools = tools
        self.mcp = mcp  # the MCP gateway, for tools this agent does not implement itself
        self.env = env
        self.session = session
        self.timeout_s = timeout_s
        self.genai = genai or GenAI.disabled()

    @cached_property
    def span_attrs(self) -> Attributes:
        """The session's span attributes, built on the first traced call (never if off)."""
        return span_attributes(self.policy, self.session) if self.genai.enabled else {}

    async def call(self, name: str, /, **arguments: Any) -> Any:
        """Run tool ``name`` with ``arguments``; raise what the tool raised, after recording."""
        call_id = new_id()  # the same id on the span and on tool.called
        with self.genai.execute_tool(name, self.span_attrs, call_id=call_id) as call:
            return await self._call(call, call_id, name, arguments)

    async def _call(
        self, call: ToolCall, call_id: str, name: str, arguments: dict[str, Any]
    ) -> Any:
        impl = self.tools.get(name)
        if impl is None and self.mcp is not None:
            # Not one of this agent's Python tools: an MCP server's, behind the MCP gateway,
            # which checks, records and refuses by itself (one enforcement point).
            return await self.mcp.call(call, name, arguments, self.session)
        grant = self.policy.manifest.grant(name)
        await checked(
            self.policy,
            self.session,
            call,
            "tool.call",
            name,
            arguments,
            display=redact(arguments, grant) if grant is not None else None,
            sensitivity=grant.sensitivity if grant is not None else None,
            side_effects=grant.side_effects if grant is not None else (),
        )
        assert grant is not None  # the policy check refused tools without a grant
        if impl is None:
            raise PolicyDenied(
                f"tool {name!r} is granted but {self.policy.identity.agent} has no implementation",
                rule="tool.missing",
                target=name,
            )
        redacted = redact(arguments, grant)
        call.arguments(redacted)
        record = ToolCallRecord(
            call_id,
            name,
            impl.version,
            redacted,
            grant,
            tuple(impl.side_effects),
            arguments_digest(self.env.digest_key, self.session.iid, name, arguments),
        )
        hidden: ToolFailed | None = None
        result: Any = None
        try:
            result = await asyncio.wait_for(impl.fn(self.env, **arguments), self.timeout_s)
        except TimeoutError as e:
            record.ended("timeout", f"no result within {self.timeout_s:g}s")
            raise TimeoutError(f"tool {name}: {record.error}") from e
        except Exception as e:
            error = redact_error(e, arguments, grant)[:500]
            record.ended("error", error)
            if grant.sensitivity in SENSITIVE or error != f"{type(e).__name__}: {e}"[:500]:
                # The handler gets the redacted text too, raised below, outside this block
                # (so no __context__ leads back to the original).
                hidden = ToolFailed(
                    f"tool {name} failed: {error}", tool=name, error_type=type(e).__name__
                )
            else:
                raise
        finally:
            await self.emitter.emit(record.event(), self.session)
        if hidden is not None:
            raise hidden
        call.result(result, grant.sensitivity)
        return result


async def checked(
    policy: Policy,
    session: Session,
    call: Call,
    action: Action,
    target: str,
    arguments: dict[str, Any] | None = None,
    **facts: Any,
) -> None:
    """The policy check, with its decision recorded on the call's span (refusals counted)."""
    try:
        await policy.check(session, action, target, arguments, **facts)
    except (ApprovalRequired, ApprovalDenied) as e:
        call.decided("needs_approval", e.rule)  # it waited for a human, who did not grant it
        raise
    except PolicyDenied as e:
        call.decided("deny", e.rule)
        raise
    call.decided("allow")


def span_attributes(policy: Policy, session: Session) -> Attributes:
    """The attributes every span of ``session`` carries, as this instance runs it."""
    ident = policy.identity
    return session_attributes(
        iid=session.iid,
        fleet=ident.fleet,
        agent=ident.agent,
        instance=ident.instance,
        gid=session.gid,
        parentiid=session.parentiid,
        principal=session.principal,
        version=ident.version,
    )


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


def redact_error(error: BaseException, arguments: Mapping[str, Any], grant: ToolGrant) -> str:
    """A tool's error as ``tool.called`` (and what it raises) may carry it, by sensitivity.

    The same rules as :func:`redact`: ``public``/``internal`` as given, minus the values of
    arguments named in ``grant.redact``; ``confidential`` the type and the text's length;
    ``secret`` the type only. The exception's class name is never secret.
    """
    kind, text = type(error).__name__, str(error)
    if grant.sensitivity == "secret":
        return f"{kind}: [redacted]"
    if grant.sensitivity == "confidential":
        return f"{kind}: [redacted {len(text)} chars]"
    for key in grant.redact:
        value = str(arguments.get(key, ""))
        if value:
            text = text.replace(value, f"[redacted {key}]")
    return f"{kind}: {text}"


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
