"""A2A agent cards over HTTP: ``/agents/<name>/.well-known/agent-card.json`` for one agent
and ``/.well-known/agent-cards.json`` for every agent with a live version.

The cards come from the registry service over NATS (``<p>.api.registry.card|cards``), like
every other read of the console. They are not public: a caller is either signed in (the
console's cookie) or sends a console token as ``Authorization: Bearer <token>`` (what an
A2A client such as the SDK's card resolver passes in its HTTP headers); else 401.
"""

from __future__ import annotations

import json
from typing import Any

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shoal.bus import Bus
from shoal.console.web import console_of, signed_in
from shoal.errors import InvalidOption, NotFound, ServiceUnavailable, TimedOut
from shoal.schemas import is_token

__all__ = ["CARD_ROUTES", "ask_registry"]

REGISTRY = "registry"


def _error(status: int, message: str) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="shoal"'} if status == 401 else None
    return JSONResponse({"error": message}, status, headers=headers)


async def _allowed(request: Request) -> bool:
    if await signed_in(request) is not None:
        return True
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    who = await console_of(request).authenticator.authenticate(token.strip())
    return who is not None


async def ask_registry(bus: Bus, endpoint: str, body: dict[str, Any]) -> Any:
    """The registry service's JSON answer; its errors as :class:`ShoalError` subclasses."""
    try:
        msg = await bus.nc.request(
            bus.subjects.api(REGISTRY, endpoint),
            json.dumps(body).encode(),
            timeout=bus.settings.request_timeout,
        )
    except NoRespondersError:
        raise ServiceUnavailable("no registry service answers (it runs in 'shoal core')") from None
    except (NatsTimeoutError, TimeoutError):
        raise TimedOut("the registry service did not answer in time") from None
    headers = msg.headers or {}
    code = headers.get("Nats-Service-Error-Code")
    if code:
        error = headers.get("Nats-Service-Error", "registry error")
        raise (NotFound if code == "404" else InvalidOption)(error)
    return json.loads(msg.data)


async def _ask(request: Request, endpoint: str, body: dict[str, Any]) -> Response:
    """The registry service's answer as JSON, or its error with the matching status."""
    if not await _allowed(request):
        return _error(401, "sign in, or send a console token as 'Authorization: Bearer …'")
    body = {**body, "base_url": str(request.base_url).rstrip("/")}
    try:
        answer = await ask_registry(console_of(request).bus, endpoint, body)
    except NotFound as e:
        return _error(404, str(e))
    except InvalidOption as e:
        return _error(400, str(e))
    except ServiceUnavailable as e:
        return _error(503, str(e))
    except TimedOut as e:
        return _error(504, str(e))
    response = JSONResponse(answer)
    response.headers["Cache-Control"] = "no-store"
    return response


async def agent_card(request: Request) -> Response:
    name = request.path_params["name"]
    if not is_token(name):
        return _error(404, f"no agent named {name!r}")
    version = request.query_params.get("version")
    return await _ask(request, "card", {"name": name, "version": version})


async def agent_cards(request: Request) -> Response:
    return await _ask(request, "cards", {})


CARD_ROUTES = (
    Route("/agents/{name}/.well-known/agent-card.json", agent_card, methods=["GET"]),
    Route("/.well-known/agent-cards.json", agent_cards, methods=["GET"]),
)
