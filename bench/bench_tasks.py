"""Benchmark: tasks through one fleet, dispatch latency, kill-switch latency — beside raw nats-py.

* **throughput**: N tasks pre-loaded on one capability's work queue; K in-process instances
  (each its own NATS connection, concurrency 16) with a trivial handler consume them. Per
  task: pull → validate → ``task.started`` (acked publish) → handler → ``task.completed``
  (acked publish) → ack. Measured from the instances' start to the N-th ``task.completed``.
* **ceiling**: raw nats-py on the same server: N pre-loaded messages on a work-queue stream,
  ``fetch(1000)`` + ``ack`` loop — no parsing, no events.
* **dispatch latency**: one task every 5 ms (low load); time from the publish call to the
  handler starting (same process, same clock), for K instances.
* **auth on**: the same throughput on shoal's embedded server (JWT auth), every instance
  connected with its own scoped credentials, interleaved with the auth-off rounds.
* **kill latency**: an operator connection puts ``instance.<id>`` in the kill bucket; time
  until the instance's gateway refuses a call (the local watcher has seen the key).

Run: ``uv run python bench/bench_tasks.py [--tasks N]``. Starts its own nats-server.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import nats
from nats.js import api

from shoal.agents import Agent, AgentRuntime, CapabilityManifest, Killed, TaskContext
from shoal.agents.killswitch import KillWatcher
from shoal.agents.policy import Policy
from shoal.agents.session import Emitter, Identity, Session
from shoal.auth import InstanceScope, KeyStore
from shoal.auth.issuer import InstanceIssuer
from shoal.bus import Bus, KillSwitch, ShoalSettings, kill_key
from shoal.ops.server import EmbeddedServer
from shoal.schemas import CloudEvent, TaskAssigned, new_id, utcnow
from tests.natsproc import NatsProcess

FLEET, CAPABILITY = "bench", "noop"


def noop_agent(started: dict[str, float] | None = None) -> Agent:
    agent = Agent("noop", fleet=FLEET, manifest=CapabilityManifest())

    @agent.handler(CAPABILITY)
    async def noop(ctx: TaskContext, task: dict[str, Any]) -> dict[str, Any]:
        if started is not None:
            started[ctx.iid] = time.perf_counter()
        return {}

    return agent


def task_event(n: int, capability: str = CAPABILITY) -> CloudEvent:
    return CloudEvent.new(
        TaskAssigned(capability=capability, input={"n": n}),
        iid=new_id(),
        principal="bench",
        source="shoal://cli/bench",
    )


async def raw_ceiling(url: str, n: int, events: bool = False) -> tuple[float, float]:
    """Raw nats-py work-queue drain rate (msgs/s): fetch(1000) + ack, nothing else.

    With ``events``: also what shoal does on the wire per task, without shoal — publish two
    pre-serialized events per message (pipelined) and ack once their acks are in.
    """
    nc = await nats.connect(url)
    js = nc.jetstream()
    name = "RAW_" + new_id()
    await js.add_stream(
        name=name, subjects=[f"raw.{name}"], retention=api.RetentionPolicy.WORK_QUEUE
    )
    await js.add_stream(name=name + "_EV", subjects=[f"rawev.{name}"])
    payload = task_event(0).to_json()
    for _ in range(n):
        await js.publish_async(f"raw.{name}", payload)
    await js.publish_async_completed()
    psub = await js.pull_subscribe(f"raw.{name}", durable="raw", stream=name)
    got = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while got < n:
        msgs = await psub.fetch(1000, timeout=5)
        if events:
            futures = []
            for _ in msgs:
                for _event in range(2):
                    futures.append(await js.publish_async(f"rawev.{name}", payload))
            await asyncio.gather(*futures)
        for m in msgs:
            await m.ack()
        got += len(msgs)
    await nc.flush()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    await js.delete_stream(name)
    await js.delete_stream(name + "_EV")
    await nc.close()
    return n / elapsed, n / cpu


async def connect(url: str, prefix: str) -> tuple[Any, Bus]:
    settings = ShoalSettings(nats_url=url, prefix=prefix, data_dir=Path(tempfile.mkdtemp()))
    stack = AsyncExitStack()
    bus = await stack.enter_async_context(Bus.connect(url, settings, name="bench"))
    return stack, bus


RuntimeFactory = Callable[..., AgentRuntime]
"""Builds one instance's runtime on its own connection (``instance=`` its id, with auth on)."""

Credentials = Callable[[str], ShoalSettings]
"""With auth on: the settings (its own creds) of the instance with this id."""


