"""``shoal console`` (serve the web console) and ``shoal console token create|ls|revoke``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from shoal.bus import ShoalSettings
from shoal.errors import NatsUnreachable
from shoal.ops.cli._common import Cli, JsonOption, cli, emit_json, fail, run
from shoal.ops.connect import open_bus
from shoal.ops.server import pid_alive

if TYPE_CHECKING:  # starlette, jinja2 and uvicorn load only where the console runs
    from shoal.console import ConsoleSettings, Role

console_app = typer.Typer(
    help="The operations console: a web page over NATS (and its sign-in tokens).",
    invoke_without_command=True,
)
token_app = typer.Typer(help="Console sign-in tokens (role-bearing, stored hashed).")
console_app.add_typer(token_app, name="token")


def url_record(settings: ShoalSettings) -> Path:
    """Where a console started for this data dir writes the URL it listens on."""
    return settings.data_dir.resolve() / "services" / "console-url.json"


def console_url(settings: ShoalSettings) -> str | None:
    """The URL the local console last reported, or None (``shoal status``, ``shoal demo``)."""
    try:
        record = json.loads(url_record(settings).read_text())
        url, pid = str(record["url"]), int(record["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url if pid_alive(pid) else None  # a console killed outright leaves its record


def console_hint(settings: ShoalSettings, gid: str | None = None) -> str:
    """Where to watch: the running console's URL (the goal's page), or how to start one."""
    url = console_url(settings)
    if url is None:
        from shoal.console.settings import DEFAULT_PORT

        return f"console: 'shoal up' serves it at http://127.0.0.1:{DEFAULT_PORT}"
    return f"console: {url}/goals/{gid}" if gid else f"console: {url}"


def _console_settings(host: str | None, port: int | None) -> ConsoleSettings:
    from shoal.console import ConsoleSettings

    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    return ConsoleSettings(**overrides)  # type: ignore[arg-type]


@console_app.callback()
def console(
    ctx: typer.Context,
    host: Annotated[
        str | None, typer.Option("--host", envvar="SHOAL_CONSOLE_HOST", help="Interface.")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", envvar="SHOAL_CONSOLE_PORT", help="Port (0: a free one)."),
    ] = None,
) -> None:
    """Serve the console until interrupted; prints its URL."""
    if ctx.invoked_subcommand is not None:
        return
    c = cli(ctx)
    run(c, _serve(c, _console_settings(host, port)), bounded=False)  # a service: until SIGTERM


async def _serve(c: Cli, settings: ConsoleSettings) -> None:
    from shoal.console import open_console, serve_console

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    record = url_record(c.settings)

    def listening(url: str) -> None:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"url": url, "pid": os.getpid()}))
        c.out.print(f"console at [bold]{url}[/] (sign in with a token: shoal console token create)")

    async with open_bus(c.settings, start=False, name="shoal-console") as bus:
        watch = asyncio.create_task(_stop_when_closed(bus.nc, stop))
        try:
            await serve_console(await open_console(bus, settings), stop, on_listening=listening)
        finally:
            watch.cancel()
            with contextlib.suppress(OSError):
                record.unlink()
        if watch.done() and not watch.cancelled():
            raise NatsUnreachable("the console's NATS connection closed; it stopped serving")


async def _stop_when_closed(nc: object, stop: asyncio.Event) -> None:
    # A console whose NATS connection is gone for good must not idle alive: it stops and
    # exits non-zero (a supervisor or systemd then restarts it).
    while not getattr(nc, "is_closed", False):  # noqa: ASYNC110 (nats-py: no closed event)
        await asyncio.sleep(1.0)
    stop.set()


RoleOption = Annotated[
    str, typer.Option("--role", help="viewer (sees), operator (acts), admin (both, and tokens).")
]


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    role: RoleOption,
    principal: Annotated[str, typer.Option("--principal", help="Who signs in with it.")],
    note: Annotated[str, typer.Option("--note", help="What it is for.")] = "",
    as_json: JsonOption = False,
) -> None:
    """Create a sign-in token; it is printed once and stored only as its hash."""
    c = cli(ctx, as_json)
    from shoal.console.access import ROLES, KVTokenStore

    if role not in ROLES:
        raise fail(c, f"--role must be one of {', '.join(ROLES)}, not {role!r}")

    async def body() -> str:
        async with open_bus(c.settings, name="shoal-console") as bus:
            store = KVTokenStore.for_bus(bus)
            token, _ = await store.create(
                principal, _role(role), by=c.settings.principal, note=note
            )
            return token

    token = run(c, body())
    if c.json:
        emit_json({"principal": principal, "role": role, "token": token})
    else:
        c.out.print(f"token for [bold]{principal}[/] ({role}); shown once, keep it secret:")
        c.out.print(token, markup=False, highlight=False)


def _role(value: str) -> Role:
    from shoal.console.access import ROLES

    return next(r for r in ROLES if r == value)


@token_app.command("ls")
def token_ls(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Who holds a token, with which role (never the tokens)."""
    c = cli(ctx, as_json)
    from shoal.console.access import KVTokenStore, TokenRecord

    async def body() -> list[TokenRecord]:
        async with open_bus(c.settings, name="shoal-console") as bus:
            return await KVTokenStore.for_bus(bus).records()

    records = run(c, body())
    if c.json:
        emit_json([r.model_dump(mode="json") for r in records])
        return
    table = Table("principal", "role", "created", "by", "note")
    for r in records:
        table.add_row(
            r.principal, r.role, f"{r.created_at:%Y-%m-%d %H:%M:%S}", r.created_by, r.note
        )
    c.out.print(table)


@token_app.command("revoke")
def token_revoke(
    ctx: typer.Context,
    principal: Annotated[str, typer.Option("--principal", help="Whose tokens to delete.")],
    as_json: JsonOption = False,
) -> None:
    """Delete every token of a principal; their open sign-ins end at their next request."""
    c = cli(ctx, as_json)
    from shoal.console.access import KVTokenStore

    async def body() -> int:
        async with open_bus(c.settings, name="shoal-console") as bus:
            return await KVTokenStore.for_bus(bus).revoke_principal(principal)

    removed = run(c, body())
    if c.json:
        emit_json({"principal": principal, "revoked": removed})
    else:
        c.out.print(f"revoked {removed} token(s) of {principal}")


def register(app: typer.Typer) -> None:
    app.add_typer(console_app, name="console")
