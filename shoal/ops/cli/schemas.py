"""``shoal schemas export``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shoal.ops.cli._common import JsonOption, cli, emit_json
from shoal.schemas import export_json_schemas

schemas_app = typer.Typer(help="The wire contract as JSON Schema.", no_args_is_help=True)


@schemas_app.command("export")
def export(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Argument(help="Where to write one <type>.json per type.")],
    as_json: JsonOption = False,
) -> None:
    """Write one JSON Schema file per event type."""
    c = cli(ctx, as_json)
    paths = export_json_schemas(directory)
    if c.json:
        emit_json([str(p) for p in paths])
    else:
        c.out.print(f"wrote {len(paths)} schemas to {directory}")


def register(app: typer.Typer) -> None:
    app.add_typer(schemas_app, name="schemas")
