from __future__ import annotations

import pytest
from nats.js import api

from shoal.bus import Bus, ShoalSettings, Topology
from shoal.errors import ConfigConflict


async def test_provisioning_twice_creates_once_and_changes_nothing(bus: Bus) -> None:
    # The fixture provisioned once already.
    before = {s.name: (await bus.js.stream_info(s.name)).config for s in bus.topology.streams}
    assert await bus.provision() == []
    after = {s.name: (await bus.js.stream_info(s.name)).config for s in bus.topology.streams}
    assert before == after
    p = bus.settings.stream_prefix
    assert set(after) == {
        f"{p}_GOALS",
        f"{p}_TASKS",
        f"{p}_EVENTS",
        f"{p}_CONTROL",
        f"{p}_DEADLETTER",
    }


async def test_first_provisioning_reports_everything_it_created(settings: ShoalSettings) -> None:
    async with Bus.connect(settings.nats_url or "", settings) as b:
        created = await b.provision()
    p = settings.stream_prefix
    assert created == [
        f"{p}_GOALS",
        f"{p}_TASKS",
        f"{p}_EVENTS",
        f"{p}_CONTROL",
        f"{p}_DEADLETTER",
        f"{p}_fleets",
        f"{p}_kill",
        f"{p}_presence",
        f"{p}_leases",
        f"{p}_policies",
        f"{p}_approvals",
        f"{p}_deadletter",
    ]


async def test_streams_have_the_contracted_retention_and_subjects(bus: Bus) -> None:
    tasks = (await bus.js.stream_info(bus.topology.tasks.name)).config
    events = (await bus.js.stream_info(bus.topology.events.name)).config
    assert tasks.retention == api.RetentionPolicy.WORK_QUEUE
    assert events.retention == api.RetentionPolicy.LIMITS
    assert events.subjects == [f"{bus.settings.prefix}.events.>"]
    assert events.duplicate_window == 120.0


async def test_a_conflicting_existing_stream_is_reported_not_replaced(
    settings: ShoalSettings,
) -> None:
    topology = Topology.for_settings(settings)
    async with Bus.connect(settings.nats_url or "", settings) as b:
        # Someone created the events stream by hand with other settings.
        await b.js.add_stream(
            name=topology.events.name,
            subjects=list(topology.events.subjects),
            retention=api.RetentionPolicy.INTEREST,
            duplicate_window=10,
        )
        with pytest.raises(ConfigConflict) as info:
            await b.provision()
        message = str(info.value)
        assert f"stream {topology.events.name} exists with other settings" in message
        assert "retention is 'interest', shoal wants 'limits'" in message
        assert "duplicate_window_s is 10.0, shoal wants 120.0" in message
        kept = await b.js.stream_info(topology.events.name)
        assert kept.config.retention == api.RetentionPolicy.INTEREST
