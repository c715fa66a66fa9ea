"""Persistence settings for the ``eventsourcing`` applications of the core.

SQLite under the data dir by default; PostgreSQL with ``PERSISTENCE_MODULE=eventsourcing.postgres``
and the library's own ``POSTGRES_*`` variables (``POSTGRES_DBNAME``, ``POSTGRES_HOST``,
``POSTGRES_PORT``, ``POSTGRES_USER``, ``POSTGRES_PASSWORD``), which the library reads itself.
"""

from __future__ import annotations

import os

from shoal.bus import ShoalSettings
from shoal.bus.settings import DEFAULT_PREFIX

__all__ = ["application_env", "tenant_schema"]


def tenant_schema(prefix: str) -> str:
    """The PostgreSQL schema of a tenant's core tables (``shoal_<prefix>``, lower-case)."""
    return "shoal_" + prefix.lower().replace("-", "_")


def ensure_schema(env: dict[str, str]) -> None:
    """Create the tenant's schema if missing (the library creates tables, not schemas)."""
    import psycopg
    from psycopg import sql

    conninfo = psycopg.conninfo.make_conninfo(
        dbname=env.get("POSTGRES_DBNAME", ""),
        host=env.get("POSTGRES_HOST", ""),
        port=env.get("POSTGRES_PORT", ""),
        user=env.get("POSTGRES_USER", ""),
        password=env.get("POSTGRES_PASSWORD", ""),
    )
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(env["POSTGRES_SCHEMA"]))
        )


def application_env(
    settings: ShoalSettings, dbname: str = "core", part: str | None = None
) -> dict[str, str]:
    """The ``env`` to give an eventsourcing Application built from these settings.

    ``part`` names one core partition (``p0of2``): its own SQLite file
    (``core-p0of2.sqlite``), or with PostgreSQL its own schema in the same database
    (``shoal_<prefix>_p0of2``: the same table names, its own tracking rows).
    """
    env = {"PERSISTENCE_MODULE": settings.persistence_module}
    if settings.persistence_module == "eventsourcing.sqlite":
        settings.store_dir.mkdir(parents=True, exist_ok=True)
        name = f"{dbname}-{part}" if part else dbname
        env["SQLITE_DBNAME"] = str((settings.store_dir / f"{name}.sqlite").resolve())
        env["SQLITE_LOCK_TIMEOUT"] = "10"
    else:
        # The library reads POSTGRES_* from the environment; pass them through explicitly so
        # an Application built with this env sees the same values in any thread.
        env.update({k: v for k, v in os.environ.items() if k.startswith("POSTGRES_")})
        if settings.prefix != DEFAULT_PREFIX or part:
            # One schema per tenant (and per partition): the same table names, never the
            # same rows.
            schema = tenant_schema(settings.prefix)
            env["POSTGRES_SCHEMA"] = f"{schema}_{part}" if part else schema
            ensure_schema(env)
    return env
