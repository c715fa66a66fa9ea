"""Supervised instances get a gateway key of their own: their ``ctx.model`` calls are the
gateway's records (in ``shoal cost`` with its figures), and the key dies with the instance."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from shoal.aggregates.fleet import FleetApplication
from shoal.bus import Bus, ShoalSettings
from shoal.gateway import KeyStore, RunningGateway, run_gateway
from shoal.gateway.offline import OfflineUpstream
from shoal.ops import kill as ops_kill
from shoal.ops.fleets import apply_fleet, open_fleet_app
from shoal.schemas import ModelCalled
from shoal.schemas.fleet import parse_fleet_spec
from tests.agents.conftest import of_type, submit_task, wait_events
from tests.gateway.conftest import cost_by_agent, gateway_price, offline_small
from tests.natsproc import NatsProcess
from tests.ops.fleetprocs import Supervisors, eventually, fleet_settings, procs_now

pytestmark = pytest.mark.timeout(150)

SPEC = """
fleet: chat
agents:
  - {name: chatter, target: "tests.gateway.supervised_agents:chat_agent"}
"""


@pytest.fixture
def settings(nats_server: NatsProcess, prefix: str, tmp_path: Path) -> ShoalSettings:
    return fleet_settings(nats_server, prefix, tmp_path)


@pytest.fixture
async def served(bus: Bus, upstream: tuple[str, OfflineUpstream]) -> AsyncIterator[RunningGateway]:
    config = offline_small(upstream[0])
    async with run_gateway(bus, config) as running:
        yield running


@pytest.fixture
def supervisors(
    settings: ShoalSettings, tmp_path: Path, served: RunningGateway
) -> Iterator[Supervisors]:
    sups = Supervisors(settings, tmp_path / "logs", env={"SHOAL_GATEWAY_URL": served.url})
    yield sups
    sups.stop_all()


@pytest.fixture
async def app(settings: ShoalSettings) -> AsyncIterator[FleetApplication]:
    application = open_fleet_app(settings)
    yield application
    application.close()


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode().partition("=")[::2] for e in raw if b"=" in e)


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_text()


async def status_with(url: str, secret: str) -> tuple[int, str]:
    body = {"model": "offline-small", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {secret}"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.post(f"{url}/chat/completions", json=body, headers=headers) as resp,
    ):
        doc = await resp.json()
        return resp.status, "" if resp.status == 200 else doc["error"]["code"]


async def test_a_supervised_instances_model_calls_are_the_gateways_and_its_key_dies_with_it(
    bus: Bus,
    app: FleetApplication,
    supervisors: Supervisors,
    settings: ShoalSettings,
    served: RunningGateway,
    prefix: str,
) -> None:
    await apply_fleet(bus, app, parse_fleet_spec(SPEC), by="tester")
    supervisors.start("sup-a")
    [proc] = await eventually(lambda: procs_now(prefix), lambda ps: len(ps) == 1, 45, "1")
    env = environ(proc.pid)
    secret = env["SHOAL_GATEWAY_KEY"]
    assert env["OPENAI_API_KEY"] == secret and env["SHOAL_GATEWAY_URL"] == served.url
    assert secret not in cmdline(proc.pid)
    assert secret not in supervisors.log("sup-a")
    [key] = await KeyStore(bus).list()
    assert (key.fleet, key.agent, key.instance) == ("chat", "chatter", proc.instance)
    assert key.manifest.models == ("offline-small",)  # the agent's declared manifest

    tasks = [await submit_task(bus, "chat", "chat", {"text": f"hello {n}"}) for n in range(2)]
    for task in tasks:
        await wait_events(
            bus,
            bus.subjects.session_events(task.iid),
            lambda e: of_type(e, "task.completed"),
            timeout=30,
        )
    await served.model.drain()
    calls = []
    for task in tasks:
        called = of_type(await bus.session_events(task.iid), "model.called")
        assert [e.source for e in called] == [f"shoal://gateway/{served.replica}"]
        assert called[0].instance == proc.instance
        assert isinstance(called[0].data, ModelCalled)
        calls.append(called[0].data)
    expected = gateway_price(calls)
    assert await cost_by_agent(settings) == ({"chatter": expected}, expected)

    await ops_kill.kill(bus, "instance", proc.instance, by="tester")
    assert (await status_with(served.url, secret))[0] in (401, 403)  # refused at once
    await eventually(lambda: procs_now(prefix), lambda ps: ps == [], 30, "instance gone")
    revoked = await eventually(
        lambda: KeyStore(bus).get(key.id),
        lambda k: k is not None and k.revoked_at is not None,
        30,
        "key revoked",
    )
    assert revoked is not None and revoked.revoked_by == "supervisor/sup-a"
    assert await status_with(served.url, secret) == (401, "invalid_api_key")
