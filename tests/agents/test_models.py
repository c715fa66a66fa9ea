"""Model clients: the offline rules, and the OpenAI-compatible client against a local server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from shoal.agents import (
    Agent,
    AgentRuntime,
    CapabilityManifest,
    ChatMessage,
    ChatRequest,
    ModelError,
    OfflineModelClient,
    OpenAICompatibleClient,
    TaskContext,
)
from shoal.agents.models import count_tokens
from shoal.aggregates.pricing import PriceTable
from shoal.bus import Bus
from shoal.schemas import ModelCalled
from tests.agents.conftest import of_type, submit_task, wait_events

pytestmark = pytest.mark.timeout(30)


class FakeOpenAI(BaseHTTPRequestHandler):
    """Answers ``POST /v1/chat/completions`` like the OpenAI API; records what it got."""

    requests: list[dict[str, Any]] = []
    status = 200
    body: bytes | None = None

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        request = json.loads(self.rfile.read(length))
        FakeOpenAI.requests.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), "json": request}
        )
        last = request["messages"][-1]["content"]
        payload = (
            self.body
            or json.dumps(
                {
                    "id": "chatcmpl-1",
                    "model": request["model"] + "-2024",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": f"echo: {last}"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": 21,
                        "completion_tokens": 7,
                        "prompt_tokens_details": {"cached_tokens": 16},
                    },
                }
            ).encode()
        )
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def openai_url() -> Iterator[str]:
    FakeOpenAI.requests, FakeOpenAI.status, FakeOpenAI.body = [], 200, None
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def request(text: str, model: str = "gpt-test") -> ChatRequest:
    return ChatRequest(model, (ChatMessage("system", "be brief"), ChatMessage("user", text)), 64)


async def test_openai_client_posts_chat_completions_and_reads_usage(openai_url: str) -> None:
    client = OpenAICompatibleClient(openai_url, "gpt-test", api_key="sk-123")
    completion = await client.complete(request("hello"))
    await client.aclose()
    assert completion.text == "echo: hello"
    assert (completion.model, completion.provider, completion.finish_reason) == (
        "gpt-test-2024",
        "openai",
        "stop",
    )
    assert (completion.input_tokens, completion.output_tokens, completion.cached_tokens) == (
        21,
        7,
        16,
    )
    [sent] = FakeOpenAI.requests
    assert sent["path"] == "/v1/chat/completions"
    assert sent["auth"] == "Bearer sk-123"
    assert sent["json"] == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello"},
        ],
        "max_tokens": 64,
        "temperature": 0.0,
    }


async def test_openai_client_turns_an_http_error_into_model_error(openai_url: str) -> None:
    FakeOpenAI.status, FakeOpenAI.body = 429, b'{"error": {"message": "rate limited"}}'
    client = OpenAICompatibleClient(openai_url, "gpt-test")
    with pytest.raises(ModelError, match=r"HTTP 429: .*rate limited"):
        await client.complete(request("hello"))
    await client.aclose()


async def test_openai_client_turns_a_malformed_reply_into_model_error(openai_url: str) -> None:
    FakeOpenAI.body = b'{"choices": []}'
    client = OpenAICompatibleClient(openai_url, "gpt-test")
    with pytest.raises(ModelError, match="malformed reply"):
        await client.complete(request("hello"))
    await client.aclose()


async def test_unreachable_endpoint_is_a_model_error() -> None:
    client = OpenAICompatibleClient("http://127.0.0.1:9/v1", "gpt-test", timeout_s=2)
    with pytest.raises(ModelError, match=r"127\.0\.0\.1:9"):
        await client.complete(request("hello"))
    await client.aclose()


async def test_model_gateway_records_the_endpoints_usage(bus: Bus, openai_url: str) -> None:
    settings = bus.settings.model_copy(
        update={"model_base_url": openai_url, "model_name": "gpt-test", "model_api_key": "k"}
    )
    fbus = Bus(bus.nc, settings)
    agent = Agent("asker", fleet="llm", manifest=CapabilityManifest(models=("gpt-test",)))

    @agent.handler("ask")
    async def ask(ctx: TaskContext, task: dict[str, str]) -> dict[str, str]:
        return {"answer": (await ctx.model.complete(task["q"])).text}

    async with AgentRuntime(fbus, agent).running():
        task = await submit_task(fbus, "llm", "ask", {"q": "why?"})
        events = await wait_events(
            fbus,
            fbus.subjects.session_events(task.iid),
            lambda e: len(of_type(e, "task.completed")),
        )
    [called] = [e.data for e in of_type(events, "model.called")]
    assert isinstance(called, ModelCalled)
    assert (called.model, called.provider, called.input_tokens, called.output_tokens) == (
        "gpt-test-2024",
        "openai",
        21,
        7,
    )
    assert (called.cached_tokens, called.reported_cost_usd) == (16, None)
    done = of_type(events, "task.completed")[0]
    assert done is not None and done.data.output == {"answer": "echo: why?"}  # type: ignore[attr-defined]


async def test_offline_client_plans_one_task_per_item() -> None:
    client = OfflineModelClient()
    prompt = "Goal: x\nCapability: summarize\nInput key: path\nItems:\n- a.md\n- b.md"
    completion = await client.complete(
        ChatRequest(
            "offline-small",
            (ChatMessage("system", "You are a planner."), ChatMessage("user", prompt)),
        )
    )
    assert json.loads(completion.text) == {
        "tasks": [
            {"capability": "summarize", "input": {"path": "a.md"}},
            {"capability": "summarize", "input": {"path": "b.md"}},
        ]
    }
    assert completion.input_tokens == count_tokens("You are a planner.") + count_tokens(prompt) + 11
    assert completion.output_tokens == count_tokens(completion.text)


async def test_offline_client_summarises_and_prices_the_call() -> None:
    text = "# Title\nFirst sentence here. Second one.\n<!-- hidden -->"
    completion = await OfflineModelClient().complete(
        ChatRequest(
            "offline-small", (ChatMessage("system", "Summarise"), ChatMessage("user", text))
        )
    )
    assert completion.text == "Title: First sentence here. (10 words)"
    assert (completion.input_tokens, completion.output_tokens) == (28, 10)
    # 28 tokens at $0.10/M in + 10 tokens at $0.40/M out: the core's table
    assert completion.cost_usd == Decimal("0.0000068")


@pytest.mark.parametrize("model", ["offline-small", "offline-large"])
async def test_offline_estimate_is_the_core_price_for_every_offline_model(model: str) -> None:
    core = PriceTable.load()
    completion = await OfflineModelClient().complete(
        ChatRequest(model, (ChatMessage("user", "hello " * 50),))
    )
    assert core.is_listed(model)  # priced by its own entry, never by "*"
    expected = core.cost(model, completion.input_tokens, completion.output_tokens)
    assert completion.cost_usd == expected
    assert completion.cost_usd != core.cost("*", completion.input_tokens, completion.output_tokens)
