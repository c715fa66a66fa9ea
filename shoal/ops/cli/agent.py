"""``shoal agent run``: one agent instance in the foreground (what supervisors start)."""

from __future__ import annotations

from typing import Annotated

import typer

from shoal.agents.serve import resolve_agent, serve
from shoal.bus.genai import GenAI
from shoal.bus.telemetry import setup_telemetry
from shoal.ops.cli._common import Cli, JsonOption, cli, emit_json, run
from shoal.ops.connect import open_bus
from shoal.schemas import new_id

agent_app = typer.Typer(help="Run agent instances.", no_args_is_help=True)


@agent_app.command("run")
def run_cmd(
    ctx: typer.Context,
    fleet: Annotated[str, typer.Argument(help="The fleet the instance serves.")],
    agent: Annotated[str, typer.Argument(help="The agent's name in the fleet.")],
    target: Annotated[
        str | None,
        typer.Option(
            "--target", help="module:attr of the Agent declaration (default: the demo fleet)."
        ),
    ] = None,
    instance: Annotated[
        str | None, typer.Option("--instance", help="Instance id (default: a new ULID).")
    ] = None,
    version: Annotated[
        str | None, typer.Option("--version", help="Version to report (default: declared).")
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, help="Tasks worked on at once per capability.")
    ] = 8,
    slot: Annotated[int | None, typer.Option("--slot", help="Supervisor slot number.")] = None,
    supervisor: Annotated[
        str | None, typer.Option("--supervisor", help="Id of the supervisor that started it.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Run one instance until SIGTERM/SIGINT (graceful drain, exit 0) or an instance kill."""
    c = cli(ctx, as_json)
    reason = run(c, _run(c, fleet, agent, target, instance, version, concurrency, slot, supervisor))
    if c.json:
        emit_json({"stopped": reason})
    else:
        c.err.print(f"agent {fleet}/{agent} stopped: {reason}")


async def _run(
    c: Cli,
    fleet: str,
    name: str,
    target: str | None,
    instance: str | None,
    version: str | None,
    concurrency: int,
    slot: int | None,
    supervisor: str | None,
) -> str:
    agent = resolve_agent(fleet, name, target)
    instance = instance or new_id()  # known before the runtime: the telemetry resource names it
    attributes = {"shoal.fleet": fleet, "gen_ai.agent.name": name}
    # Spans go to the local span file or OTLP per the OTEL_* settings; exit flushes them.
    with setup_telemetry(
        c.settings, "shoal-agent", instance_id=instance, attributes=attributes
    ) as telemetry:
        async with open_bus(c.settings, name=f"shoal-agent-{fleet}-{name}") as bus:
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


def register(app: typer.Typer) -> None:
    app.add_typer(agent_app, name="agent")
