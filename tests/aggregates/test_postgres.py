"""The core on PostgreSQL (``PERSISTENCE_MODULE=eventsourcing.postgres``), a real server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal

import psycopg
import pytest

from shoal.aggregates import CORE_CONSUMER, ShoalCore, open_core, run_core
from shoal.aggregates.persistence import tenant_schema
from shoal.bus import Bus, ShoalSettings
from tests.aggregates.eventmix import Mix, publish_all
from tests.natsproc import NatsProcess
from tests.pg import PostgresServer, find_pg_bin


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb)")
    server = PostgresServer(bin_dir).start()
    yield server
    server.stop()


@pytest.fixture
def pg_settings(
    postgres: PostgresServer, settings: ShoalSettings, monkeypatch: pytest.MonkeyPatch
) -> ShoalSettings:
    dbname = postgres.create_database()
    for key, value in postgres.env(dbname).items():
        monkeypatch.setenv(key, value)
    return settings.model_copy(update={"persistence_module": "eventsourcing.postgres"})


async def ingest(settings: ShoalSettings) -> ShoalCore:
    assert settings.nats_url
    await asyncio.wait_for(
        run_core(settings, settings.nats_url, asyncio.Event(), until_idle=True), 60
    )
    return open_core(settings)


async def test_the_core_records_sessions_and_tracking_in_postgres(
    bus: Bus, pg_settings: ShoalSettings, postgres: PostgresServer
) -> None:
    mix = Mix(seed=41).until(300)
    await publish_all(bus, mix.events)

    app = await ingest(pg_settings)

    sessions = app.sessions()
    assert len(sessions) == mix.sessions
    assert sum((s.cost_usd for s in sessions), Decimal(0)) == mix.cost
    assert app.max_tracking_id(bus.topology.events.name) == len(mix.events)
    dbname = pg_settings_db(app)
    schema = tenant_schema(pg_settings.prefix)
    with psycopg.connect(postgres.dsn(dbname)) as conn:
        row = conn.execute(
            f"SELECT notification_id FROM {schema}.shoalcore_tracking WHERE application_name = %s",
            (bus.topology.events.name,),
        ).fetchone()
        public = conn.execute("SELECT to_regclass('public.shoalcore_tracking')").fetchone()
    assert row == (len(mix.events),)
    assert public == (None,)  # the test's prefix is a tenant: nothing in the public schema
    app.close()


async def test_tenants_on_one_postgres_database_never_share_sessions(
    nats_server: NatsProcess, pg_settings: ShoalSettings
) -> None:
    tenants = [pg_settings.model_copy(update={"prefix": f"{pg_settings.prefix}{t}"}) for t in "ab"]
    for n, tenant in enumerate(tenants):
        async with Bus.connect(nats_server.url, tenant) as bus:
            await bus.provision()
            await publish_all(bus, Mix(seed=60 + n).until(50 + 100 * n).events)
    apps = [await ingest(t) for t in tenants]

    iids = [set(app.session_iids()) for app in apps]
    assert iids[0] and iids[1] and not iids[0] & iids[1]
    assert [len(i) for i in iids] == [Mix(seed=60 + n).until(50 + 100 * n).sessions for n in (0, 1)]
    for app in apps:
        app.close()


async def test_a_reset_consumer_on_postgres_applies_nothing_twice(
    bus: Bus, pg_settings: ShoalSettings
) -> None:
    mix = Mix(seed=42).until(300)
    await publish_all(bus, mix.events)
    first = await ingest(pg_settings)
    before = {s.iid: s.summary() for s in first.sessions()}
    notifications = first.recorder.max_notification_id()
    first.close()

    await bus.js.delete_consumer(bus.topology.events.name, CORE_CONSUMER)
    again = await ingest(pg_settings)

    assert again.recorder.max_notification_id() == notifications
    assert {s.iid: s.summary() for s in again.sessions()} == before
    again.close()


async def test_a_batch_of_only_dead_letters_still_advances_tracking_on_postgres(
    bus: Bus, pg_settings: ShoalSettings
) -> None:
    await bus.js.publish(bus.subjects.event(None, "s-bad", "model.called"), b"garbage")

    app = await ingest(pg_settings)

    assert app.max_tracking_id(bus.topology.events.name) == 1
    assert app.recorder.max_notification_id() is None
    app.close()


def pg_settings_db(app: ShoalCore) -> str:
    dbname = app.env.get("POSTGRES_DBNAME")
    assert dbname
    return dbname
