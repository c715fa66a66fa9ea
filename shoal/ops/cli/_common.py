"""What every command shares: settings from global options, error handling, output."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

from shoal.auth.roles import caller_of
from shoal.bus import ShoalSettings
from shoal.errors import ShoalError
from shoal.schemas import describe_validation_error

__all__ = ["Cli", "JsonOption", "cli", "emit_json", "fail", "run"]

T = TypeVar("T")

JsonOption = Annotated[bool, typer.Option("--json", help="JSON output for scripts.")]
"""Every command that prints takes ``--json`` (as does the root: ``shoal --json status``)."""


@dataclass
class Cli:
    """Per-invocation state: settings, output mode, consoles."""

    settings: ShoalSettings
    json: bool
    debug: bool
    out: Console
    err: Console


def make_cli(
    *,
    nats_url: str | None,
    data_dir: Path | None,
    prefix: str | None,
    as_json: bool,
    creds: Path | None = None,
    debug: bool,
) -> Cli:
    """Build the settings from the environment plus whichever global options were given."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    overrides: dict[str, Any] = {}
    if nats_url:
        overrides["nats_url"] = nats_url
    if data_dir:
        overrides["data_dir"] = data_dir
    if prefix:
        overrides["prefix"] = prefix
    if creds:
        overrides["creds"] = creds
    try:
        settings = ShoalSettings(**overrides)
    except ValidationError as e:
        err.print(f"[red]error:[/] invalid settings: {describe_validation_error(e)}")
        raise typer.Exit(2) from None
    caller = caller_of(settings)
    if caller is not None and caller.role != "admin" and caller.principal != settings.principal:
        # A viewer or operator acts as the principal its credentials name, nobody else.
        settings = settings.model_copy(update={"principal": caller.principal})
    return Cli(settings, as_json, debug, Console(highlight=False, soft_wrap=True), err)


def cli(ctx: typer.Context, as_json: bool = False) -> Cli:
    """The :class:`Cli` the root callback stored, with the command's own ``--json``."""
    obj = ctx.find_root().obj
    assert isinstance(obj, Cli), "the root callback did not run"
    if as_json:
        obj.json = True
    return obj


def run(c: Cli, coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; a :class:`ShoalError` becomes one red line and exit 2."""
    try:
        return asyncio.run(coro)
    except ShoalError as e:
        if c.debug:
            raise
        c.err.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def fail(c: Cli, message: str, code: int = 2) -> typer.Exit:
    """Print one red line; return the Exit to raise."""
    c.err.print(f"[red]error:[/] {message}")
    return typer.Exit(code)


def emit_json(value: Any) -> None:
    """Write ``value`` as one JSON document on stdout (for ``--json``)."""
    sys.stdout.write(json.dumps(value, default=str) + "\n")
    sys.stdout.flush()
