"""A tracking recorder for DuckDB: the projection's position, stored beside its rows.

:class:`DuckDBTrackingRecorder` implements the ``eventsourcing`` library's
:class:`~eventsourcing.persistence.TrackingRecorder` port on one DuckDB database. The
tracking table keeps one row per upstream application (the library's "single-row tracking"):
the highest notification id processed. A subclass (the materialised view) writes its rows and
calls :meth:`DuckDBTrackingRecorder._insert_tracking` inside the same
:meth:`DuckDBDatastore.transaction`, so rows and position commit together or not at all.

DuckDB errors are translated to the library's persistence exceptions in one place,
:func:`translate_errors`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
from eventsourcing.persistence import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    Tracking,
    TrackingRecorder,
)

__all__ = ["DuckDBDatastore", "DuckDBTrackingRecorder", "translate_errors"]


@contextmanager
def translate_errors() -> Iterator[None]:
    """Re-raise a DuckDB error as the ``eventsourcing`` persistence exception it matches.

    DuckDB follows the DB-API exception hierarchy, so the mapping goes by the DB-API class
    (``ConstraintException`` is an ``IntegrityError``, ``ParserException`` a
    ``ProgrammingError``, and so on).
    """
    try:
        yield
    except duckdb.IntegrityError as e:
        raise IntegrityError(e) from e
    except duckdb.DataError as e:
        raise DataError(e) from e
    except duckdb.OperationalError as e:
        raise OperationalError(e) from e
    except duckdb.ProgrammingError as e:
        raise ProgrammingError(e) from e
    except duckdb.InternalError as e:
        raise InternalError(e) from e
    except duckdb.NotSupportedError as e:
        raise NotSupportedError(e) from e
    except duckdb.DatabaseError as e:
        raise DatabaseError(e) from e
    except duckdb.Error as e:
        raise InterfaceError(e) from e


class DuckDBDatastore:
    """One DuckDB database (a file, or ``:memory:``) opened by this process.

    DuckDB lets one process write a file; within it, each thread uses its own cursor of the
    one connection. Writes are serialised by a lock (the projection is the only writer);
    reads take a fresh cursor and see the last committed state.
    """

    def __init__(
        self,
        path: str | Path = ":memory:",
        *,
        read_only: bool = False,
        external_access: bool = True,
    ) -> None:
        self.path = str(path)
        self.read_only = read_only
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # Without external access, SQL cannot touch files other than the database itself
        # (no read_csv, COPY, ATTACH, extension installs): what a service answering
        # anyone's SELECT over NATS wants.
        config: dict[str, str | bool | int | float | list[str]] = (
            {} if external_access else {"enable_external_access": False}
        )
        with translate_errors():
            self._conn = duckdb.connect(self.path, read_only=read_only, config=config)
            # Timestamps come back in UTC whatever the host's zone (results go over the wire).
            self._conn.execute("SET GLOBAL TimeZone = 'UTC'")
        self._write_lock = threading.Lock()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor inside ``BEGIN … COMMIT``; any exception rolls back and is translated."""
        with self._write_lock, translate_errors():
            cursor = self._conn.cursor()
            try:
                cursor.begin()
                try:
                    yield cursor
                except BaseException:
                    cursor.rollback()
                    raise
                cursor.commit()
            finally:
                cursor.close()

    @contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor for reading (its own connection to the same database), errors translated."""
        with translate_errors():
            cursor = self._conn.cursor()
            try:
                yield cursor
            finally:
                cursor.close()

    def rows(self, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """The rows of a query as dicts (through Arrow: exact decimals, aware UTC times)."""
        with self.reader() as c:
            relation = c.sql(sql, params=params)
            if relation is None:
                return []
            rows: list[dict[str, Any]] = relation.to_arrow_table().to_pylist()
            return rows

    def close(self) -> None:
        """Close the database (a checkpoint writes the WAL into the file)."""
        with self._write_lock:
            self._conn.close()


class DuckDBTrackingRecorder(TrackingRecorder):
    """Tracking records in DuckDB: one row per upstream application, its last notification id."""

    tracking_table = "tracking"

    def __init__(self, datastore: DuckDBDatastore) -> None:
        self.datastore = datastore
        if not datastore.read_only:
            self.create_table()

    def construct_create_table_statements(self) -> list[str]:
        """DDL for the tables this recorder needs (subclasses add their own)."""
        return [
            f"CREATE TABLE IF NOT EXISTS {self.tracking_table} ("
            "application_name VARCHAR PRIMARY KEY, "
            "notification_id BIGINT NOT NULL)"
        ]

    def create_table(self) -> None:
        """Create the tables if missing (idempotent)."""
        with self.datastore.transaction() as c:
            for statement in self.construct_create_table_statements():
                c.execute(statement)

    def insert_tracking(self, tracking: Tracking) -> None:
        """Record ``tracking`` on its own (rows written with it use :meth:`_insert_tracking`)."""
        with self.datastore.transaction() as c:
            self._insert_tracking(c, tracking)

    def _insert_tracking(self, c: duckdb.DuckDBPyConnection, tracking: Tracking) -> None:
        """Advance the position inside the caller's transaction.

        A notification id at or below the recorded one is refused with ``IntegrityError``:
        it was processed already (a duplicate), or it would fill a gap behind the position.
        """
        row = c.execute(
            f"SELECT notification_id FROM {self.tracking_table} WHERE application_name = ?",
            [tracking.application_name],
        ).fetchone()
        if row is None:
            c.execute(
                f"INSERT INTO {self.tracking_table} VALUES (?, ?)",
                [tracking.application_name, tracking.notification_id],
            )
        elif row[0] < tracking.notification_id:
            c.execute(
                f"UPDATE {self.tracking_table} SET notification_id = ? WHERE application_name = ?",
                [tracking.notification_id, tracking.application_name],
            )
        else:
            msg = (
                f"tracking for {tracking.application_name} is at {row[0]}: "
                f"notification {tracking.notification_id} was already processed"
            )
            raise IntegrityError(msg)

    def max_tracking_id(self, application_name: str) -> int | None:
        """The last notification id recorded for ``application_name``, or ``None``."""
        with self.datastore.reader() as c:
            try:
                row = c.execute(
                    f"SELECT notification_id FROM {self.tracking_table} WHERE application_name = ?",
                    [application_name],
                ).fetchone()
            except duckdb.CatalogException:
                return None  # a read-only file written before any tracking
        return None if row is None else int(row[0])
