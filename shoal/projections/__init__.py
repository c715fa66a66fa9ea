"""DuckDB projections: cost and outcome answers from the core's log, exactly once.

Modules, by layer: :mod:`~shoal.projections.recorder` (the DuckDB tracking recorder),
:mod:`~shoal.projections.schema` (tables), :mod:`~shoal.projections.projection` (the core's
events → rows), :mod:`~shoal.projections.view` (the materialised view),
:mod:`~shoal.projections.runner` (catch-up and follow), :mod:`~shoal.projections.queries`
(named queries; their parameters and answers in :mod:`~shoal.projections.answers`),
:mod:`~shoal.projections.sql` (read-only SQL),
:mod:`~shoal.projections.host` and :mod:`~shoal.projections.service` (the query service),
:mod:`~shoal.projections.rebuild` and :mod:`~shoal.projections.export`.

Only the light client side is imported here; the rest (DuckDB, the core) is imported from
its module by whoever runs it: ``from shoal.projections.service import run_query_service``.
"""

from shoal.projections.client import FRESH_HEADER, QUERY_SERVICE, QueryClient
from shoal.projections.queries import NAMED_QUERIES, CostAnswer, SuccessCostAnswer
from shoal.projections.sql import SqlAnswer

__all__ = [
    "FRESH_HEADER",
    "NAMED_QUERIES",
    "QUERY_SERVICE",
    "CostAnswer",
    "QueryClient",
    "SqlAnswer",
    "SuccessCostAnswer",
]
