"""An OpenAI-compatible chat-completions client over httpx.

Works against OpenAI, vLLM, Ollama (``/v1``) and LiteLLM: they all accept
``POST <base_url>/chat/completions`` with ``model`` and ``messages`` and answer with
``choices[0].message.content`` and ``usage``. Every failure becomes :class:`ModelError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shoal.agents.errors import ModelError
from shoal.agents.models import ChatRequest, Completion

if TYPE_CHECKING:  # imported on first use: instances without an HTTP model never load httpx
    import httpx

__all__ = ["OpenAICompatibleClient", "chat_body", "parse_completion"]


def chat_body(request: ChatRequest) -> dict[str, Any]:
    """The chat-completions request body for ``request``."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
    }
    if request.json_mode:
        body["response_format"] = {"type": "json_object"}
    return body


def parse_completion(
    response: httpx.Response, request: ChatRequest, provider: str, where: str
) -> Completion:
    """A chat-completions reply as a :class:`Completion`; :class:`ModelError` if malformed."""
    try:
        payload = response.json()
        choice = payload["choices"][0]
        usage = payload.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        return Completion(
            text=choice["message"].get("content") or "",
            model=payload.get("model") or request.model,
            provider=provider,
            input_tokens=int(usage.get("prompt_tokens", 0)),
            output_tokens=int(usage.get("completion_tokens", 0)),
            cached_tokens=int(details.get("cached_tokens") or 0),
            finish_reason=choice.get("finish_reason") or "stop",
        )
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise ModelError(f"{where}: malformed reply: {e!r}") from e


@dataclass
class OpenAICompatibleClient:
    """Chat completions at ``base_url`` (e.g. ``https://api.openai.com/v1``) for ``model``."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 60.0
    provider: str = "openai"
    _http: httpx.AsyncClient | None = field(default=None, init=False, repr=False)

    def serves(self, model: str) -> bool:
        return model == self.model

    def _client(self) -> httpx.AsyncClient:
        import httpx

        if self._http is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._http = httpx.AsyncClient(
                base_url=self.base_url.rstrip("/") + "/",
                headers=headers,
                timeout=httpx.Timeout(self.timeout_s),
            )
        return self._http

    async def complete(self, request: ChatRequest) -> Completion:
        import httpx

        try:
            response = await self._client().post("chat/completions", json=chat_body(request))
        except httpx.TimeoutException as e:
            raise ModelError(f"{self.base_url}: no answer within {self.timeout_s:g}s") from e
        except httpx.HTTPError as e:
            raise ModelError(f"{self.base_url}: {type(e).__name__}: {e}") from e
        if response.status_code != 200:
            raise ModelError(f"{self.base_url}: HTTP {response.status_code}: {response.text[:200]}")
        return self._parse(response, request)

    def _parse(self, response: httpx.Response, request: ChatRequest) -> Completion:
        return parse_completion(response, request, self.provider, self.base_url)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
