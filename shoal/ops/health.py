"""``shoal status`` as a health check: is every part alive, and how far behind is it?

- services: each local service's process, and whether the core and the query service answer
  (the core's durable consumer's last activity is its heartbeat; the query service answers
  ``status`` over NATS);
- lag: the core's consumer against the event stream (messages not yet ingested), and the
  projection against the bus (the core's lag plus the projection's own behind the core);
  a partitioned core (docs/scale.md) is as far behind as its slowest partition's consumer
  (``core-p0of2``, …; each is listed), and its spend aggregator's lag is reported beside;
- dead letters by origin; sessions stuck or looping (from the query service); open
  regressions (:mod:`shoal.ops.regressions`); versions.

:func:`problems` lists what makes the platform unhealthy (a service down, a lag over the
threshold): ``shoal status`` exits 1 when there is any, so it can serve as a probe.
"""

from __future__ import annotations

import logging
import platform as py_platform
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nats.js.errors import NotFoundError

from shoal.bus import Bus
from shoal.ops.regressions import Regression, open_regressions

__all__ = ["Health", "ask_core", "check_health", "server_version"]

log = logging.getLogger("shoal.status")


@dataclass
class Health:
    """What ``status`` reports beyond the streams (see the module doc)."""

    core_state: str = "unknown"
    core_last_active: datetime | None = None
    core_lag: int | None = None
    partition_lags: dict[str, int | None] = field(default_factory=dict)
    """A partitioned core's consumers and their lags (``None``: that consumer is missing)."""
    spend_lag: int | None = None
    """A partitioned core's spend aggregator: stream events it has not yet summed."""
    supervisor_last_renewed: datetime | None = None
    query_state: str = "unknown"
    projection_lag_core: int | None = None
    projection_lag_bus: int | None = None
    deadletters: dict[str, int] = field(default_factory=dict)
    sessions: dict[str, int] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    regressions: list[Regression] = field(default_factory=list)

    def problems(
        self, services: dict[str, int | None], max_lag: int, *, local: bool = True
    ) -> list[str]:
        """Why the platform is unhealthy; empty when it is healthy.

        ``local``: the services run on this host (the embedded default), so a missing
        process is a service down; against an external NATS they may run elsewhere, and
        only what answers over NATS counts.
        """
        if local:
            out = [f"{name} is not running" for name, pid in services.items() if pid is None]
        else:
            out = ["the query service does not answer"] if self.query_state == "down" else []
        if self.core_state == "absent":
            out.append("the core has never consumed the event stream")
        if self.core_lag is not None and self.core_lag > max_lag:
            out.append(f"the core is {self.core_lag:,} events behind the stream (> {max_lag:,})")
        if self.spend_lag is not None and self.spend_lag > max_lag:
            out.append(
                f"the spend aggregator is {self.spend_lag:,} events behind the stream "
                f"(> {max_lag:,})"
            )
        if self.projection_lag_bus is not None and self.projection_lag_bus > max_lag:
            out.append(
                f"the projection is {self.projection_lag_bus:,} events behind the bus "
                f"(> {max_lag:,})"
            )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "core": {
                "state": self.core_state,
                "last_active": self.core_last_active.isoformat() if self.core_last_active else None,
                "lag": self.core_lag,
                **({"partitions": self.partition_lags} if self.partition_lags else {}),
                **({"spend_lag": self.spend_lag} if self.partition_lags else {}),
            },
            "supervisor": {
                "last_renewed": self.supervisor_last_renewed.isoformat()
                if self.supervisor_last_renewed
                else None
            },
            "query": {
                "state": self.query_state,
                "projection_lag_core": self.projection_lag_core,
                "projection_lag_bus": self.projection_lag_bus,
            },
            "deadletters_by_origin": self.deadletters,
            "sessions": self.sessions,
            "versions": self.versions,
            "regressions": [r.to_json() for r in self.regressions],
        }


def server_version(bus: Bus) -> str:
    """The connected server's version, ``2.11.4`` (nats-py's str is ``<nats server v…>``)."""
    return str(bus.nc.connected_server_version).removeprefix("<nats server v").removesuffix(">")


async def check_health(bus: Bus) -> Health:
    """Ask the stream, the core's consumer and the query service; never raise for a part
    that is down (that part's state says so)."""
    from importlib.metadata import version

    from shoal.aggregates.readers import core_partitions
    from shoal.ops.deadletters import count_by_origin

    health = Health()
    health.versions = {
        "shoal": version("shoal"),
        "nats-server": server_version(bus),
        "nats-py": version("nats-py"),
        "python": py_platform.python_version(),
    }
    await ask_core(bus, health, core_partitions(bus.settings))
    health.deadletters = await count_by_origin(bus)
    health.supervisor_last_renewed = await _last_lease_renewal(bus)
    health.regressions = await open_regressions(bus)
    await _ask_query_service(bus, health)
    return health


