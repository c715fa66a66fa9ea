"""Persistence settings for the ``eventsourcing`` applications of the core.

SQLite under the data dir by default; PostgreSQL with ``PERSISTENCE_MODULE=eventsourcing.postgres``
and the library's own ``POSTGRES_*`` variables (``POSTGRES_DBNAME``, ``POSTGRES_HOST``,
``POSTGRES_PORT``, ``POSTGRES_USER``, ``POSTGRES_PASSWORD``), which the library reads itself.
"""

from __future__ import annotations

import os

from shoal.bus import ShoalSettings

__all__ = ["application_env"]


def application_env(settings: ShoalSettings, dbname: str = "core") -> dict[str, str]:
    """The ``env`` to give an eventsourcing Application built from these settings."""
    env = {"PERSISTENCE_MODULE": settings.persistence_module}
    if settings.persistence_module == "eventsourcing.sqlite":
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        env["SQLITE_DBNAME"] = str((settings.data_dir / f"{dbname}.sqlite").resolve())
        env["SQLITE_LOCK_TIMEOUT"] = "10"
    else:
        # The library reads POSTGRES_* from the environment; pass them through explicitly so
        # an Application built with this env sees the same values in any thread.
        env.update({k: v for k, v in os.environ.items() if k.startswith("POSTGRES_")})
    return env
