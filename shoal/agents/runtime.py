"""The runtime: one agent instance consuming its capabilities' task subjects.

Lifecycle: provision its durable consumers (shared by every instance of the agent), load
the kill switches, emit ``agent.started``, heartbeat presence, consume tasks with bounded
concurrency; on :meth:`AgentRuntime.stop` stop taking tasks, let in-flight ones finish
(or release them after the drain timeout), emit ``agent.stopped`` and delete the presence
key. ``agent.*`` events use the instance id as their IID: an instance's life is its own
session on the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING

from nats.aio.msg import Msg
from nats.js import api
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from shoal.agents.agent import Agent
from shoal.agents.consumer import PullConsumer, consumer_name
from shoal.agents.http_model import OpenAICompatibleClient
from shoal.agents.killswitch import KillWatcher
from shoal.agents.models import ModelClient, OfflineModelClient
from shoal.agents.policy import Policy
from shoal.agents.session import Emitter, Identity, Session
from shoal.agents.tasks import TaskRunner
from shoal.agents.tools import ToolEnv
from shoal.bus import Bus, KillSwitch, Presence, ShoalSettings, kill_key, presence_key
from shoal.bus.genai import GenAI
from shoal.errors import ConfigConflict
from shoal.policy import Approvals, PolicyBook
from shoal.schemas import AgentStarted, AgentStopped, new_id, utcnow
from shoal.schemas.pricing import PriceTable

if TYPE_CHECKING:
    from shoal.agents.mcp_tools import McpGatewayTools

__all__ = ["AgentRuntime", "default_mcp_tools", "default_model_clients", "ensure_consumer"]

log = logging.getLogger(__name__)


def default_model_clients(settings: ShoalSettings) -> list[ModelClient]:
    """The offline models, plus the OpenAI-compatible endpoint when settings name one."""
    if settings.gateway_url and settings.gateway_key:  # one enforcement point: the gateway
        from shoal.agents.gateway_model import GatewayModelClient

        return [GatewayModelClient(settings.gateway_url, settings.gateway_key)]
    clients: list[ModelClient] = [OfflineModelClient(prices=PriceTable.load(settings.price_table))]
    if settings.model_base_url and settings.model_name:
        clients.insert(
            0,
            OpenAICompatibleClient(
                settings.model_base_url, settings.model_name, settings.model_api_key
            ),
        )
    return clients


def default_mcp_tools(settings: ShoalSettings) -> McpGatewayTools | None:
    """The MCP gateway, for tools served by MCP servers, when settings name it and a key."""
    if settings.gateway_mcp_url and settings.gateway_key:
        from shoal.agents.mcp_tools import McpGatewayTools

        return McpGatewayTools(settings.gateway_mcp_url, settings.gateway_key)
    return None


async def ensure_consumer(
    bus: Bus, stream: str, durable: str, filter_subject: str
) -> api.ConsumerInfo:
    """Bind to the shared durable consumer, creating it if it does not exist yet.

    An existing consumer is used as it is, never updated (the server would silently apply
    a new config to every instance): differing settings are logged.
    """
    s = bus.settings
    config = api.ConsumerConfig(
        # The name makes nats-py create it on ``CONSUMER.CREATE.<stream>.<durable>.<filter>``,
        # the one form an instance's credentials allow (the server checks the filter).
        name=durable,
        durable_name=durable,
        filter_subject=filter_subject,
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_wait=s.task_ack_wait_s,
        # One delivery more than the attempts: if an instance dies during the last attempt,
        # the extra delivery lets the next one record the final task.failed (never silent).
        max_deliver=s.task_max_deliver + 1,
        max_ack_pending=20_000,
        max_waiting=4096,
    )
    try:
        info: api.ConsumerInfo = await bus.js.consumer_info(
            stream, durable, timeout=s.request_timeout
        )
    except NotFoundError:
        try:
            created: api.ConsumerInfo = await bus.js.add_consumer(
                stream, config, timeout=s.request_timeout
            )
        except BadRequestError as e:
            raise ConfigConflict(
                f"cannot create consumer {durable} on {stream}: {e.description}"
            ) from e
        return created
    differences = [
        f"{name} is {got!r}, not {want!r}"
        for name, got, want in (
            ("filter_subject", info.config.filter_subject, filter_subject),
            ("ack_wait", info.config.ack_wait, config.ack_wait),
            ("max_deliver", info.config.max_deliver, config.max_deliver),
        )
        if got != want
    ]
    if differences:
        log.warning(
            "consumer %s exists with %s; using it as it is", durable, "; ".join(differences)
        )
    return info


class AgentRuntime:
    """One running instance of ``agent``; use ``async with runtime.running():``."""

    KILLED_DRAIN_S = 1.0

    def __init__(
        self,
        bus: Bus,
        agent: Agent,
        *,
        instance: str | None = None,
        concurrency: int = 8,
        version: str | None = None,
        model_clients: Sequence[ModelClient] | None = None,
        supervisor: str | None = None,
        slot: int | None = None,
        drain_timeout_s: float | None = None,
        genai: GenAI | None = None,
        consume: bool = True,
    ) -> None:
        self.bus = bus
        self.genai = genai or GenAI.disabled()  # spans and metrics (setup_telemetry)
        self.agent = agent
        self.settings = bus.settings
        self.identity = Identity(
            agent.fleet, agent.name, instance or new_id(), version or agent.version
        )
        self.concurrency = concurrency
        self.supervisor = supervisor
        self.slot = slot
        self.drain_timeout_s = drain_timeout_s or self.settings.task_ack_wait_s
        self.emitter = Emitter(bus, self.identity)
        self.kills = KillWatcher(bus, on_change=self._on_kill)
        self.policy = Policy(self.identity, agent.manifest, self.kills, self.emitter)
        self.model_clients = list(model_clients or default_model_clients(self.settings))
        self.tool_env = ToolEnv.for_settings(self.settings)
        self.mcp_tools = default_mcp_tools(self.settings)
        self.runner = TaskRunner(self)
        self.consumers: list[PullConsumer] = []
        # False: deliveries come from elsewhere (a FastStream subscriber) and are handed to
        # ``runner.handle_task``; the runtime still provisions the shared consumers.
        self.consume = consume
        self.started_at: datetime = utcnow()
        self.killed = asyncio.Event()
        self.stop_reason = ""
        self._tasks: list[asyncio.Task[None]] = []
        self.life = Session(iid=self.identity.instance)
        self._announced = False
        ident = self.identity
        self._pause_keys = (
            kill_key("instance", ident.instance),
            kill_key("fleet", ident.fleet),
            kill_key("all"),
        )
        self.presence_kv: KeyValue | None = None

    # -- lifecycle --------------------------------------------------------------------------
    @asynccontextmanager
    async def running(self) -> AsyncIterator[AgentRuntime]:
        try:
            await self.start()
        except BaseException:
            await self.stop("failed to start")  # release what was set up, then report
            raise
        try:
            yield self
        finally:
            await self.stop(self.stop_reason or "stopped")

    async def start(self) -> None:
        """Subscribe, announce and begin heartbeating."""
        await self.kills.start(self.settings.request_timeout)
        self.policy.book = await PolicyBook.open(self.bus, self.settings.request_timeout)
        self.policy.approvals = await Approvals.open(self.bus)
        self.policy.approval_timeout_s = self.settings.approval_timeout_s
        self.policy.digest_key = self.tool_env.digest_key
        topo = self.bus.topology
        subjects = self.bus.subjects
        for capability in self.agent.handlers:
            subject = subjects.tasks(self.agent.fleet, capability)
            await self._add_consumer(topo.tasks.name, capability, subject, self.runner.handle_task)
        if self.agent.goal_handler is not None:
            subject = subjects.goals(self.agent.fleet)
            await self._add_consumer(topo.goals.name, "goals", subject, self.runner.handle_goal)
        self.presence_kv = await self.bus.kv(topo.presence.name)
        await self._heartbeat()
        await self.emitter.emit(
            AgentStarted(
                version=self.identity.version,
                capabilities=self.agent.capabilities,
                host=socket.gethostname(),
                pid=os.getpid(),
            ),
            self.life,
        )
        self._announced = True
        self.genai.instance_started(self.identity.fleet, self.identity.agent)
        for consumer in self.consumers:
            self._tasks.append(
                asyncio.create_task(consumer.run(), name=f"consume-{consumer.durable}")
            )
        self._tasks.append(asyncio.create_task(self._heartbeats(), name="presence"))
        self._tasks.append(asyncio.create_task(self._keep_alive(), name="keep-alive"))

    async def stop(self, reason: str = "stopped") -> None:
        """Drain: stop taking tasks, finish in-flight ones (release the rest), announce."""
        # Killed (or paused by a kill, then signalled by a supervisor): its work was
        # interrupted and settled already; only handlers ignoring their cancellation remain.
        killed = self.killed.is_set() or self.paused()
        timeout = self.KILLED_DRAIN_S if killed else self.drain_timeout_s
        results = await asyncio.gather(*(c.stop(timeout) for c in self.consumers))
        if not all(results):
            # Still running after the drain timeout: cancel; the runner naks on cancel so
            # another instance picks the task up at once.
            for consumer in self.consumers:
                for task in consumer.in_flight_tasks():
                    task.cancel()
            await asyncio.sleep(0.1)
        await self.runner.kills.settled(self.settings.request_timeout)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self.genai.instance_stopped(self.identity.fleet, self.identity.agent)
        # Best effort from here on (the server may be gone), but never silently.
        if self._announced:
            try:
                await self.emitter.emit(AgentStopped(reason=reason), self.life)
            except Exception as e:
                log.warning("agent.stopped not recorded: %s", e)
        if self.presence_kv is not None:
            try:
                await self.presence_kv.delete(self._presence_key)
            except Exception as e:
                log.warning("presence key not deleted (its TTL will expire it): %s", e)
        await self.kills.stop()
        if self.policy.book is not None:
            await self.policy.book.close()
        for client in self.model_clients:
            try:
                await client.aclose()
            except Exception as e:
                log.warning("model client %s did not close cleanly: %s", client.provider, e)

    # -- kill switches ----------------------------------------------------------------------
    def paused(self) -> bool:
        """No new tasks while the instance, its fleet or the platform is killed."""
        return self.pausing_kill() is not None

    def pausing_kill(self) -> tuple[str, KillSwitch] | None:
        """The ``instance``, ``fleet`` or ``all`` switch that stops this instance, if set."""
        return self.kills.match(self._pause_keys)

    def _on_kill(self, key: str, switch: KillSwitch | None) -> None:
        if switch is not None:
            # First the work in flight: cancelled, its calls refused, its delivery settled.
            self.runner.kills.on_kill(key, switch)
        if switch is not None and key == kill_key("instance", self.identity.instance):
            self.stop_reason = f"killed by {switch.by}" + (
                f": {switch.reason}" if switch.reason else ""
            )
            self.killed.set()
        for consumer in self.consumers:
            consumer.wake()  # a lifted switch resumes consumption at once

    # -- presence ---------------------------------------------------------------------------
    @property
    def _presence_key(self) -> str:
        i = self.identity
        return presence_key(i.fleet, i.agent, i.instance)

    async def _heartbeat(self) -> None:
        i = self.identity
        assert self.presence_kv is not None, "heartbeat before start"
        presence = Presence(
            instance=i.instance,
            fleet=i.fleet,
            agent=i.agent,
            version=i.version,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=self.started_at,
            heartbeat_at=utcnow(),
            capabilities=self.agent.capabilities,
            current_sessions=sorted(self.runner.current_sessions),
            supervisor=self.supervisor,
            slot=self.slot,
        )
        await asyncio.wait_for(
            self.presence_kv.put(self._presence_key, presence.model_dump_json().encode()),
            self.settings.request_timeout,
        )

    async def _keep_alive(self) -> None:
        # One loop for all in-flight tasks (not a timer per task: the hot path stays light).
        interval = self.settings.task_ack_wait_s / 3
        while True:
            await asyncio.sleep(interval / 2)
            try:
                await self.runner.keep_alive(older_than=interval)
            except Exception as e:  # the connection is down: the next turn retries
                log.warning("in-progress acks failed: %s", e)

    async def _heartbeats(self) -> None:
        interval = self.settings.presence_ttl_s / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self._heartbeat()
            except Exception as e:  # an outage must be visible, not fatal: retry next beat
                log.warning("presence heartbeat failed: %s", e)

    async def _add_consumer(
        self, stream: str, capability: str, subject: str, handle: Callable[[Msg], Awaitable[None]]
    ) -> None:
        durable = consumer_name(self.agent.fleet, capability)

        async def recreate() -> object:
            return await ensure_consumer(self.bus, stream, durable, subject)

        await recreate()
        if not self.consume:
            return
        self.consumers.append(
            PullConsumer(
                self.bus.nc,
                stream,
                durable,
                handle,
                max_inflight=self.concurrency,
                paused=self.paused,
                recreate=recreate,
            )
        )
