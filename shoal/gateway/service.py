"""``shoal gateway``: the model gateway (and the MCP gateway) as one service.

Every replica is alike and keeps no state of its own: keys, kill switches, reservations,
rate windows and cached answers are in JetStream KV; records go to the event log. Run as
many as the load needs behind any HTTP load balancer.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from shoal.agents.digest import load_digest_key
from shoal.agents.killswitch import KillWatcher
from shoal.aggregates.pricing import PriceTable
from shoal.bus import Bus
from shoal.bus.genai import GenAI
from shoal.errors import PortInUse
from shoal.gateway.cache import ResponseCache
from shoal.gateway.config import GatewayConfig
from shoal.gateway.keys import KeyMirror
from shoal.gateway.ledger import Ledger
from shoal.gateway.model import ModelGateway
from shoal.gateway.policy import GatewayPolicy
from shoal.gateway.record import Recorder
from shoal.gateway.upstream import Upstreams
from shoal.policy import Approvals, PolicyBook
from shoal.schemas import new_id

__all__ = ["RunningGateway", "run_gateway"]

log = logging.getLogger(__name__)


@dataclass
class RunningGateway:
    """A started gateway: where it listens and its parts (tests look inside)."""

    url: str
    mcp_url: str | None
    model: ModelGateway
    replica: str


@contextlib.asynccontextmanager
async def run_gateway(
    bus: Bus,
    config: GatewayConfig,
    *,
    prices: PriceTable | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    mcp_port: int | None = None,
    genai: GenAI | None = None,
    replica: str | None = None,
) -> AsyncIterator[RunningGateway]:
    """Start the gateway on ``host:port`` (0: a free port); stop and drain on exit."""
    replica = replica or new_id()
    prices = prices or PriceTable.load(bus.settings.price_table)
    kills = KillWatcher(bus)
    keys = KeyMirror(bus)
    upstreams = Upstreams(config)
    await kills.start()
    await keys.start()
    await upstreams.start()
    ledger = Ledger(await bus.kv(bus.topology.budgets.name), config.reservation_ttl_s)
    cache = ResponseCache(await bus.kv(bus.topology.responses.name), config.cache.ttl_s)
    recorder = Recorder(bus, replica)
    book = await PolicyBook.open(bus, bus.settings.request_timeout)
    digest_key = load_digest_key(bus.settings)
    policy = GatewayPolicy(
        book,
        await Approvals.open(bus),
        recorder,
        approval_timeout_s=bus.settings.approval_timeout_s,
        digest_key=digest_key,
    )
    gateway = ModelGateway(
        config=config,
        prices=prices,
        kills=kills,
        keys=keys,
        ledger=ledger,
        cache=cache,
        upstreams=upstreams,
        recorder=recorder,
        genai=genai or GenAI.disabled(),
        policy=policy,
    )
    app = web.Application(client_max_size=32 * 1024 * 1024)
    gateway.routes(app)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    mcp = None
    try:
        try:
            await site.start()
        except OSError as e:
            raise PortInUse(
                f"the model gateway cannot listen on {host}:{port}: {e.strerror}"
            ) from e
        bound = runner.addresses[0][1]
        mcp_url = None
        if mcp_port is not None:
            from shoal.gateway.mcp import McpGateway

            mcp = McpGateway(
                bus,
                config,
                kills=kills,
                keys=keys,
                recorder=recorder,
                genai=gateway.genai,
                policy=policy,
                digest_key=digest_key,
            )
            mcp_url = await mcp.start(host, mcp_port)
        yield RunningGateway(f"http://{host}:{bound}/v1", mcp_url, gateway, replica)
    finally:
        policy.release()  # parked calls answer 503 now, not after the shutdown timeout
        if mcp is not None:
            await mcp.stop()
        await runner.cleanup()
        await gateway.drain()
        await upstreams.stop()
        await keys.stop()
        await kills.stop()
        await book.close()
