"""The materialised view: the projection's DuckDB tables plus its tracking record.

:class:`DuckDBCostView` is the DuckDB tracking recorder with the projection's tables. Its one
write, :meth:`DuckDBCostView.write`, appends a batch's fact rows from Arrow tables, upserts
its session and goal patches, and advances the tracking record — all in one transaction.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple
from uuid import UUID

import pyarrow as pa  # type: ignore[import-untyped]
from eventsourcing.persistence import Tracking

from shoal.projections import rollups
from shoal.projections.batch import Batch
from shoal.projections.recorder import DuckDBDatastore, DuckDBTrackingRecorder
from shoal.projections.schema import TABLES, create_statements
from shoal.schemas.labels import LABEL_NAMES

__all__ = ["DuckDBCostView", "SessionKey", "Staged", "open_view"]


class SessionKey(NamedTuple):
    """What events of a session need but carry only as the aggregate id."""

    iid: str
    gid: str | None
    root: bool
    """The session is the root of its goal (has a GID and no parent)."""


class Staged(NamedTuple):
    """One statement of a batch and the Arrow rows it reads as ``staging``."""

    sql: str
    rows: pa.Table


class DuckDBCostView(DuckDBTrackingRecorder):
    """Sessions, goals, model and tool calls, decisions, approvals and outcomes in DuckDB."""

    def construct_create_table_statements(self) -> list[str]:
        return (
            super().construct_create_table_statements()
            + create_statements()
            + rollups.create_statements()
        )

    def create_table(self) -> None:
        """Create what is missing; fill the rollups of a view made before them."""
        super().create_table()
        if self.datastore.read_only:
            return
        with self.datastore.transaction() as c:
            tables = [f"(SELECT count(*) FROM {t} LIMIT 1)" for t in rollups.ROLLUP_TABLES]
            found = c.execute(
                f"SELECT (SELECT count(*) FROM model_calls LIMIT 1), {', '.join(tables)}"
            ).fetchone()
            if found is not None and found[0] and not all(found[1:]):
                for t in rollups.ROLLUP_TABLES:
                    c.execute(f"DELETE FROM {t}")
                for statement in rollups.backfill_statements():
                    c.execute(statement)

    def write(self, batch: Batch, tracking: Tracking) -> None:
        """Store the batch's rows and ``tracking`` atomically (``IntegrityError`` if tracked)."""
        self.commit(self.stage(batch), tracking)

    @staticmethod
    def stage(batch: Batch) -> list[Staged]:
        """The batch as Arrow tables, each with the statement that stores it.

        Pure Python (holds the GIL); :meth:`commit` is DuckDB work (releases it), so a
        pipelined projection stages in its own thread and commits in the writer's.
        """
        staged = []
        for rows in batch.facts.values():
            if len(rows):
                insert = f"INSERT INTO {rows.table.name} SELECT * FROM staging"
                arrow = rows.to_arrow()
                staged.append(Staged(insert, arrow))
                if rows.table.name == "model_calls":
                    # The hourly sums of the same rows, in the same transaction.
                    staged += [Staged(sql, arrow) for sql in rollups.upserts("staging")]
        for patches in batch.states.values():
            if patches.created:
                insert = f"INSERT INTO {patches.table.name} SELECT * FROM staging"
                staged.append(Staged(insert, patches.to_arrow(created=True)))
            if len(patches) > len(patches.created):
                upsert = patches.upsert_sql("staging")
                staged.append(Staged(upsert, patches.to_arrow(created=False)))
        return staged

    def commit(self, staged: list[Staged], tracking: Tracking) -> None:
        """Run the staged statements and advance ``tracking`` in one transaction."""
        with self.datastore.transaction() as c:
            # Tracking first: a batch already recorded fails before any row is written.
            self._insert_tracking(c, tracking)
            for item in staged:
                # The Arrow table is visible to this cursor's SQL as ``staging`` (no copy).
                c.register("staging", item.rows)
                try:
                    c.execute(item.sql)
                finally:
                    c.unregister("staging")

    def session_keys(self) -> dict[UUID, SessionKey]:
        """Session aggregate id → its IID, GID and whether it is its goal's root."""
        with self.datastore.reader() as c:
            rows = c.execute(
                "SELECT session_id, iid, gid, gid IS NOT NULL AND parentiid IS NULL FROM sessions"
            ).fetchall()
        return {UUID(sid): SessionKey(iid, gid, root) for sid, iid, gid, root in rows}

    def goal_keys(self) -> dict[UUID, str]:
        """Goal aggregate id → GID, for every goal stored."""
        with self.datastore.reader() as c:
            rows = c.execute("SELECT goal_id, gid FROM goals").fetchall()
        return {UUID(goal): gid for goal, gid in rows}

    def goal_labels(self) -> dict[str, dict[str, str]]:
        """GID → the labels it was submitted with, for every goal that has any."""
        names = ", ".join(LABEL_NAMES)
        any_set = " OR ".join(f"{n} IS NOT NULL" for n in LABEL_NAMES)
        with self.datastore.reader() as c:
            rows = c.execute(f"SELECT gid, {names} FROM goals WHERE {any_set}").fetchall()
        return {
            gid: {n: v for n, v in zip(LABEL_NAMES, values, strict=True) if v is not None}
            for gid, *values in rows
        }

    def table_counts(self) -> dict[str, int]:
        """Rows per table."""
        with self.datastore.reader() as c:
            return {
                t.name: int(c.execute(f"SELECT count(*) FROM {t.name}").fetchone()[0])  # type: ignore[index]
                for t in TABLES
            }


def open_view(path: str | Path, *, read_only: bool = False) -> DuckDBCostView:
    """The view in the DuckDB file at ``path`` (created if missing, unless read-only)."""
    return DuckDBCostView(DuckDBDatastore(path, read_only=read_only))
