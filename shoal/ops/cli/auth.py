"""``shoal auth …``: operator and enrollment credentials, revocation, the revocation warden."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from shoal.errors import ShoalError
from shoal.ops import auth as ops
from shoal.ops.cli._common import Cli, JsonOption, cli, emit_json, fail, run

T = TypeVar("T")

auth_app = typer.Typer(help="Credentials: operators (viewer/operator/admin), enrollment, revoke.")

OutOpt = Annotated[
    Path | None, typer.Option("--out", help="Write the creds file here (mode 0600).")
]


def _show(c_json: bool, cred: ops.Credential, verb: str) -> None:
    if c_json:
        emit_json(vars(cred))
    else:
        typer.echo(f"{verb} {cred.kind} {cred.name} ({cred.role}): {cred.path}")


@auth_app.command("add")
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Principal name (one token).")],
    role: Annotated[str, typer.Option("--role", help="viewer, operator or admin.")] = "viewer",
    out: OutOpt = None,
    as_json: JsonOption = False,
) -> None:
    """Create credentials for an operator with a role; prints the creds file's path."""
    c = cli(ctx, as_json)
    cred = _call(c, ops.add_operator, c.settings, name, role, out)
    _show(c.json, cred, "created")


@auth_app.command("enroll")
def enroll(
    ctx: typer.Context,
    fleet: Annotated[str, typer.Argument(help="Fleet.")],
    agent: Annotated[str, typer.Argument(help="Agent of the fleet.")],
    target: Annotated[
        str | None, typer.Option("--target", help="module:attr of the agent (default: demo).")
    ] = None,
    instance: Annotated[
        str | None, typer.Option("--instance", help="Instance id (default: a new one).")
    ] = None,
    capability: Annotated[
        list[str] | None,
        typer.Option("--capability", help="For a non-shoal worker: a capability it serves."),
    ] = None,
    delegate: Annotated[
        list[str] | None,
        typer.Option("--delegate", help="For a non-shoal worker: a capability it may delegate."),
    ] = None,
    out: OutOpt = None,
    as_json: JsonOption = False,
) -> None:
    """Credentials for one instance run outside a supervisor (then: shoal agent run … --creds)."""
    c = cli(ctx, as_json)
    caps, dels = tuple(capability or ()), tuple(delegate or ())
    cred = _call(c, ops.enroll, c.settings, fleet, agent, target, instance, out, caps, dels)
    _show(c.json, cred, "enrolled")
    if not c.json:
        inst = cred.name.rsplit(".", 1)[1]
        typer.echo(f"run: NATS_CREDS={cred.path} shoal agent run {fleet} {agent} --instance {inst}")


@auth_app.command("ls")
def ls(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Every credential issued here (operators and instances), revoked or not."""
    c = cli(ctx, as_json)
    creds = _call(c, ops.list_credentials, c.settings)
    if c.json:
        emit_json([vars(x) for x in creds])
        return
    table = Table("name", "kind", "role", "issued", "revoked", "public key")
    for x in creds:
        issued = datetime.fromtimestamp(x.issued_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(escape(x.name), x.kind, x.role, issued, "yes" if x.revoked else "", x.public)
    c.out.print(table)


@auth_app.command("revoke")
def revoke(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Name (or public key) from 'shoal auth ls'.")],
    as_json: JsonOption = False,
) -> None:
    """Revoke credentials: the server disconnects them now and refuses them from now on."""
    c = cli(ctx, as_json)
    cred = run(c, ops.revoke(c.settings, name))
    _show(c.json, cred, "revoked")


@auth_app.command("tenant")
def tenant(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Tenant name: its own NATS account.")],
    disk: Annotated[str, typer.Option("--disk", help="JetStream file storage (e.g. 10G).")] = "-1",
    memory: Annotated[str, typer.Option("--memory", help="JetStream memory (e.g. 1G).")] = "-1",
    streams: Annotated[int, typer.Option("--streams", help="Most streams (-1: any).")] = -1,
    as_json: JsonOption = False,
) -> None:
    """Create (or re-limit) a tenant: a NATS account with its own JetStream limits."""
    c = cli(ctx, as_json)
    size = _call(c, ops.parse_size, disk), _call(c, ops.parse_size, memory)
    cred = run(c, ops.add_tenant(c.settings, name, disk=size[0], memory=size[1], streams=streams))
    _show(c.json, cred, "tenant")


@auth_app.command("export-cluster")
def export_cluster(
    ctx: typer.Context,
    out: Annotated[Path, typer.Argument(help="Directory for auth.conf and creds/ (0700).")],
) -> None:
    """Write the servers' auth config and the services' creds for docker-compose.yml."""
    c = cli(ctx)
    for path in _call(c, ops.export_cluster, c.settings, out):
        typer.echo(str(path))


@auth_app.command("warden")
def warden(ctx: typer.Context) -> None:
    """Run the revocation warden in the foreground (``shoal up`` starts it)."""
    c = cli(ctx)

    async def _run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        ready = asyncio.Event()

        async def announce() -> None:
            await ready.wait()
            c.err.print("warden following the kill switches; SIGTERM stops it")

        announcing = asyncio.create_task(announce())
        try:
            return await ops.run_warden(c.settings, stop, ready)
        finally:
            announcing.cancel()

    revoked = run(c, _run(), bounded=False)  # a service: until SIGTERM
    c.err.print(f"warden stopped: {revoked} credential(s) revoked")


def _call(c: Cli, fn: Callable[..., T], *args: Any) -> T:
    """A synchronous library call; a :class:`ShoalError` is one red line and exit 2."""
    try:
        return fn(*args)
    except ShoalError as e:
        if c.debug:
            raise
        raise fail(c, str(e)) from None


def register(app: typer.Typer) -> None:
    app.add_typer(auth_app, name="auth")
