"""What a chat-completions request asks for: its body checked, its prompt bounded, the
capabilities it needs of a target.

The prompt bound is the UTF-8 size of the messages (and tools) plus 4 tokens a message: a BPE
token is at least one byte, so it is an upper bound of the prompt tokens, and a reservation
of ``prompt bound + max_tokens`` cannot be overrun. A request without ``max_tokens`` gets
:data:`DEFAULT_MAX_TOKENS`, which the gateway forwards so the upstream cannot answer more.
"""

from __future__ import annotations

import json
from typing import Any

from shoal.gateway.errors import GatewayError

__all__ = ["DEFAULT_MAX_TOKENS", "needs", "parse_body", "prompt_bound"]

DEFAULT_MAX_TOKENS = 4096


def prompt_bound(body: dict[str, Any]) -> int:
    """An upper bound of the request's prompt tokens (see the module docstring)."""
    messages = body.get("messages") or []
    size = 3
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else m
        text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
        size += len(text.encode()) + 4
    if body.get("tools"):
        size += len(json.dumps(body["tools"], ensure_ascii=False).encode())
    return size


def needs(body: dict[str, Any]) -> set[str]:
    """What a target must offer: ``chat``, plus ``tools``, ``json``, ``vision`` as used."""
    wanted = {"chat"}
    if body.get("tools"):
        wanted.add("tools")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        wanted.add("json")
    for m in body.get("messages") or []:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list) and any(
            isinstance(p, dict) and p.get("type") == "image_url" for p in content
        ):
            wanted.add("vision")
    return wanted


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a dict, or :class:`GatewayError` (400) naming what is wrong."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise GatewayError.bad_request("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise GatewayError.bad_request("the request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise GatewayError.bad_request("'model' is required", "model")
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise GatewayError.bad_request("'messages' must be a non-empty list", "messages")
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise GatewayError.bad_request(f"'{name}' must be a positive integer", name)
    return body
