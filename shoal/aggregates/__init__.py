"""The event-sourced core: aggregates on the ``eventsourcing`` library and their ingestion.

The API other parts use (projections, the CLI, the demo):

- :class:`ShoalCore` (application name :data:`CORE_APPLICATION_NAME`), built from settings
  with :func:`open_core` or ``ShoalCore(env=application_env(settings))``;
- the aggregates :class:`Session`, :class:`Goal`, :class:`Instance`, :class:`FleetSpend`
  and their nested domain events (``Session.ModelCalled``…);
- :func:`run_core`, the ingestion as an async service.
"""

from shoal.aggregates.application import CORE_APPLICATION_NAME, ShoalCore, open_core
from shoal.aggregates.budgets import FleetSpend
from shoal.aggregates.goal import Goal
from shoal.aggregates.ingestion import CORE_CONSUMER, CoreStats
from shoal.aggregates.instance import Instance
from shoal.aggregates.persistence import application_env
from shoal.aggregates.pricing import PriceTable
from shoal.aggregates.service import run_core
from shoal.aggregates.session import Session

__all__ = [
    "CORE_APPLICATION_NAME",
    "CORE_CONSUMER",
    "CoreStats",
    "FleetSpend",
    "Goal",
    "Instance",
    "PriceTable",
    "Session",
    "ShoalCore",
    "application_env",
    "open_core",
    "run_core",
]
