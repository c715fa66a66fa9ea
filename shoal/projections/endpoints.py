"""The query service's endpoints as contract declarations: request and reply of each.

Named queries bring their own parameter and answer models (:data:`NAMED_QUERIES`); the
admin endpoints' bodies are declared here. Every request model forbids unknown fields, so
``{"directroy": …}`` is refused naming ``directroy`` instead of exporting to the default.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, RootModel

from shoal.projections.client import QUERY_SERVICE
from shoal.projections.export import ExportedTable
from shoal.projections.queries import NAMED_QUERIES
from shoal.projections.sql import SqlAnswer, SqlParams
from shoal.schemas import Endpoint

__all__ = [
    "QUERY_ENDPOINTS",
    "ExportAnswer",
    "ExportParams",
    "NoParams",
    "StatusAnswer",
    "SwapParams",
    "SyncAnswer",
]


class _Request(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NoParams(_Request):
    """An endpoint that takes no parameters (an empty body or ``{}``)."""


class ExportParams(_Request):
    """Where to write the Parquet files, relative to the service's export root."""

    directory: str = "."


class SwapParams(_Request):
    """The rebuilt database to put in place of the live one."""

    path: str = Field(min_length=1)


class StatusAnswer(BaseModel):
    """How far the projection has followed the core, and its size."""

    path: str
    position: int
    core_last_notification: int
    behind: int = 0
    """Notifications the projection follows that it has not yet committed (its lag)."""
    tables: dict[str, int]
    last_error: str | None = None


class SyncAnswer(BaseModel):
    """What one catch-up did."""

    events: int
    position: int
    stopped_at_seq: int | None = None


class ExportAnswer(RootModel[list[ExportedTable]]):
    """Every file written, one per table."""


QUERY_ENDPOINTS: tuple[Endpoint, ...] = (
    *(
        Endpoint(QUERY_SERVICE, q.name, q.params, q.answer, q.description)
        for q in NAMED_QUERIES.values()
    ),
    Endpoint(QUERY_SERVICE, "sql", SqlParams, SqlAnswer, "one read-only SQL statement"),
    Endpoint(QUERY_SERVICE, "status", NoParams, StatusAnswer, "the projection's position"),
    Endpoint(QUERY_SERVICE, "sync", NoParams, SyncAnswer, "catch up with the core now"),
    Endpoint(QUERY_SERVICE, "export", ExportParams, ExportAnswer, "tables as Parquet files"),
    Endpoint(QUERY_SERVICE, "swap", SwapParams, StatusAnswer, "put a rebuilt database live"),
)
"""Every endpoint of ``shoal-query``, in the order the service registers them."""
