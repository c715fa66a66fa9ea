"""``shoal agent run``: one agent instance in the foreground (what supervisors start).

``python -m shoal agent run …`` skips this typer command: ``shoal/__main__.py`` routes it to
the lean :mod:`shoal.agents.__main__`, which parses the same options and calls the same
:func:`~shoal.agents.serve.run_instance`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shoal.agents.serve import run_instance
from shoal.ops.cli._common import JsonOption, cli, emit_json, run

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
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest",
            exists=True,
            dir_okay=False,
            help="Capability manifest file replacing the declared one.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Run one instance until SIGTERM/SIGINT (graceful drain, exit 0) or an instance kill."""
    c = cli(ctx, as_json)
    reason = run(
        c,
        run_instance(
            c.settings,
            fleet,
            agent,
            target=target,
            instance=instance,
            version=version,
            concurrency=concurrency,
            slot=slot,
            supervisor=supervisor,
            manifest=manifest,
        ),
        bounded=False,
    )
    if c.json:
        emit_json({"stopped": reason})
    else:
        c.err.print(f"agent {fleet}/{agent} stopped: {reason}")


def register(app: typer.Typer) -> None:
    app.add_typer(agent_app, name="agent")
