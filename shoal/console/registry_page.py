"""The registry page: every registered version with its lifecycle state and a link to each
agent's A2A card, read from the registry service over NATS (filters: text, state)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from shoal.console.cards import ask_registry
from shoal.console.web import console_of, render, require
from shoal.errors import ShoalError
from shoal.schemas.registry import LIFECYCLE

__all__ = ["registry"]


async def registry(request: Request) -> Response:
    await require(request)
    text = request.query_params.get("q", "")[:200]
    state = request.query_params.get("state", "")
    body = {"text": text, "state": state if state in LIFECYCLE else None}
    error = ""
    try:
        rows = (await ask_registry(console_of(request).bus, "ls", body))["rows"]
    except ShoalError as e:
        rows, error = [], str(e)
    context = {
        "active": "registry",
        "rows": rows,
        "q": text,
        "state": body["state"] or "",
        "states": LIFECYCLE,
        "error": error,
    }
    return render(request, "registry.html", context)
