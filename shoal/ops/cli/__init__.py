"""The ``shoal`` command line: a root app with global options and one module per noun.

Commands are thin: they parse options, call a plain function of the library, and render
the answer as rich tables (or JSON with ``--json``). Each noun lives in its own module and
registers itself on :data:`app` in :func:`_register`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shoal.ops.cli._common import make_cli

__all__ = ["app", "main"]

app = typer.Typer(
    name="shoal",
    help="shoal: a control plane for fleets of AI agents on NATS JetStream.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    ctx: typer.Context,
    nats_url: Annotated[
        str | None,
        typer.Option(
            "--nats-url", envvar="NATS_URL", help="Use this NATS server; never start one."
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", envvar="SHOAL_DATA_DIR", help="Local state (default ./.shoal)."),
    ] = None,
    prefix: Annotated[
        str | None, typer.Option("--prefix", envvar="SHOAL_PREFIX", help="Subject prefix.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output for scripts.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    ctx.obj = make_cli(
        nats_url=nats_url, data_dir=data_dir, prefix=prefix, as_json=as_json, debug=debug
    )


def _register() -> None:
    # Imported here, not at module top, so each command module can import ``app`` freely.
    import shoal.ops.cli.trace as trace
    from shoal.ops.cli import agent, demo, events, fleet, goal, kill, platform, schemas, supervisor

    for module in (platform, goal, events, schemas, demo, fleet, kill, supervisor, agent, trace):
        module.register(app)
    from shoal.ops.cli import cost, projections

    for module in (cost, projections):
        module.register(app)
    from shoal.ops.cli import approvals, core, outcome, policy, session

    for module in (core, session, outcome, policy, approvals):
        module.register(app)


_register()


def main() -> None:
    """Console entry point."""
    app()