async def ask_core(bus: Bus, health: Health, count: int) -> None:
    """The core's consumers: one (``core``), or one per partition and the slowest counts."""
    from shoal.aggregates.ingestion import CORE_CONSUMER
    from shoal.aggregates.partstream import PartitionStream
    from shoal.aggregates.readers import store_names

    parts = store_names(count)
    names = [f"{CORE_CONSUMER}-{p}" if p else CORE_CONSUMER for p in parts]
    stream, feeds = bus.topology.events.name, [[""] for _ in names]
    if count > 1:  # each partition reads its share of the partition stream on 2-3 feeds
        partitioned = PartitionStream(bus.topology.events, bus.subjects.prefix, count)
        stream = partitioned.name
        feeds = [[suffix for suffix, _ in partitioned.feeds(k)] for k in range(count)]
    lags: dict[str, int | None] = {}
    states: list[str] = []
    for name, suffixes in zip(names, feeds, strict=True):
        try:
            infos = [await bus.js.consumer_info(stream, name + s) for s in suffixes]
        except NotFoundError:
            lags[name] = None
            states.append("absent")
            continue
        lags[name] = sum(i.num_pending + (i.num_ack_pending or 0) for i in infos)
        info = infos[0]
        active = info.delivered.last_active if info.delivered else None
        if active is not None and (
            health.core_last_active is None or active < health.core_last_active
        ):
            health.core_last_active = active  # the stalest partition's heartbeat
        states.append("consuming" if info.push_bound or info.num_waiting else "idle")
    known = [lag for lag in lags.values() if lag is not None]
    health.core_lag = max(known) if known else None
    # One partition never started is a core that has never consumed its share.
    for state in ("absent", "idle", "consuming"):
        if state in states:
            health.core_state = state
            break
    if count > 1:
        health.partition_lags = lags
        health.spend_lag = await _spend_lag(bus, count)


async def _spend_lag(bus: Bus, count: int) -> int | None:
    """Stream events the spend aggregator has not summed; ``None`` if its store is not here."""
    import asyncio

    from shoal.aggregates.partitioned import open_spend, spend_name

    settings = bus.settings
    store = settings.store_dir / f"core-{spend_name(count)}.sqlite"
    if settings.persistence_module == "eventsourcing.sqlite" and not store.exists():
        return None
    upstream = bus.topology.events.name

    def position() -> int:
        spend = open_spend(settings, count)
        try:
            return spend.max_tracking_id(upstream)
        finally:
            spend.close()

    try:
        done = await asyncio.to_thread(position)
    except Exception as e:  # a store we cannot read: unknown, not a failure of status
        log.warning("cannot read the spend aggregator's store: %s", e or type(e).__name__)
        return None
    last = (await bus.js.stream_info(upstream)).state.last_seq
    return max(last - done, 0)


async def _last_lease_renewal(bus: Bus) -> datetime | None:
    """A supervisor's heartbeat: the latest renewal of any slot lease it holds."""
    from shoal.bus import Lease
    from shoal.ops.fleets import kv_snapshot

    try:
        leases = await bus.kv(bus.topology.leases.name)
    except NotFoundError:  # never provisioned here: no supervisor ever ran
        return None
    entries = await kv_snapshot(leases, timeout=bus.settings.request_timeout)
    renewed = []
    for entry in entries.values():
        try:  # the bucket also holds other records (a supervisor's own): leases only
            renewed.append(Lease.model_validate_json(entry.value or b"{}").renewed_at)
        except ValueError:
            continue
    return max(renewed, default=None)


async def _ask_query_service(bus: Bus, health: Health) -> None:
    from shoal.errors import ShoalError
    from shoal.projections.client import QueryClient

    client = QueryClient(bus.nc, bus.settings)
    try:
        status: dict[str, Any] = await client.ask("status", timeout=2.0)
    except ShoalError:
        health.query_state = "down"
        return
    health.query_state = "answering"
    health.projection_lag_core = max(int(status.get("behind") or 0), 0)
    health.projection_lag_bus = health.projection_lag_core + (health.core_lag or 0)
    for state in ("stuck", "looping"):
        try:
            answer = await client.ask("sessions", {"state": state, "limit": 1000}, timeout=2.0)
        except ShoalError:
            continue
        health.sessions[state] = len(answer.get("rows", []))
    try:
        sql = (
            "SELECT count(*) FROM (SELECT request_id FROM approvals GROUP BY request_id "
            "HAVING bool_and(state = 'requested'))"
        )
        answer = await client.ask("sql", {"sql": sql, "limit": 1}, timeout=2.0)
        health.sessions["awaiting approval"] = int(answer["rows"][0][0])
        sql = "SELECT count(*) FROM sessions WHERE status = 'awaiting_input'"
        answer = await client.ask("sql", {"sql": sql, "limit": 1}, timeout=2.0)
        health.sessions["awaiting input"] = int(answer["rows"][0][0])
    except (ShoalError, KeyError, IndexError, TypeError, ValueError):
        pass
