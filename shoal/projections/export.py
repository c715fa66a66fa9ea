"""Export: every table of the projection as a Parquet file, for BI tools and data lakes.

Rows stream from DuckDB as Arrow record batches into pyarrow's Parquet writer, so memory
stays bounded whatever the table's size (and the database may keep external access off).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict

from shoal.errors import Refused
from shoal.projections.recorder import DuckDBDatastore
from shoal.projections.schema import TABLES

__all__ = ["ExportedTable", "export_parquet"]


class ExportedTable(BaseModel):
    """One written file."""

    model_config = ConfigDict(frozen=True)
    table: str
    path: str
    rows: int


def export_parquet(ds: DuckDBDatastore, directory: Path) -> list[ExportedTable]:
    """Write ``<directory>/<table>.parquet`` for every table (the directory is created)."""
    if not directory.is_absolute():
        raise Refused(f"export needs an absolute directory (got {directory})")
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    with ds.reader() as c:
        # One snapshot for every table: the files agree with each other.
        c.execute("BEGIN TRANSACTION READ ONLY")
        try:
            for table in TABLES:
                path = directory / f"{table.name}.parquet"
                relation = c.sql(f"SELECT * FROM {table.name}")
                assert relation is not None
                reader = relation.to_arrow_reader(batch_size=100_000)
                rows = 0
                with pq.ParquetWriter(path, reader.schema) as writer:
                    for batch in reader:
                        writer.write_batch(batch)
                        rows += batch.num_rows
                written.append(ExportedTable(table=table.name, path=str(path), rows=rows))
        finally:
            c.execute("ROLLBACK")
    return written
