"""The model gateway: OpenAI's chat-completions API in front of the configured providers.

Before a call is forwarded, in this order: the key (401), the kill switches (403), the key's
manifest allow-list (403), routing (404 when nothing serves the model), then one
reservation that holds the call's largest possible cost on every budgeted scope and counts
it against the key's rate window (429). A refused call never reaches an upstream and is
recorded as ``policy.decided``. Then the response cache, then the upstream (fallback on 5xx
and timeouts). After the answer is sent, the reservation is settled to the real cost and
``model.called`` recorded from the upstream's own usage, in a background task of the
gateway (the client does not wait for those two writes).

The largest possible cost is ``prompt bound + max_tokens`` at the dearest target's price
(:func:`shoal.gateway.request.prompt_bound`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable
from typing import Any

from aiohttp import web
from opentelemetry import context as context_api

from shoal.agents.killswitch import KillWatcher, kill_keys
from shoal.aggregates.pricing import PriceTable
from shoal.aggregates.trust import GATEWAY_CALL_PREFIX
from shoal.bus.genai import ChatCall, GenAI
from shoal.bus.tracecontext import TRACEPARENT, extract_context
from shoal.gateway.cache import CachedAnswer, ResponseCache, cache_key
from shoal.gateway.caller import Caller
from shoal.gateway.config import GatewayConfig, Target
from shoal.gateway.errors import GatewayError
from shoal.gateway.keys import KeyMirror, VirtualKey
from shoal.gateway.ledger import Hold, Ledger
from shoal.gateway.policy import GatewayPolicy
from shoal.gateway.record import Recorder
from shoal.gateway.request import DEFAULT_MAX_TOKENS, needs, parse_body, prompt_bound
from shoal.gateway.settle import CallSettler
from shoal.gateway.upstream import Answer, Upstreams
from shoal.policy import prompt_arguments
from shoal.schemas import ModelCalled, new_id

__all__ = ["ModelGateway"]

log = logging.getLogger(__name__)


def _error(e: GatewayError) -> web.Response:
    return web.Response(status=e.status, body=e.body(), headers=e.headers())


class ModelGateway:
    """The ``/v1`` routes and the checks before and records after every call."""

    def __init__(
        self,
        *,
        config: GatewayConfig,
        prices: PriceTable,
        kills: KillWatcher,
        keys: KeyMirror,
        ledger: Ledger,
        cache: ResponseCache,
        upstreams: Upstreams,
        recorder: Recorder,
        genai: GenAI,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        policy: GatewayPolicy | None = None,
    ) -> None:
        self.config = config
        self.prices = prices
        self.kills = kills
        self.keys = keys
        self.ledger = ledger
        self.cache = cache
        self.upstreams = upstreams
        self.recorder = recorder
        self.genai = genai
        self.default_max_tokens = default_max_tokens
        self.policy = policy
        self.settler = CallSettler(prices, ledger, recorder)
        self._priced, self._settle = self.settler.priced, self.settler.settle
        self._pending: set[asyncio.Task[None]] = set()
        self.failures = 0  # background records that failed (logged too)

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/healthz", self.health)

    async def drain(self) -> None:
        """Wait for the records and settlements still being written (shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        await self.ledger.flush()

    def later(self, work: Awaitable[None]) -> None:
        """Run ``work`` after the response, tracked so shutdown waits for it."""

        async def guarded() -> None:
            try:
                await work
            except Exception:
                self.failures += 1
                log.exception("a gateway record failed")

        task = asyncio.get_running_loop().create_task(guarded())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    # -- routes -----------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "pending_records": len(self._pending)})

    async def models(self, request: web.Request) -> web.Response:
        try:
            key = await self._key(request)
        except GatewayError as e:
            return _error(e)
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "shoal"}
            for name in self.config.listed()
            if key.manifest.allows_model(name)
        ]
        return web.json_response({"object": "list", "data": data})

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            key = await self._key(request)
            caller = Caller.of(key, request.headers)
            body = parse_body(await request.read())
        except GatewayError as e:
            return _error(e)
        requested: str = body["model"]
        # A caller's trace context (W3C ``traceparent``) parents the call's span and record.
        parent = extract_context(request.headers) if TRACEPARENT in request.headers else None
        token = context_api.attach(parent) if parent is not None else None
        try:
            return await self._chat(request, caller, body, requested, started)
        finally:
            if token is not None:
                context_api.detach(token)

    async def _chat(
        self,
        request: web.Request,
        caller: Caller,
        body: dict[str, Any],
        requested: str,
        started: float,
    ) -> web.StreamResponse:
        attrs = caller.span_attributes() if self.genai.enabled else {}
        with self.genai.chat(requested, attrs) as span:
            call_id = f"{GATEWAY_CALL_PREFIX}{new_id()}"
            try:
                targets, holds = await self._admit(caller, body, requested, call_id)
            except GatewayError as e:
                span.decided("deny", e.rule)
                if e.rule is not None and not e.recorded:
                    await self.recorder.refused(caller, "model.call", requested, e.rule, e.message)
                return _error(e)
            span.decided("allow")
            return await self._call(request, span, caller, body, targets, holds, call_id, started)

    # -- before the call --------------------------------------------------------------------
    async def _key(self, request: web.Request) -> VirtualKey:
        auth = request.headers.get("Authorization", "")
        scheme, _, secret = auth.partition(" ")
        if scheme.lower() != "bearer" or not secret:
            secret = request.headers.get("api-key", "")  # Azure-style clients
        key = await self.keys.authenticate(secret.strip()) if secret else None
        if key is None or key.revoked_at is not None:
            raise GatewayError.bad_key()
        return key

    async def _admit(
        self, caller: Caller, body: dict[str, Any], requested: str, call_id: str
    ) -> tuple[list[Target], list[Hold]]:
        """Kill switches, manifest, routing, then the reservation; raise what refuses."""
        hit = self.kills.match(kill_keys(caller.scope, model=requested))
        if hit is not None:
            key, switch = hit
            why = f"kill switch {key} set by {switch.by}" + (
                f": {switch.reason}" if switch.reason else ""
            )
            raise GatewayError.killed(why, key)
        if not caller.key.manifest.allows_model(requested):
            raise GatewayError.not_granted(
                f"model {requested!r} is not in the manifest of {caller.key.fleet}/"
                f"{caller.key.agent}",
                "model",
            )
        if self.policy is not None:
            prompt = prompt_arguments(body.get("messages"), self.policy.digest_key)
            await self.policy.check(caller, "model.call", requested, prompt)
        routed = self.config.route(requested, caller.task_class, needs(body))
        targets = [t for t in routed if self.kills.match([f"model.{t.model}"]) is None]
        if not targets:
            if routed:
                raise GatewayError.killed(f"every model {requested!r} routes to is killed", "model")
            raise GatewayError.unknown_model(requested)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if max_tokens is None:
            max_tokens = body["max_tokens"] = self.default_max_tokens
        bound = prompt_bound(body)
        amount = max(self.prices.cost(t.model, bound, int(max_tokens)) for t in targets)
        holds = caller.holds(self.prices, self.config)
        refusal = await self.ledger.reserve(call_id, holds, amount)
        if refusal is not None:
            scope = refusal.scope.partition(".")[0]
            if refusal.kind == "rate":
                raise GatewayError.rate_limited(refusal.reason)
            raise GatewayError.over_budget(refusal.reason, scope)
        return targets, holds

    # -- the call ---------------------------------------------------------------------------
    async def _call(
        self,
        request: web.Request,
        span: ChatCall,
        caller: Caller,
        body: dict[str, Any],
        targets: list[Target],
        holds: list[Hold],
        call_id: str,
        started: float,
    ) -> web.StreamResponse:
        stream = bool(body.get("stream"))
        ckey = None
        if self.config.cache.enabled and not stream and not caller.cache_bypass:
            ckey = cache_key(caller.key.fleet, body)
            cached = await self.cache.get(ckey)
            if cached is not None:
                return self._answer_cached(span, caller, holds, cached, call_id, started)
        if stream:
            body = {
                **body,
                "stream_options": {**(body.get("stream_options") or {}), "include_usage": True},
            }
        try:
            answer = await self.upstreams.open(targets, body)
        except GatewayError as e:
            span.fail(e)
            self.later(self._settle(caller, holds, call_id, None, targets[0], started, error=e))
            return _error(e)
        span.provider(answer.target.provider)
        if answer.response.status != 200:  # a 4xx: the request's own fault, relayed as given
            payload = await answer.response.read()
            answer.response.release()
            rejected = GatewayError(
                answer.response.status,
                payload[:200].decode(errors="replace"),
                "upstream",
                "upstream_rejected",
            )
            self.later(
                self._settle(caller, holds, call_id, None, answer.target, started, error=rejected)
            )
            return web.Response(
                status=answer.response.status, body=payload, content_type="application/json"
            )
        if stream:
            return await self._relay(request, span, caller, holds, answer, call_id, started)
        payload = await answer.response.read()
        answer.response.release()
        try:
            reply = json.loads(payload)
            usage = reply.get("usage") or {}
            finish = (reply.get("choices") or [{}])[0].get("finish_reason") or "stop"
        except (ValueError, AttributeError, IndexError):
            bad = GatewayError.upstream(f"{answer.target.name}: malformed reply")
            self.later(
                self._settle(caller, holds, call_id, None, answer.target, started, error=bad)
            )
            return _error(bad)
        cost = self._priced(span, answer.target, usage, finish)
        self.later(
            self._settle(caller, holds, call_id, usage, answer.target, started, finish=finish)
        )
        if ckey is not None:
            self.later(
                self.cache.put(
                    ckey, CachedAnswer(reply, cost, answer.target.model, answer.target.provider)
                )
            )
        headers = {
            "x-shoal-call-id": call_id,
            "x-shoal-cost-usd": str(cost),
            "x-shoal-provider": answer.target.provider,
        }
        return web.Response(body=payload, content_type="application/json", headers=headers)

    def _answer_cached(
        self,
        span: ChatCall,
        caller: Caller,
        holds: list[Hold],
        cached: CachedAnswer,
        call_id: str,
        started: float,
    ) -> web.Response:
        span.provider("cache")
        span.response(model=cached.model, input_tokens=0, output_tokens=0, cost_usd=0)
        finish = (cached.body.get("choices") or [{}])[0].get("finish_reason") or "stop"
        data = ModelCalled(
            call_id=call_id,
            model=cached.model,
            provider="cache",
            input_tokens=0,
            output_tokens=0,
            latency_ms=_ms(started),
            finish_reason=finish,
            reported_cost_usd=cached.cost_usd,
        )

        async def after() -> None:
            await asyncio.gather(
                self.ledger.settle(call_id, holds, None, lazy=True),
                self.recorder.emit(data, caller),
            )

        self.later(after())
        headers = {"x-shoal-call-id": call_id, "x-shoal-cost-usd": "0", "x-shoal-provider": "cache"}
        return web.json_response(cached.body, headers=headers)

    async def _relay(
        self,
        request: web.Request,
        span: ChatCall,
        caller: Caller,
        holds: list[Hold],
        answer: Answer,
        call_id: str,
        started: float,
    ) -> web.StreamResponse:
        """Pass the upstream's SSE through as it comes, watching for usage and finish."""
        out = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await out.prepare(request)
        usage: dict[str, Any] | None = None
        finish = "stop"
        error: GatewayError | None = None
        try:
            async for line in answer.response.content:
                await out.write(line)
                if not line.startswith(b"data: {"):
                    continue
                try:
                    chunk = json.loads(line[6:])
                except ValueError:
                    continue
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or ():
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
            await out.write_eof()
        except (ConnectionError, TimeoutError) as e:
            error = GatewayError.upstream(f"stream ended early: {type(e).__name__}: {e}")
        finally:
            answer.response.release()
        if error is None and usage is None:
            error = GatewayError.upstream(f"{answer.target.name}: the stream reported no usage")
        if usage is not None:
            self._priced(span, answer.target, usage, finish)
        self.later(
            self._settle(caller, holds, call_id, usage, answer.target, started, finish, error)
        )
        return out


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
