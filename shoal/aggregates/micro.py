"""What every NATS micro service of the core shares: strict request models, one endpoint per
operation on ``<p>.api.<service>.<endpoint>``, and errors as micro error codes.

Each service declares its endpoints as :class:`~shoal.schemas.Endpoint` (request and reply
models); the request is read by :func:`~shoal.schemas.parse_request`, the one parser every
endpoint shares. A request that fails it is ``400`` (the fields named, an unknown one
included), :class:`NotFound` ``404``, another :class:`ShoalError` ``409`` (understood,
cannot apply), anything else ``500`` (and logged). Each endpoint's metadata names its
request and reply schema ids (``shoal schemas export``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import nats.micro
from nats.micro.request import Request
from nats.micro.service import Service
from pydantic import BaseModel, ConfigDict

from shoal.bus import Bus
from shoal.errors import NotFound, ShoalError
from shoal.schemas import BadRequest, Endpoint, parse_request

__all__ = ["Handlers", "Strict", "start_service"]


class Strict(BaseModel):
    """A request body: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Handlers = dict[str, Callable[[Any], Awaitable[Any]]]
"""Endpoint name → the coroutine answering one parsed request (a model, or JSON data)."""


async def start_service(
    bus: Bus,
    *,
    name: str,
    description: str,
    endpoints: Sequence[Endpoint],
    handlers: Handlers,
) -> Service:
    """Add the micro service ``name`` and its declared endpoints under ``<p>.api.<service>.*``."""
    micro = await nats.micro.add_service(
        bus.nc,
        name=name,
        version="0.1.0",
        description=description,
        metadata={"prefix": bus.settings.prefix},
    )
    for ep in endpoints:
        log = logging.getLogger(f"shoal.{ep.service}")
        await micro.add_endpoint(
            name=ep.name,
            subject=bus.subjects.api(ep.service, ep.name),
            handler=_handler(ep.request, handlers[ep.name], log),
            metadata=ep.metadata(),
        )
    return micro


def _handler(
    model: type[BaseModel], fn: Callable[[Any], Awaitable[Any]], log: logging.Logger
) -> Callable[[Request], Awaitable[None]]:
    async def handle(request: Request) -> None:
        try:
            answer = await fn(parse_request(model, request.data))
        except BadRequest as e:
            await request.respond_error("400", str(e)[:1000])
            return
        except NotFound as e:
            await request.respond_error("404", str(e)[:1000])
            return
        except ShoalError as e:
            await request.respond_error("409", str(e)[:1000])
            return
        except Exception as e:
            log.exception("%s endpoint failed", model.__name__)
            await request.respond_error("500", f"{type(e).__name__}: {e}"[:1000])
            return
        if isinstance(answer, BaseModel):
            await request.respond(answer.model_dump_json().encode())
        else:
            await request.respond(json.dumps(answer, default=str).encode())

    return handle
