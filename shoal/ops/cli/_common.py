"""What every command shares: settings from global options, error handling, output."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from shoal.errors import InvalidOption, ShoalError, TimedOut
from shoal.ops.cli._group import print_error

if TYPE_CHECKING:  # pydantic-settings, nats, rich load when a command runs, not for --help
    from rich.console import Console

    from shoal.bus import ShoalSettings

__all__ = [
    "DEFAULT_TIMEOUT",
    "Cli",
    "JsonOption",
    "cli",
    "emit_json",
    "fail",
    "json_default",
    "run",
]

DEFAULT_TIMEOUT = 10.0
"""Seconds a bounded command may take in all (``--timeout`` / ``SHOAL_TIMEOUT``)."""

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
    timeout: float = DEFAULT_TIMEOUT


def make_cli(
    *,
    nats_url: str | None,
    data_dir: Path | None,
    prefix: str | None,
    as_json: bool,
    creds: Path | None = None,
    debug: bool,
    timeout: float = DEFAULT_TIMEOUT,
) -> Cli:
    """Build the settings from the environment plus whichever global options were given."""
    from pydantic import ValidationError
    from rich.console import Console

    from shoal.bus import ShoalSettings
    from shoal.schemas import describe_validation_error

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    if not timeout > 0 or timeout > 86400:
        raise InvalidOption(f"--timeout {timeout:g}: give seconds between 0 and 86400")
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
        raise InvalidOption(f"invalid settings: {describe_validation_error(e)}") from None
    # No single request may outlast the whole command.
    if settings.request_timeout > timeout or settings.connect_timeout > timeout:
        settings = settings.model_copy(
            update={
                "request_timeout": min(settings.request_timeout, timeout),
                "connect_timeout": min(settings.connect_timeout, timeout),
            }
        )
    from shoal.auth.roles import caller_of

    caller = caller_of(settings)
    if caller is not None and caller.role != "admin" and caller.principal != settings.principal:
        # A viewer or operator acts as the principal its credentials name, nobody else.
        settings = settings.model_copy(update={"principal": caller.principal})
    out = Console(highlight=False, soft_wrap=True)
    return Cli(settings, as_json, debug, out, err, timeout)


def cli(ctx: typer.Context, as_json: bool = False) -> Cli:
    """The :class:`Cli` the root callback stored, with the command's own ``--json``."""
    obj = ctx.find_root().obj
    assert isinstance(obj, Cli), "the root callback did not run"
    if as_json:
        obj.json = True
    return obj


def run(c: Cli, coro: Coroutine[Any, Any, T], *, bounded: bool = True) -> T:
    """Run a command's coroutine, within ``--timeout`` unless it is a long-running one.

    A timeout anywhere inside (a paused or overloaded server) becomes :class:`TimedOut`
    naming the server; the root group prints it as one line and exits 1.
    """
    where = c.settings.nats_url or f"the embedded server (data dir {c.settings.data_dir})"
    try:
        if bounded:
            return asyncio.run(_within(coro, c.timeout))
        return asyncio.run(coro)
    except ShoalError:
        raise
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Exception as e:
        if _is_timeout(e):
            raise TimedOut(
                f"NATS at {where} did not answer in time (request timeout "
                f"{c.settings.request_timeout:g}s, command timeout {c.timeout:g}s); "
                "the server may be paused or overloaded"
            ) from e
        raise


async def _within(coro: Coroutine[Any, Any, T], seconds: float) -> T:
    return await asyncio.wait_for(coro, seconds)


def _is_timeout(e: BaseException) -> bool:
    import nats.errors

    return isinstance(e, TimeoutError | nats.errors.TimeoutError)


def fail(c: Cli, message: str, code: int = 2, kind: str = "usage") -> typer.Exit:
    """Print one error line (JSON with ``--json``, its ``code`` being ``kind``); return the
    Exit to raise."""
    print_error(message, kind, code, as_json=c.json)
    return typer.Exit(code)


def json_default(value: Any) -> Any:
    """JSON for what ``json`` cannot encode: ISO 8601 times with an offset, else ``str``."""
    if isinstance(value, datetime):
        from datetime import UTC

        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    return str(value)


def emit_json(value: Any) -> None:
    """Write ``value`` as one JSON document on stdout (for ``--json``)."""
    sys.stdout.write(json.dumps(value, default=json_default) + "\n")
    sys.stdout.flush()


def require_store(settings: ShoalSettings, dbname: str = "core") -> None:
    """Refuse to read a store that does not exist (so never create ``./.shoal``), or one in
    a read-only data dir (SQLite writes its journal beside the file, even to read)."""
    import os

    from shoal.errors import NotFound, StoreNotWritable

    if settings.persistence_module != "eventsourcing.sqlite":
        return
    path = settings.store_dir / f"{dbname}.sqlite"
    if not path.exists():
        raise NotFound(
            f"no {dbname} store at {path}: nothing recorded here yet "
            "(run 'shoal up' or 'shoal demo', or give --data-dir)"
        )
    if not os.access(settings.store_dir, os.W_OK):
        raise StoreNotWritable(
            f"the data dir {settings.store_dir} is read-only: its SQLite store writes a "
            "journal beside the file even to read; make it writable or copy it elsewhere"
        )
