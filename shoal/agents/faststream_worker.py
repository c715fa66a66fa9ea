"""Serve shoal capabilities from FastStream: ``@worker.subscriber("cap")`` handlers.

A team that already runs FastStream services keeps its broker, its app and its handlers'
style; each handler becomes a shoal capability with everything the SDK's runtime gives it:

.. code-block:: python

    from faststream import FastStream
    from shoal.agents import Agent, CapabilityManifest, TaskContext
    from shoal.agents.faststream_worker import FastStreamWorker
    from shoal.bus import ShoalSettings

    agent = Agent("shouter", fleet="wire", manifest=CapabilityManifest(models=("gpt-4o-mini",)))
    worker = FastStreamWorker(agent, ShoalSettings())  # NATS_URL, NATS_CREDS, SHOAL_INSTANCE…

    @worker.subscriber("shout")
    async def shout(ctx: TaskContext, task: Words) -> Shouted:
        answer = await ctx.model.complete(task.text)        # the model gateway, as in the SDK
        return Shouted(text=answer.text.upper())

    app = FastStream(worker.broker, on_startup=[worker.start], on_shutdown=[worker.stop])

What each piece is, and where it comes from (nothing here re-implements the contract):

- **The broker** is a FastStream ``NatsBroker`` connected with shoal's connect options
  (:func:`shoal_broker`): the instance's own credentials (``NATS_CREDS``) and the private
  reply inbox they allow. Pass ``broker=`` to use one of your own, connected the same way.
- **The subscription** is ``broker.subscriber(<p>.tasks.<fleet>.<cap>, stream=<P>_TASKS,
  durable=<fleet>_<cap>, pull_sub=PullSub(...), ack_policy=MANUAL)``: a pull subscriber
  bound to the capability's shared durable consumer, which the runtime provisions with
  shoal's config (ack wait, ``max_deliver``) before the broker subscribes. It appears in
  the broker's AsyncAPI document like any other subscriber.
- **Each delivery** goes to the SDK's :class:`~shoal.agents.tasks.TaskRunner`, the same code
  ``shoal agent run`` uses: envelope validation and dead letters, ``task.started`` /
  ``task.completed`` / ``task.failed``, retries with back-off and the terminal failure, the
  recorded-completion check on redelivery, ``+WPI`` keep-alives, the gateways
  (``model.called``, ``tool.called``, ``policy.decided``, budgets, approvals) and kills that
  cancel the handler and settle its delivery.
- **Registration and presence** come from :class:`~shoal.agents.runtime.AgentRuntime`
  started with ``consume=False``: ``agent.started`` before the first task, heartbeats,
  ``agent.stopped`` on a drain.
- **Kill switches**: the moment ``instance.<id>``, ``fleet.<name>`` or ``all`` is set the
  subscribers stop (no delivery burns an attempt on a killed instance) and :meth:`serve`
  ends: a killed instance id is final for the core (docs/agents.md §3, "After a kill"), so
  the process exits and a new one registers under a new id. Inside :meth:`running` (no
  ``serve``) they start again when the switch is lifted.

Throughput is FastStream's pull path (DESIGN.md: ~7-8k msg/s per handler), below the SDK's
own consumer; the SDK's runtime stays the measured fast path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsCredentials, PullSub
from faststream.nats.annotations import NatsMessage

from shoal.agents.agent import Agent, HandlerFn
from shoal.agents.consumer import consumer_name
from shoal.agents.runtime import AgentRuntime
from shoal.bus import Bus, KillSwitch, ShoalSettings, Subjects, Topology
from shoal.bus.connectopts import connect_options

__all__ = ["FastStreamWorker", "shoal_broker"]

log = logging.getLogger(__name__)

PULL_TIMEOUT_S = 1.0
"""How long one pull request waits for tasks before the subscriber asks again."""


def shoal_broker(settings: ShoalSettings, url: str | None = None) -> NatsBroker:
    """A FastStream ``NatsBroker`` that connects as ``settings`` say (credentials, private
    inbox, TLS), with FastStream's per-message logging off."""
    options = connect_options(settings)
    creds = options.pop("user_credentials", None)
    if creds is not None:  # FastStream's own form of a creds file (and the TLS with it)
        options["security"] = NatsCredentials(creds, ssl_context=options.pop("tls", None))
    return NatsBroker(
        url or settings.nats_url or "nats://127.0.0.1:4222",
        logger=None,
        graceful_timeout=settings.task_ack_wait_s,
        **options,
    )


class _Runtime(AgentRuntime):
    """The SDK runtime without its own consumption: it tells the worker about pauses."""

    def __init__(self, bus: Bus, agent: Agent, on_pause: Callable[[], None], **kw: Any) -> None:
        super().__init__(bus, agent, consume=False, **kw)
        self._on_pause = on_pause

    def _on_kill(self, key: str, switch: KillSwitch | None) -> None:
        super()._on_kill(key, switch)
        self._on_pause()


