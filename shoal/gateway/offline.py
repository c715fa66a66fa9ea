"""An OpenAI-compatible upstream that answers with the offline model's rules.

For the demo and tests without a network, and as the benches' upstream: ``POST
/v1/chat/completions`` (plain and ``stream: true`` with ``stream_options.include_usage``),
``GET /v1/models``. Usage is what :class:`~shoal.agents.models.OfflineModelClient` computes;
``cached_tokens`` reports a fixed share of the prompt as cached (to exercise cached pricing).
``fail`` maps a model name to an HTTP status it answers with (fallback tests); ``requests``
counts what reached it, so a test can show a refused call never did.

:func:`offline_gateway` puts a gateway in front of one (both in this process): what
``shoal demo`` runs its model calls through, so the demo's ``model.called`` are the
gateway's records, as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from shoal.agents.models import ChatMessage, ChatRequest, OfflineModelClient

if TYPE_CHECKING:
    from shoal.bus import Bus
    from shoal.bus.genai import GenAI
    from shoal.gateway.service import RunningGateway

__all__ = ["OFFLINE_MODELS", "OfflineUpstream", "offline_gateway", "serve_offline_upstream"]

OFFLINE_MODELS = ("offline-small", "offline-large")
"""The offline models :func:`offline_gateway` serves under their own names."""


@dataclass
class OfflineUpstream:
    """The fake provider's behaviour and what it saw."""

    cached_share: float = 0.0
    fail: dict[str, int] = field(default_factory=dict)
    delay_s: float = 0.0
    requests: Counter[str] = field(default_factory=Counter)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    keep_bodies: bool = True
    client: OfflineModelClient = field(default_factory=OfflineModelClient)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        return app

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        model = str(body.get("model"))
        self.requests[model] += 1
        if self.keep_bodies:
            self.bodies.append(body)
        if model in self.fail:
            return web.json_response(
                {"error": {"message": "upstream failure", "type": "server_error", "code": None}},
                status=self.fail[model],
            )
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        messages = tuple(
            ChatMessage(m.get("role", "user"), _text(m.get("content"))) for m in body["messages"]
        )
        max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 512)
        done = await self.client.complete(ChatRequest(model, messages, max_tokens))
        cached = int(done.input_tokens * self.cached_share)
        usage = {
            "prompt_tokens": done.input_tokens,
            "completion_tokens": done.output_tokens,
            "total_tokens": done.input_tokens + done.output_tokens,
            "prompt_tokens_details": {"cached_tokens": cached},
        }
        reply_id, created = f"chatcmpl-{self.requests.total()}", int(time.time())
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": reply_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": done.text},
                            "finish_reason": done.finish_reason,
                        }
                    ],
                    "usage": usage,
                }
            )
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        base = {
            "id": reply_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        words = done.text.split(" ")
        for n, word in enumerate(words):
            delta: dict[str, Any] = {"content": word if n == 0 else " " + word}
            if n == 0:
                delta["role"] = "assistant"
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            await out.write(f"data: {json.dumps(chunk)}\n\n".encode())
        last = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": done.finish_reason}]}
        await out.write(f"data: {json.dumps(last)}\n\n".encode())
        if (body.get("stream_options") or {}).get("include_usage"):
            await out.write(
                f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n".encode()
            )
        await out.write(b"data: [DONE]\n\n")
        await out.write_eof()
        return out


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


@contextlib.asynccontextmanager
async def serve_offline_upstream(
    upstream: OfflineUpstream | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[tuple[str, OfflineUpstream]]:
    """Run it; yield its base URL (``http://host:port/v1``) and the upstream object."""
    upstream = upstream or OfflineUpstream()
    runner = web.AppRunner(upstream.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        yield f"http://{host}:{runner.addresses[0][1]}/v1", upstream
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def offline_gateway(
    bus: Bus, *, latency_s: float = 0.0, genai: GenAI | None = None
) -> AsyncIterator[RunningGateway]:
    """A gateway on a free port in front of an offline upstream answering after
    ``latency_s``: the models of :data:`OFFLINE_MODELS`, priced by the core's table."""
    from shoal.gateway.config import GatewayConfig
    from shoal.gateway.service import run_gateway

    upstream = OfflineUpstream(delay_s=latency_s, keep_bodies=False)
    async with serve_offline_upstream(upstream) as (url, _):
        config = GatewayConfig.from_dict(
            {
                "providers": {"offline": {"base_url": url, "timeout_s": 30}},
                "models": {m: {"targets": [f"offline/{m}"]} for m in OFFLINE_MODELS},
                # Every run calls the model: a demo run again shows its own calls and cost.
                "cache": {"enabled": False},
            }
        )
        async with run_gateway(bus, config, genai=genai) as running:
            yield running
