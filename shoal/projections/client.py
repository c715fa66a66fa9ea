"""Asking the query service: typed answers, or one clear error.

:class:`QueryClient` sends a named query's parameters to ``<prefix>.api.query.<name>`` and
returns its typed answer; a micro-service error becomes the matching :class:`ShoalError`
(``Refused`` for a write in ``shoal sql``, ``QueryFailed`` for DuckDB's message), and no
service at all becomes :class:`ServiceUnavailable`.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from pydantic import BaseModel

from shoal.bus import ShoalSettings, Subjects
from shoal.errors import NotFound, QueryFailed, Refused, ServiceUnavailable, ShoalError, TimedOut
from shoal.projections.queries import NAMED_QUERIES
from shoal.projections.sql import SqlAnswer, SqlParams

__all__ = ["FRESH_HEADER", "QUERY_SERVICE", "QueryClient"]

QUERY_SERVICE = "query"
"""The ``<service>`` token of the query service's subjects (``<prefix>.api.query.<endpoint>``)."""

FRESH_HEADER = "Shoal-Fresh"
"""Request header: ``1`` asks the service to catch up with the core before answering."""

A = TypeVar("A", bound=BaseModel)

_ERRORS: dict[str, type[ShoalError]] = {"403": Refused, "404": NotFound}


class QueryClient:
    """Request/reply to the query service on one NATS connection."""

    def __init__(self, nc: NATS, settings: ShoalSettings) -> None:
        self.nc = nc
        self.settings = settings
        self.subjects = Subjects(settings.prefix)

    async def ask(
        self,
        endpoint: str,
        params: BaseModel | dict[str, Any] | None = None,
        *,
        fresh: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """The endpoint's JSON answer; ``fresh`` asks the service to catch up first."""
        subject = self.subjects.api(QUERY_SERVICE, endpoint)
        if isinstance(params, BaseModel):
            payload = params.model_dump_json(exclude_none=True).encode()
        else:
            payload = json.dumps(params or {}, default=str).encode()
        wait = timeout or self.settings.request_timeout
        try:
            msg = await self.nc.request(
                subject, payload, timeout=wait, headers={FRESH_HEADER: "1"} if fresh else None
            )
        except NoRespondersError:
            raise ServiceUnavailable(
                f"no query service answers on {subject}; start one with 'shoal projections serve'"
            ) from None
        except (NatsTimeoutError, TimeoutError):
            # A slow answer is a failure at run time (exit 1), not a bad query (exit 2).
            raise TimedOut(
                f"the query service did not answer within {wait:g}s (it may still be catching "
                "up with the core: see 'shoal projections status')"
            ) from None
        headers = msg.headers or {}
        code = headers.get("Nats-Service-Error-Code")
        if code:
            description = headers.get("Nats-Service-Error", "query service error")
            raise _ERRORS.get(code, QueryFailed)(description)
        return json.loads(msg.data)

    async def query(
        self, name: str, params: BaseModel | dict[str, Any] | None = None, *, fresh: bool = False
    ) -> BaseModel:
        """A named query's typed answer."""
        query = NAMED_QUERIES[name]
        answer: BaseModel = query.answer.model_validate(await self.ask(name, params, fresh=fresh))
        return answer

    async def sql(self, sql: str, limit: int = 1000) -> SqlAnswer:
        """Rows of one read-only statement."""
        return SqlAnswer.model_validate(await self.ask("sql", SqlParams(sql=sql, limit=limit)))
