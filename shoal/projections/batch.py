"""Row buffers for one batch: appended facts and merged state patches, turned into Arrow.

A batch collects, in memory, what a run of notifications adds: rows for the append-only
fact tables (:class:`Rows`) and one *patch* per session and goal (:class:`Patches`). A patch
merges the batch's changes to one key with a rule per column (first value wins, last value
wins, maximum, sum, or); the same rule, written in SQL, merges the patch into the stored row
(``INSERT … ON CONFLICT DO UPDATE``). So a state table costs one upsert per batch however
many events touched it, and the result does not depend on where batch boundaries fall.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from enum import Enum
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]

from shoal.projections.schema import MONEY, Table

__all__ = ["Batch", "Patches", "Rows", "Rule"]


class Rule(Enum):
    """How a column of a state table merges a newer change into the value it has."""

    FIRST = "first"  # the earliest non-null value stays
    LAST = "last"  # a newer non-null value replaces it
    MAX = "max"
    SUM = "sum"
    OR = "or"
    UNION = "union"  # a sorted list of distinct values: the old ones and the new ones
    SESSION_STATUS = "session_status"  # last wins, but ``killed`` is final
    GOAL_STATUS = "goal_status"  # last wins, but ``running`` never reopens an ended goal


_ENDED_GOAL = ("completed", "failed")


def _merge_session_status(old: Any, new: Any) -> Any:
    return old if old == "killed" or new is None else new


def _merge_goal_status(old: Any, new: Any) -> Any:
    if new is None or (new == "running" and old in _ENDED_GOAL):
        return old
    return new


def _merge_max(old: Any, new: Any) -> Any:
    if old is None:
        return new
    return old if new is None or old >= new else new


def _merge_union(old: Any, new: Any) -> Any:
    return sorted(set(old or ()) | set(new))


_MERGE: dict[Rule, Callable[[Any, Any], Any]] = {
    Rule.FIRST: lambda old, new: new if old is None else old,
    Rule.LAST: lambda old, new: old if new is None else new,
    Rule.MAX: _merge_max,
    Rule.SUM: lambda old, new: old + new,
    Rule.OR: lambda old, new: old or new,
    Rule.UNION: _merge_union,
    Rule.SESSION_STATUS: _merge_session_status,
    Rule.GOAL_STATUS: _merge_goal_status,
}

_SQL: dict[Rule, str] = {
    Rule.FIRST: "COALESCE({t}.{c}, EXCLUDED.{c})",
    Rule.LAST: "COALESCE(EXCLUDED.{c}, {t}.{c})",
    Rule.MAX: "GREATEST({t}.{c}, EXCLUDED.{c})",
    Rule.SUM: "{t}.{c} + EXCLUDED.{c}",
    Rule.OR: "{t}.{c} OR EXCLUDED.{c}",
    Rule.UNION: (
        "CASE WHEN EXCLUDED.{c} IS NULL THEN {t}.{c} WHEN {t}.{c} IS NULL THEN EXCLUDED.{c} "
        "ELSE list_sort(list_distinct(list_concat({t}.{c}, EXCLUDED.{c}))) END"
    ),
    Rule.SESSION_STATUS: (
        "CASE WHEN {t}.{c} = 'killed' OR EXCLUDED.{c} IS NULL THEN {t}.{c} ELSE EXCLUDED.{c} END"
    ),
    Rule.GOAL_STATUS: (
        "CASE WHEN EXCLUDED.{c} IS NULL OR (EXCLUDED.{c} = 'running' AND {t}.{c} IN "
        "('completed', 'failed')) THEN {t}.{c} ELSE EXCLUDED.{c} END"
    ),
}

_ZERO: dict[pa.DataType, Any] = {MONEY: Decimal(0), pa.int32(): 0, pa.int64(): 0}


def _arrow(table: Table, columns: list[list[Any]]) -> pa.Table:
    arrays = [pa.array(values, c.type) for c, values in zip(table.columns, columns, strict=True)]
    return pa.Table.from_arrays(arrays, schema=table.arrow_schema)


class Rows:
    """Rows appended to one fact table, as tuples in the table's column order."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.rows: list[tuple[Any, ...]] = []

    def add(self, row: tuple[Any, ...]) -> None:
        self.rows.append(row)

    def __len__(self) -> int:
        return len(self.rows)

    def to_arrow(self) -> pa.Table:
        columns = [list(col) for col in zip(*self.rows, strict=True)]
        return _arrow(self.table, columns or [[] for _ in self.table.columns])


class Patches:
    """One merged patch per key of a state table."""

    def __init__(self, table: Table, rules: Mapping[str, Rule]) -> None:
        assert table.key is not None
        self.table = table
        self.rules = {c.name: rules.get(c.name, Rule.LAST) for c in table.columns}
        self._defaults = {
            c.name: (
                _ZERO.get(c.type)
                if self.rules[c.name] in (Rule.SUM, Rule.MAX)
                else False
                if self.rules[c.name] is Rule.OR
                else None
            )
            for c in table.columns
        }
        self._merge = {name: _MERGE[rule] for name, rule in self.rules.items()}
        self.patches: dict[str, dict[str, Any]] = {}
        self.created: set[str] = set()

    def update(self, key: str, values: Mapping[str, Any], *, created: bool = False) -> None:
        """Merge ``values`` (column → value; ``None`` means "no change") into the key's patch.

        ``created`` marks the change that creates the row (``Opened``): such a patch is
        inserted as it is, which is cheaper than an upsert.
        """
        patch = self.patches.get(key)
        if patch is None:
            patch = self.patches[key] = dict(self._defaults)
            patch[self.table.key or ""] = key
        if created:
            self.created.add(key)
        merge = self._merge
        for column, value in values.items():
            if value is not None:
                patch[column] = merge[column](patch[column], value)

    def __len__(self) -> int:
        return len(self.patches)

    def to_arrow(self, *, created: bool) -> pa.Table:
        """The patches of rows created in this batch (``created``), or of the others."""
        names = self.table.column_names
        patches = [p for k, p in self.patches.items() if (k in self.created) is created]
        return _arrow(self.table, [[p[n] for p in patches] for n in names])

    def upsert_sql(self, staging: str) -> str:
        """``INSERT … ON CONFLICT DO UPDATE`` merging the staged patches by the same rules."""
        t, key = self.table.name, self.table.key
        sets = ", ".join(
            f"{name} = " + _SQL[rule].format(t=t, c=name)
            for name, rule in self.rules.items()
            if name != key
        )
        return f"INSERT INTO {t} SELECT * FROM {staging} ON CONFLICT ({key}) DO UPDATE SET {sets}"


class Batch:
    """Everything one batch of notifications adds to the projection."""

    def __init__(
        self, facts: tuple[Table, ...], states: Mapping[Table, Mapping[str, Rule]]
    ) -> None:
        self.facts = {t.name: Rows(t) for t in facts}
        self.states = {t.name: Patches(t, rules) for t, rules in states.items()}
        self.events = 0

    def __len__(self) -> int:
        return self.events