async def fleet_round(
    url: str,
    settings: ShoalSettings,
    n: int,
    instances: int,
    runtime: RuntimeFactory,
    capability: str = CAPABILITY,
    credentials: Credentials | None = None,
) -> tuple[float, float]:
    """Wall and CPU seconds for ``instances`` runtimes to complete ``n`` pre-loaded tasks.

    Shared with bench_tracing.py. ``settings`` should carry a fresh prefix (own streams).
    With ``credentials`` each instance connects as itself (auth on), else as ``settings``.
    """
    async with Bus.connect(url, settings, name="bench") as bus:
        await bus.provision()
        subject = bus.subjects.tasks(FLEET, capability)
        await bus.publish_many((subject, task_event(i, capability)) for i in range(n))
        done = 0
        finished = asyncio.Event()

        async def on_done(_: Any) -> None:
            nonlocal done
            done += 1
            if done >= n:
                finished.set()

        sub = await bus.nc.subscribe(bus.subjects.events_of_type("task.completed"), cb=on_done)
        # The fleet's kill switch holds every instance while they start (a paused instance
        # takes no task); lifting it is the start signal, so start-up is not measured.
        kill = await bus.kv(bus.topology.kill.name)
        hold = KillSwitch(scope="fleet", name=FLEET, by="bench", at=utcnow())
        await kill.put(kill_key("fleet", FLEET), hold.model_dump_json().encode())
        async with AsyncExitStack() as runtimes:
            for _ in range(instances):
                if credentials is None:
                    b = await runtimes.enter_async_context(Bus.connect(url, settings))
                    await runtimes.enter_async_context(runtime(b).running())
                    continue
                instance = new_id()
                b = await runtimes.enter_async_context(Bus.connect(url, credentials(instance)))
                await runtimes.enter_async_context(runtime(b, instance=instance).running())
            t0, c0 = time.perf_counter(), time.process_time()
            await kill.delete(kill_key("fleet", FLEET))
            await asyncio.wait_for(finished.wait(), 120)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        await sub.unsubscribe()
        return elapsed, cpu


async def shoal_throughput(
    url: str, n: int, instances: int, secured: ShoalSettings | None = None
) -> tuple[float, float]:
    """Tasks/s (wall, CPU); with ``secured`` (the embedded server's admin settings) on the
    auth-on server, each instance holding its own scoped credentials."""
    prefix = "b" + new_id()[-8:].lower()
    settings = ShoalSettings(nats_url=url, prefix=prefix, data_dir=Path(tempfile.mkdtemp()))
    credentials: Credentials | None = None
    if secured is not None:
        settings = secured.model_copy(update={"prefix": prefix})
        issuer = InstanceIssuer(KeyStore.for_data_dir(secured.data_dir), settings)

        def credentials(instance: str) -> ShoalSettings:
            scope = InstanceScope(FLEET, "noop", instance, (CAPABILITY,), ())
            return settings.model_copy(update={"nats_url": url, "creds": issuer.issue(scope)})

    elapsed, cpu = await fleet_round(
        url,
        settings,
        n,
        instances,
        lambda b, instance=None: AgentRuntime(
            b, noop_agent(), instance=instance, concurrency=16, drain_timeout_s=2
        ),
        credentials=credentials,
    )
    return n / elapsed, n / cpu


async def dispatch_latency(url: str, instances: int, n: int) -> list[float]:
    stack, bus = await connect(url, "d" + new_id()[-8:].lower())
    started: dict[str, float] = {}
    async with stack:
        await bus.provision()
        subject = bus.subjects.tasks(FLEET, CAPABILITY)
        async with AsyncExitStack() as runtimes:
            for _ in range(instances):
                b = await runtimes.enter_async_context(Bus.connect(url, bus.settings))
                await runtimes.enter_async_context(
                    AgentRuntime(
                        b, noop_agent(started), concurrency=16, drain_timeout_s=2
                    ).running()
                )
            await asyncio.sleep(0.2)
            sent: dict[str, float] = {}
            for i in range(n):
                event = task_event(i)
                sent[event.iid] = time.perf_counter()
                await bus.publish(event, subject)
                await asyncio.sleep(0.005)
            for _ in range(200):
                if len(started) >= n:
                    break
                await asyncio.sleep(0.01)
        lat = sorted((started[i] - sent[i]) * 1000 for i in sent if i in started)
        return lat


