"""What every NATS micro service of the core shares: strict request models, one endpoint per
operation on ``<p>.api.<service>.<endpoint>``, and errors as micro error codes.

A request that fails validation is ``400`` (the fields named), :class:`NotFound` ``404``,
another :class:`ShoalError` ``409`` (understood, cannot apply), anything else ``500`` (and
logged). The request model's JSON Schema is each endpoint's ``request`` metadata.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats.micro
from nats.micro.request import Request
from nats.micro.service import Service
from pydantic import BaseModel, ConfigDict, ValidationError

from shoal.bus import Bus
from shoal.errors import NotFound, ShoalError
from shoal.schemas import describe_validation_error

__all__ = ["Endpoints", "Strict", "start_service"]


class Strict(BaseModel):
    """A request body: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Endpoints = dict[str, tuple[type[Strict], Callable[[Any], Awaitable[Any]]]]
"""Endpoint name → (its request model, the coroutine answering one parsed request)."""


async def start_service(
    bus: Bus, *, name: str, service: str, description: str, endpoints: Endpoints
) -> Service:
    """Add the micro service ``name`` and its endpoints under ``<p>.api.<service>.*``."""
    micro = await nats.micro.add_service(
        bus.nc,
        name=name,
        version="0.1.0",
        description=description,
        metadata={"prefix": bus.settings.prefix},
    )
    log = logging.getLogger(f"shoal.{service}")
    for endpoint, (model, fn) in endpoints.items():
        await micro.add_endpoint(
            name=endpoint,
            subject=bus.subjects.api(service, endpoint),
            handler=_handler(model, fn, log),
            metadata={"request": json.dumps(model.model_json_schema())},
        )
    return micro


def _handler(
    model: type[Strict], fn: Callable[[Any], Awaitable[Any]], log: logging.Logger
) -> Callable[[Request], Awaitable[None]]:
    async def handle(request: Request) -> None:
        try:
            body = model.model_validate_json(request.data or b"{}")
            answer = await fn(body)
        except ValidationError as e:
            await request.respond_error("400", describe_validation_error(e)[:1000])
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
        await request.respond(json.dumps(answer, default=str).encode())

    return handle
