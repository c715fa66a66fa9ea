"""The ``shoal`` command line: a root app with global options and one module per noun.

Commands are thin: they parse options, call a plain function of the library, and render
the answer as rich tables (or JSON with ``--json``). Each noun lives in its own module with
a ``register(app)``; the root group (:mod:`shoal.ops.cli._group`) imports a module only
when one of its commands runs, so ``shoal --help`` starts fast. A new module adds its
command names to :data:`shoal.ops.cli._group.COMMANDS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shoal.ops.cli._common import DEFAULT_TIMEOUT, make_cli
from shoal.ops.cli._group import ShoalGroup

__all__ = ["PANELS", "app", "main"]

PANELS = ("run", "observe", "govern", "fleet", "data")
"""The ``--help`` panels, in order (each command's panel is in ``_group.COMMANDS``)."""

app = typer.Typer(
    name="shoal",
    cls=ShoalGroup,
    help="shoal: a control plane for fleets of AI agents on NATS JetStream.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"shoal {version('shoal')}")
        raise typer.Exit()


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
    as_json: Annotated[
        bool, typer.Option("--json", "-o json", help="JSON output (any position).")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks (any position).")] = False,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            envvar="SHOAL_TIMEOUT",
            help="Seconds a command may wait for the server in all.",
        ),
    ] = DEFAULT_TIMEOUT,
    _show_version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    ctx.obj = make_cli(
        nats_url=nats_url,
        data_dir=data_dir,
        prefix=prefix,
        as_json=as_json,
        debug=debug,
        timeout=timeout,
    )


def main() -> None:
    """Console entry point."""
    app()