async def kill_latency(url: str, rounds: int) -> tuple[float, float]:
    stack, bus = await connect(url, "k" + new_id()[-8:].lower())
    async with stack:
        await bus.provision()
        operator = await nats.connect(url)
        kv_op = await operator.jetstream().key_value(bus.topology.kill.name)
        identity = Identity(FLEET, "noop", new_id())
        kills = KillWatcher(bus)
        await kills.start()
        policy = Policy(
            identity, CapabilityManifest(models=("offline-small",)), kills, Emitter(bus, identity)
        )
        session = Session(iid=new_id())
        key = kill_key("instance", identity.instance)
        value = KillSwitch(scope="instance", name=identity.instance, by="bench", at=utcnow())
        samples = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            await kv_op.put(key, value.model_dump_json().encode())
            while True:
                try:
                    await policy.check(session, "model.call", "offline-small")
                except Killed:
                    break
                await asyncio.sleep(0)
            samples.append((time.perf_counter() - t0) * 1000)
            await kv_op.delete(key)
            await lifted(kills, key)
        await kills.stop()
        await operator.close()
        samples.sort()
        return percentile(samples, 50), percentile(samples, 99)


async def lifted(kills: KillWatcher, key: str) -> None:
    """Until the watcher has seen ``key`` deleted."""
    for _ in range(100_000):
        if kills.match([key]) is None:
            return
        await asyncio.sleep(0)
    raise TimeoutError(f"kill key {key} still seen")


def medians(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


async def main(n: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsProcess(Path(tmp) / "js").start()
        secured = ShoalSettings(data_dir=Path(tmp) / "secured", principal="bench")
        embedded = EmbeddedServer(secured)
        secured_url = embedded.start().url
        try:
            url = server.url
            raw: list[tuple[float, float]] = []
            raw_ev: list[tuple[float, float]] = []
            rates: dict[int, list[tuple[float, float]]] = {1: [], 4: [], 16: []}
            rates_on: dict[int, list[tuple[float, float]]] = {1: [], 4: [], 16: []}
            latencies: dict[int, list[float]] = {1: [], 4: [], 16: []}
            # Alternating rounds, medians: other processes share the 2 cores. Each rate is
            # also given per second of this process's CPU, which contention moves less.
            for _ in range(rounds):
                raw.append(await raw_ceiling(url, max(n, 20_000)))
                raw_ev.append(await raw_ceiling(url, max(n, 20_000), events=True))
                for k in rates:
                    rates[k].append(await shoal_throughput(url, n, k))
                    rates_on[k].append(await shoal_throughput(secured_url, n, k, secured))
                    latencies[k].extend(await dispatch_latency(url, k, 100))
            ceiling, ceiling_cpu = medians(raw)
            ev, ev_cpu = medians(raw_ev)
            print(f"medians of {rounds} alternating rounds; {n} tasks per shoal run")
            print("                                           per wall s      per CPU s")
            print(
                f"raw nats-py work queue, fetch(1000)+ack : {ceiling:>9,.0f} {ceiling_cpu:>14,.0f}"
            )
            print(
                f"raw nats-py, same wire work as shoal    : {ev:>9,.0f} {ev_cpu:>14,.0f}"
                "  (fetch, 2 event publishes, ack; no parsing)"
            )
            for k, values in rates.items():
                rate, rate_cpu = medians(values)
                lat = sorted(latencies[k])
                print(
                    f"shoal, {k:>2} instance(s), trivial handler  : "
                    f"{rate:>9,.0f} {rate_cpu:>14,.0f}"
                    f"  = {rate / ceiling:4.0%} / {rate_cpu / ceiling_cpu:4.0%} of raw;"
                    f" dispatch p50 {percentile(lat, 50):4.2f} ms p99 {percentile(lat, 99):4.2f} ms"
                )
            for k, values in rates_on.items():
                rate, rate_cpu = medians(values)
                off, off_cpu = medians(rates[k])
                print(
                    f"  auth on (JWT, own creds), {k:>2} instance(s): "
                    f"{rate:>9,.0f} {rate_cpu:>14,.0f}"
                    f"  = {rate / off:4.0%} / {rate_cpu / off_cpu:4.0%} of auth off"
                    " (target: within 5%)"
                )
            k50, k99 = await kill_latency(url, 200)
            print(
                f"kill key set -> call refused (operator on another connection): "
                f"p50 {k50:.2f} ms  p99 {k99:.2f} ms"
            )
        finally:
            server.stop()
            embedded.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=4000, help="tasks per throughput run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians)")
    args = parser.parse_args()
    asyncio.run(main(args.tasks, args.rounds))
