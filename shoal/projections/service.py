"""The query service: the projection's owner, answering over NATS request/reply.

A NATS micro service named ``shoal-query`` (discoverable with ``$SRV.PING.shoal-query``,
``$SRV.INFO``, ``$SRV.STATS``) with one endpoint per named query plus ``sql``, ``status``,
``sync``, ``export`` and ``swap``, each on ``<prefix>.api.query.<endpoint>``. A request is
the JSON of the endpoint's parameters; the reply is the JSON answer, or a micro-service
error (headers ``Nats-Service-Error-Code`` / ``Nats-Service-Error``) with one line saying why.
A request with the header ``Shoal-Fresh: 1`` is answered after catching up with the core.

DuckDB work runs in threads (``asyncio.to_thread``); the follower keeps writing meanwhile
and readers see the last committed batch.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import nats.micro
from nats.aio.client import Client as NATS
from nats.micro.request import Request
from nats.micro.service import Service
from pydantic import BaseModel, ValidationError

from shoal.bus import Bus, ShoalSettings, Subjects
from shoal.errors import NotFound, QueryFailed, Refused, ShoalError
from shoal.projections.client import FRESH_HEADER, QUERY_SERVICE
from shoal.projections.endpoints import QUERY_ENDPOINTS, ExportParams
from shoal.projections.export import export_parquet
from shoal.projections.host import ProjectionHost
from shoal.projections.queries import NAMED_QUERIES, NamedQuery
from shoal.projections.recorder import DuckDBDatastore
from shoal.projections.sql import run_sql
from shoal.schemas import describe_validation_error, parse_request

__all__ = [
    "MICRO_NAME",
    "SERVICE_ENDPOINTS",
    "QueryService",
    "run_query_service",
    "serving",
]

log = logging.getLogger("shoal.projections")

MICRO_NAME = "shoal-query"
REBUILT_NAME = "projections.rebuild.duckdb"
"""The one file ``swap`` accepts: the rebuild's output beside the live database."""
SERVICE_ENDPOINTS = tuple(ep.name for ep in QUERY_ENDPOINTS)

_ERROR_CODES: tuple[tuple[type[Exception], str], ...] = (
    (Refused, "403"),
    (NotFound, "404"),
    (QueryFailed, "400"),
    (ShoalError, "400"),
)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:1000]


