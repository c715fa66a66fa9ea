"""The registry over NATS: read-only micro endpoints (``<p>.api.registry.<endpoint>``,
service ``shoal-registry``, hosted by ``shoal core``) for the console and any other front end:

| endpoint | request | reply |
|---|---|---|
| ``ls`` | ``{"text"?, "capability"?, "state"?, "kind"?}`` | ``{"rows": [...]}``, one per version |
| ``show`` | ``{"name"}`` | the definition: purpose, owner, every version and its history |
| ``card`` | ``{"name", "version"?, "base_url"?}`` | the agent's A2A agent card |
| ``cards`` | ``{"base_url"?}`` | ``{"cards": [...]}``: every agent with a live version |

Writes are not offered here: registering and lifecycle changes are operator commands run
by the CLI on the registry store with a role check, as fleet commands are (docs/registry.md).
Unknown request fields are refused (400); an unknown name is 404.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import nats.micro
from nats.micro.request import Request
from nats.micro.service import Service
from pydantic import BaseModel, ConfigDict, ValidationError

from shoal.aggregates.agent_cards import agent_card
from shoal.aggregates.definitions import RegistryApplication
from shoal.aggregates.persistence import application_env
from shoal.aggregates.registry_query import search
from shoal.bus import Bus, ShoalSettings
from shoal.errors import NotFound, ShoalError
from shoal.schemas import describe_validation_error

__all__ = ["REGISTRY", "RegistryService", "open_registry", "serve_registry"]

log = logging.getLogger("shoal.registry")

REGISTRY = "registry"
MICRO_NAME = "shoal-registry"


def open_registry(settings: ShoalSettings) -> RegistryApplication:
    """The registry on this machine's persistence (``registry`` store beside ``fleets``)."""
    return RegistryApplication(env=application_env(settings, "registry"))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LsRequest(_Strict):
    text: str = ""
    capability: str | None = None
    state: str | None = None
    kind: Literal["agent", "tool"] | None = None


class ShowRequest(_Strict):
    name: str


class CardRequest(_Strict):
    name: str
    version: str | None = None
    base_url: str = ""


class CardsRequest(_Strict):
    base_url: str = ""


class RegistryService:
    """The registry endpoints on one connection, reading one registry application."""

    def __init__(self, bus: Bus, app: RegistryApplication) -> None:
        self.bus = bus
        self.app = app
        self.service: Service | None = None

    async def start(self) -> None:
        self.service = await nats.micro.add_service(
            self.bus.nc,
            name=MICRO_NAME,
            version="0.1.0",
            description="shoal registry: agents, tools, versions, lifecycle, A2A agent cards",
            metadata={"prefix": self.bus.settings.prefix},
        )
        endpoints: dict[str, tuple[type[_Strict], Callable[[Any], Any]]] = {
            "ls": (LsRequest, self._ls),
            "show": (ShowRequest, self._show),
            "card": (CardRequest, self._card),
            "cards": (CardsRequest, self._cards),
        }
        for name, (model, fn) in endpoints.items():
            await self.service.add_endpoint(
                name=name,
                subject=self.bus.subjects.api(REGISTRY, name),
                handler=self._endpoint(model, fn),
                metadata={"request": json.dumps(model.model_json_schema())},
            )

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
            self.service = None

    # Each runs in a thread: the eventsourcing application is synchronous.
    def _ls(self, r: LsRequest) -> dict[str, Any]:
        rows = search(self.app.all(), r.text, capability=r.capability, state=r.state, kind=r.kind)
        return {"rows": [row.to_json() for row in rows]}

    def _show(self, r: ShowRequest) -> dict[str, Any]:
        return self.app.find(r.name).to_json()

    def _card(self, r: CardRequest) -> dict[str, Any]:
        definition = self.app.get("agent", r.name)
        return agent_card(
            definition, r.version, prefix=self.bus.settings.prefix, base_url=r.base_url
        )

    def _cards(self, r: CardsRequest) -> dict[str, Any]:
        prefix = self.bus.settings.prefix
        cards = [
            agent_card(d, prefix=prefix, base_url=r.base_url)
            for d in self.app.all()
            if d.kind == "agent" and d.latest is not None and d.latest.state != "retired"
        ]
        return {"cards": cards}

    def _endpoint(
        self, model: type[_Strict], fn: Callable[[Any], Any]
    ) -> Callable[[Request], Awaitable[None]]:
        async def handle(request: Request) -> None:
            try:
                body = model.model_validate_json(request.data or b"{}")
                answer = await asyncio.to_thread(fn, body)
            except ValidationError as e:
                await request.respond_error("400", describe_validation_error(e)[:1000])
                return
            except NotFound as e:
                await request.respond_error("404", str(e)[:1000])
                return
            except ShoalError as e:
                await request.respond_error("400", str(e)[:1000])
                return
            except Exception as e:
                log.exception("registry endpoint failed")
                await request.respond_error("500", f"{type(e).__name__}: {e}"[:1000])
                return
            await request.respond(json.dumps(answer, default=str).encode())

        return handle


async def serve_registry(
    settings: ShoalSettings, url: str, stop: asyncio.Event, *, ready: asyncio.Event | None = None
) -> None:
    """Serve the registry endpoints on their own connection until ``stop`` is set.

    A lost connection raises :class:`~shoal.errors.ConnectionLost` (``Bus.connect``), so
    the process hosting it exits non-zero instead of idling with no endpoints.
    """
    async with Bus.connect(url, settings, name="shoal-registry") as bus:
        app = await asyncio.to_thread(open_registry, settings)
        service = RegistryService(bus, app)
        try:
            await service.start()
            if ready is not None:
                ready.set()
            await stop.wait()
        finally:
            await service.stop()
            app.close()