class FastStreamWorker:
    """One shoal agent instance whose capabilities are FastStream subscribers."""

    def __init__(
        self,
        agent: Agent,
        settings: ShoalSettings,
        *,
        broker: NatsBroker | None = None,
        url: str | None = None,
        instance: str | None = None,
        version: str | None = None,
        concurrency: int = 1,
    ) -> None:
        self.agent = agent
        self.settings = settings
        self.broker = broker or shoal_broker(settings, url)
        self.instance = instance
        self.version = version
        self.concurrency = concurrency
        self.runtime: AgentRuntime | None = None
        self._subjects = Subjects(settings.prefix)
        self._topology = Topology.for_settings(settings)
        self._subscribers: list[Any] = []
        self._paused = False
        self._pausing: asyncio.Task[None] | None = None
        self.killed = asyncio.Event()
        """Set when a kill stops this instance (``instance``, ``fleet`` or ``all``)."""
        self.kill_reason = ""

    def subscriber(self, capability: str) -> Callable[[HandlerFn], HandlerFn]:
        """Serve ``capability`` with an SDK-style handler ``async def fn(ctx, task)``,
        delivered by a FastStream pull subscriber on the capability's task subject."""

        def register(fn: HandlerFn) -> HandlerFn:
            self.agent.handler(capability)(fn)
            cap = next(c for c, h in self.agent.handlers.items() if h.fn is fn)
            inbox = connect_options(self.settings).get("inbox_prefix", "_INBOX")
            sub = self.broker.subscriber(
                self._subjects.tasks(self.agent.fleet, cap),
                stream=JStream(self._topology.tasks.name, declare=False),
                durable=consumer_name(self.agent.fleet, cap),
                pull_sub=PullSub(batch_size=self.concurrency, timeout=PULL_TIMEOUT_S),
                ack_policy=AckPolicy.MANUAL,  # the runner acks, naks or terms itself
                no_reply=True,
                inbox_prefix=f"{inbox}.".encode(),
                title=f"{self.agent.fleet}/{self.agent.name}: {cap}",
                description=(fn.__doc__ or f"shoal capability {cap}").strip(),
            )
            sub(self._deliver)
            self._subscribers.append(sub)
            return fn

        return register

    async def _deliver(self, message: NatsMessage) -> None:
        runtime = self.runtime
        if runtime is None:  # a delivery before start() finished: back to the queue
            await message.raw_message.nak()
            return
        await runtime.runner.handle_task(message.raw_message)

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect, provision the consumers, register (``agent.started``), heartbeat. Call it
        before the broker starts (FastStream's ``on_startup``)."""
        nc = await self.broker.connect()
        bus = Bus(nc, self.settings)
        self.runtime = _Runtime(
            bus,
            self.agent,
            self._pause_changed,
            instance=self.instance,
            version=self.version,
            concurrency=self.concurrency,
        )
        await self.runtime.start()
        self._paused = False
        self._pause_changed()

    async def stop(self) -> None:
        """Stop taking tasks, let the runner settle what runs, ``agent.stopped``. Call it
        before the broker stops (FastStream's ``on_shutdown``)."""
        for sub in self._subscribers:
            await sub.stop()
        if self._pausing is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._pausing
        if self.runtime is not None:
            await self.runtime.stop(self.runtime.stop_reason or "stopped")

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FastStreamWorker]:
        """Start the worker and its broker; stop both on exit."""
        await self.start()
        try:
            await self.broker.start()
            if self._paused:  # killed before it started: subscribed once the switch lifts
                for sub in self._subscribers:
                    await sub.stop()
            yield self
        finally:
            await self.stop()
            await self.broker.stop()

    async def serve(self, stop: asyncio.Event | None = None) -> str:
        """Run until ``stop`` is set or this instance is killed; return why it ended."""
        stop = stop or asyncio.Event()
        async with self.running() as worker:
            killed = asyncio.create_task(worker.killed.wait())
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({killed, stopped}, return_when=asyncio.FIRST_COMPLETED)
            for task in (killed, stopped):
                task.cancel()
            return worker.kill_reason or "stopped"

    # -- kill switches --------------------------------------------------------------------------
    def _pause_changed(self) -> None:
        runtime = self.runtime
        if runtime is None or runtime.paused() == self._paused:
            return
        self._paused = runtime.paused()
        found = runtime.pausing_kill()
        if found is not None and not self.killed.is_set():
            key, switch = found
            self.kill_reason = f"killed ({key}) by {switch.by}" + (
                f": {switch.reason}" if switch.reason else ""
            )
            self.killed.set()
        previous = self._pausing

        async def apply(paused: bool) -> None:
            if previous is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await previous
            for sub in self._subscribers:
                try:
                    await (sub.stop() if paused else sub.start())
                except Exception as e:  # visible, and the runner still settles deliveries
                    what = "pause" if paused else "resume"
                    log.error("subscriber %s: could not %s: %s", sub.subject, what, e)

        self._pausing = asyncio.get_running_loop().create_task(apply(self._paused))