class QueryService:
    """Endpoints of the query service over one :class:`ProjectionHost`."""

    def __init__(self, host: ProjectionHost, settings: ShoalSettings) -> None:
        self.host = host
        self.settings = settings
        self.subjects = Subjects(settings.prefix)
        self.service: Service | None = None

    def _handlers(self) -> dict[str, Callable[[Any], Any]]:
        def ds() -> DuckDBDatastore:
            return self.host.datastore  # looked up per request: a swap replaces it

        def named(query: NamedQuery[Any, Any]) -> Callable[[Any], Any]:
            return lambda params: query.run(ds(), params)

        handlers: dict[str, Callable[[Any], Any]] = {
            name: named(q) for name, q in NAMED_QUERIES.items()
        }
        handlers["sql"] = lambda params: run_sql(ds(), params)
        handlers["status"] = lambda _: self.host.status()
        handlers["sync"] = lambda _: asdict(self.host.sync())
        handlers["export"] = lambda params: [
            t.model_dump() for t in export_parquet(ds(), self._export_dir(params))
        ]
        handlers["swap"] = lambda params: self._swap(Path(params.path))
        return handlers

    def _export_dir(self, params: ExportParams) -> Path:
        """The requested directory, if under the export root (never anywhere the caller says)."""
        root = (self.settings.export_root or Path.cwd()).resolve()
        wanted = (root / (params.directory or ".")).resolve()
        if not wanted.is_relative_to(root):
            raise Refused(f"export writes only under {root} (SHOAL_EXPORT_ROOT), not {wanted}")
        return wanted

    def _swap(self, path: Path) -> dict[str, Any]:
        # Only a file named as ``shoal projections rebuild`` writes it, in the data dir.
        root = self.settings.data_dir.resolve()
        if path.name != REBUILT_NAME or not path.resolve().is_relative_to(root):
            raise Refused(f"swap takes only a rebuilt database ({REBUILT_NAME}) under {root}")
        if not path.exists():
            raise NotFound(f"no rebuilt database at {path}")
        self.host.swap(path)
        return self.host.status()

    async def start(self, nc: NATS) -> None:
        """Register the micro service and its endpoints."""
        self.service = await nats.micro.add_service(
            nc,
            name=MICRO_NAME,
            version="0.1.0",
            description="shoal DuckDB projections: cost and outcome queries",
            metadata={"prefix": self.settings.prefix, "path": str(self.host.path)},
        )
        handlers = self._handlers()
        for ep in QUERY_ENDPOINTS:
            kind = "named" if ep.name in NAMED_QUERIES else "admin"
            await self.service.add_endpoint(
                name=ep.name,
                subject=self.subjects.api(QUERY_SERVICE, ep.name),
                handler=self._endpoint(nc, ep.request, handlers[ep.name]),
                metadata={"kind": kind, **ep.metadata()},
            )

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
            self.service = None

    def _endpoint(
        self, nc: NATS, model: type[BaseModel], fn: Callable[[Any], Any]
    ) -> Callable[[Request], Any]:
        async def handle(request: Request) -> None:
            try:
                params = parse_request(model, request.data)
                if (request.headers or {}).get(FRESH_HEADER) == "1":
                    await asyncio.to_thread(self.host.sync)
                answer = await asyncio.to_thread(fn, params)
                payload = _to_json(answer)
            except ValidationError as e:  # an answer the code built wrong: a 400 all the same
                await request.respond_error("400", _one_line(describe_validation_error(e)))
                return
            except Exception as e:
                code = next((c for t, c in _ERROR_CODES if isinstance(e, t)), "500")
                if code == "500":
                    log.exception("query service endpoint failed")
                    text = f"{type(e).__name__}: {e}"
                else:
                    text = str(e)
                await request.respond_error(code, _one_line(text))
                return
            if len(payload) > nc.max_payload:
                message = f"answer too large ({len(payload)} bytes); ask for fewer rows"
                await request.respond_error("413", message)
                return
            await request.respond(payload)

        return handle


def _to_json(answer: Any) -> bytes:
    if isinstance(answer, BaseModel):
        return answer.model_dump_json().encode()
    return json.dumps(answer, default=str).encode()


@asynccontextmanager
async def serving(
    settings: ShoalSettings, nc: NATS, *, host: ProjectionHost | None = None
) -> AsyncIterator[QueryService]:
    """The query service on an existing connection, for the life of the ``async with``.

    It answers at once (``status`` shows how far the catch-up got); a request with
    ``Shoal-Fresh: 1`` waits for the catch-up. The demo adds it to its services with
    ``lambda bus: serving(settings, bus.nc)``.
    """
    host = host or ProjectionHost(settings)
    await asyncio.to_thread(host.open)
    service = QueryService(host, settings)
    try:
        host.start()
        await service.start(nc)
        await nc.flush(timeout=int(settings.request_timeout) or 1)
        yield service
    finally:
        await service.stop()
        await asyncio.to_thread(host.close)


async def run_query_service(
    settings: ShoalSettings,
    url: str,
    stop: asyncio.Event,
    *,
    ready: asyncio.Event | None = None,
    host: ProjectionHost | None = None,
) -> None:
    """Own the projection, follow the core's log, answer queries until ``stop`` is set.

    The in-process entry point of ``shoal projections serve``, on its own connection.
    """
    # Bus.connect ends this with ConnectionLost if nats-py closes the connection for good.
    async with Bus.connect(url, settings, name="shoal-query") as bus:
        async with serving(settings, bus.nc, host=host):
            if ready is not None:
                ready.set()
            await stop.wait()
