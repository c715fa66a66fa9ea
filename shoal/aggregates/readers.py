"""Reading the core whatever its shape: one store, or N partition stores read as one.

How many partitions the core folds in (N) is known to readers in this order:

1. ``SHOAL_CORE_PARTITIONS`` (or the settings field) when it is set explicitly;
2. the layout the core recorded when it started: ``core-layout.json`` in the store dir
   (``{"partitions": N}``), written by every core process, single or partitioned;
3. otherwise 1 (the single core, ``core.sqlite``).

So a CLI on the core's host needs no variable: ``shoal core --partitions 2`` writes the
layout and ``shoal session show`` finds it. A reader elsewhere (PostgreSQL stores, another
host) sets ``SHOAL_CORE_PARTITIONS`` as the core processes do (docs/scale.md).

:class:`CoreReader` answers what the single core's :class:`ShoalCore` answers for readers
(a session, a goal with its sessions and cost, every session or goal in log order), from
every partition: a session and its goal are in exactly one partition, and "log order" is
the stream sequence of the event that opened them, which is the single core's recording
order.
"""

from __future__ import annotations

import heapq
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.utils import get_topic

from shoal.aggregates.application import CoreLookups, ShoalCore, open_core
from shoal.aggregates.goal import Goal
from shoal.aggregates.partitions import Partition
from shoal.aggregates.session import Session
from shoal.bus import ShoalSettings

__all__ = [
    "LAYOUT_FILE",
    "CoreReader",
    "core_partitions",
    "first_dbname",
    "open_reader",
    "record_layout",
    "store_names",
]

LAYOUT_FILE = "core-layout.json"
"""Where the core records how many partitions it folds in (in the store dir)."""


def layout_path(settings: ShoalSettings) -> Path:
    return settings.store_dir / LAYOUT_FILE


def record_layout(settings: ShoalSettings, count: int) -> None:
    """Record that the core folds in ``count`` partitions (atomically: readers never see half)."""
    path = layout_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"partitions": count}) + "\n")
    os.replace(tmp, path)


def core_partitions(settings: ShoalSettings) -> int:
    """N as readers know it: the explicit setting, else the recorded layout, else 1."""
    if "core_partitions" in settings.model_fields_set:
        return settings.core_partitions
    try:
        recorded = json.loads(layout_path(settings).read_text())["partitions"]
    except (OSError, ValueError, KeyError, TypeError):
        return settings.core_partitions
    return recorded if isinstance(recorded, int) and 1 <= recorded <= 64 else 1


def store_names(count: int) -> list[str | None]:
    """The ``part`` of every store of a core of ``count`` partitions (``None``: the one core)."""
    if count == 1:
        return [None]
    return [Partition(k, count).name for k in range(count)]


def first_dbname(count: int) -> str:
    """The store that exists once the core has started (``core``, or ``core-p0of2``)."""
    part = store_names(count)[0]
    return f"core-{part}" if part else "core"


class CoreReader(CoreLookups):
    """The core's stores read as one (one store when N is 1: the single core, unchanged)."""

    def __init__(self, stores: list[ShoalCore], parts: list[str | None]) -> None:
        self.stores = stores
        self.parts = parts

    @property
    def count(self) -> int:
        return len(self.stores)

    def close(self) -> None:
        for store in self.stores:
            store.close()

    def __enter__(self) -> CoreReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def find(self, aggregate_id: UUID) -> Any | None:
        """An aggregate from whichever store holds it (a session or goal is in one only)."""
        for store in self.stores:
            found = store.find(aggregate_id)
            if found is not None:
                return found
        return None

    def _opened(self, cls: type[Any]) -> Iterator[Any]:
        """Every ``cls`` (an ``Opened`` event) of every store, in stream order."""
        topic = get_topic(cls)
        streams = [
            ((e.seq, n.id, e) for n, e in store.notifications([topic]))  # type: ignore[attr-defined]
            for store in self.stores
        ]
        for _, _, e in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
            yield e

    def session_iids(self) -> list[str]:
        """The IID of every session, oldest first (by the stream sequence that opened it)."""
        if self.count == 1:
            return self.stores[0].session_iids()
        return [e.iid for e in self._opened(Session.Opened)]

    def goal_gids(self) -> list[str]:
        """The GID of every goal, oldest first."""
        return [e.gid for e in self._opened(Goal.Opened)]

    def sessions(self) -> list[Session]:
        """Every session, oldest first."""
        return [self.session(iid) for iid in self.session_iids()]


def open_reader(settings: ShoalSettings, count: int | None = None) -> CoreReader:
    """The core's stores for reading (``count`` partitions; default :func:`core_partitions`)."""
    parts = store_names(count or core_partitions(settings))
    stores: list[ShoalCore] = []
    try:
        for part in parts:
            stores.append(open_core(settings, part=part))
    except BaseException:
        for store in stores:
            store.close()
        raise
    return CoreReader(stores, parts)
