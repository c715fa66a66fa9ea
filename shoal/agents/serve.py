"""Running one agent instance as a process: resolve the declaration, serve until a signal.

Library side of ``shoal agent run`` (:func:`run_instance`, shared by the typer command and
the lean ``python -m shoal.agents run`` entry point that supervisors start). SIGTERM and
SIGINT drain gracefully (stop taking tasks, finish in-flight ones, ``agent.stopped``,
presence key deleted); a second signal cancels the drain. An instance kill switch also
ends the process (exit 0: it was asked to).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import signal
from collections.abc import Sequence
from pathlib import Path

from shoal.agents.agent import Agent
from shoal.agents.models import ModelClient
from shoal.agents.runtime import AgentRuntime
from shoal.bus import Bus, ShoalSettings, check_token
from shoal.bus.genai import GenAI
from shoal.bus.telemetry import setup_telemetry
from shoal.errors import NotFound
from shoal.schemas import new_id
from shoal.schemas.manifest import CapabilityManifest

__all__ = ["resolve_agent", "run_instance", "serve"]


def resolve_agent(fleet: str, name: str, target: str | None = None) -> Agent:
    """The agent to run: ``module:attr`` (an :class:`Agent` or a factory of one), else the
    agent ``name`` of the built-in demo fleet. The result runs as ``fleet``/``name``."""
    if target is None:
        from shoal.agents.demo import demo_agents

        agents = demo_agents(check_token(fleet, "fleet"))
        if name not in agents:
            raise NotFound(f"no agent {name!r} in the demo fleet (have: {', '.join(agents)})")
        return agents[name]
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise NotFound(f"--target {target!r} must be module:attribute")
    try:
        value = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise NotFound(f"cannot import {target}: {e}") from e
    if not isinstance(value, Agent) and callable(value):
        value = value()
    if not isinstance(value, Agent):
        raise NotFound(f"{target} is not an shoal Agent (got {type(value).__name__})")
    return value.bound(fleet=fleet, name=name)


async def serve(
    bus: Bus,
    agent: Agent,
    *,
    instance: str | None = None,
    version: str | None = None,
    concurrency: int = 8,
    slot: int | None = None,
    supervisor: str | None = None,
    model_clients: Sequence[ModelClient] | None = None,
    stop: asyncio.Event | None = None,
    genai: GenAI | None = None,
) -> str:
    """Run until SIGTERM/SIGINT (or ``stop``, or an instance kill); return the stop reason."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    received: list[str] = []

    main = asyncio.current_task()

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        if stop.is_set() and main is not None:
            main.cancel()  # second signal: give up draining
        stop.set()

    for sig in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)
    runtime = AgentRuntime(
        bus,
        agent,
        instance=instance,
        version=version,
        concurrency=concurrency,
        slot=slot,
        supervisor=supervisor,
        model_clients=model_clients,
        genai=genai,
    )
    try:
        async with runtime.running():
            killed = asyncio.create_task(runtime.killed.wait())
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({killed, stopped}, return_when=asyncio.FIRST_COMPLETED)
            for task in (killed, stopped):
                task.cancel()
            if not runtime.stop_reason:
                runtime.stop_reason = f"signal {received[0]}" if received else "stopped"
    finally:
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    return runtime.stop_reason


async def run_instance(
    settings: ShoalSettings,
    fleet: str,
    name: str,
    *,
    target: str | None = None,
    instance: str | None = None,
    version: str | None = None,
    concurrency: int = 8,
    slot: int | None = None,
    supervisor: str | None = None,
    manifest: Path | None = None,
) -> str:
    """``shoal agent run``: connect (provisioning as every command does), serve with
    telemetry until a signal or an instance kill; return the stop reason.

    ``manifest`` (a fleet spec's override, as the supervisor passes it) replaces the
    manifest the agent's code declares: its gateways enforce that one.
    """
    # shoal.ops builds on the agents: its connection helper is imported when an instance runs.
    from shoal.ops.connect import open_bus

    agent = resolve_agent(fleet, name, target)
    if manifest is not None:
        agent = agent.with_manifest(CapabilityManifest.load(manifest))
    instance = instance or new_id()  # known before the runtime: the telemetry resource names it
    attributes = {"shoal.fleet": fleet, "gen_ai.agent.name": name}
    # Spans go to the local span file or OTLP per the OTEL_* settings; exit flushes them.
    with setup_telemetry(
        settings, "shoal-agent", instance_id=instance, attributes=attributes
    ) as telemetry:
        async with open_bus(settings, name=f"shoal-agent-{fleet}-{name}") as bus:
            return await serve(
                bus,
                agent,
                instance=instance,
                version=version,
                concurrency=concurrency,
                slot=slot,
                supervisor=supervisor,
                genai=GenAI(telemetry),
            )
