"""``shoal gateway`` (the model and MCP gateways) and ``shoal keys create|ls|revoke``."""

from __future__ import annotations

import asyncio
import logging
import signal
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from shoal.ops.cli._common import Cli, JsonOption, cli, emit_json, fail, run
from shoal.ops.connect import open_bus

__all__ = ["register"]

keys_app = typer.Typer(help="Gateway keys: create, list, revoke.", no_args_is_help=True)


def gateway(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", envvar="SHOAL_GATEWAY_CONFIG", help="Providers/aliases YAML."),
    ] = None,
    host: Annotated[str | None, typer.Option("--host", help="Address to bind.")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Model gateway port (0: any).")] = None,
    mcp_port: Annotated[
        int | None, typer.Option("--mcp-port", help="MCP gateway port (0: free).")
    ] = None,
) -> None:
    """Run the model gateway (OpenAI API at /v1) and the MCP gateway until SIGTERM."""
    c = cli(ctx)
    logging.basicConfig(
        level=c.settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    run(c, _serve(c, config, host, port, mcp_port), bounded=False)  # a service: until SIGTERM


async def _serve(
    c: Cli, config_path: Path | None, host: str | None, port: int | None, mcp_port: int | None
) -> None:
    from shoal.bus.genai import GenAI
    from shoal.bus.telemetry import setup_telemetry
    from shoal.gateway import GatewayConfig, run_gateway
    from shoal.ops.services import write_gateway_urls

    s = c.settings
    config = GatewayConfig.load(config_path or s.gateway_config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with setup_telemetry(s, "shoal-gateway") as telemetry:
        async with (
            open_bus(s, name="shoal-gateway") as bus,
            run_gateway(
                bus,
                config,
                host=host or s.gateway_host,
                port=s.gateway_port if port is None else port,
                mcp_port=s.gateway_mcp_port if mcp_port is None else mcp_port,
                genai=GenAI(telemetry),
            ) as running,
        ):
            write_gateway_urls(s, running.url, running.mcp_url)
            c.err.print(f"model gateway at {running.url}; MCP gateway at {running.mcp_url}")
            closed = asyncio.create_task(_closed(bus.nc))
            waiting = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([closed, waiting], return_when="FIRST_COMPLETED")
            for task in (closed, waiting):
                task.cancel()
            if closed in done:
                raise typer.Exit(1)  # the NATS connection is gone for good: never idle alive


async def _closed(nc: Any) -> None:
    # The connection was opened elsewhere (open_bus), so no closed callback can be added now.
    while not nc.is_closed:  # noqa: ASYNC110
        await asyncio.sleep(0.5)


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    fleet: Annotated[str, typer.Option("--fleet", help="The fleet the key speaks for.")],
    agent: Annotated[str, typer.Option("--agent", help="The agent the key speaks for.")],
    instance: Annotated[str | None, typer.Option("--instance", help="Bind one instance.")] = None,
    principal: Annotated[
        str | None, typer.Option("--principal", help="On whose behalf (fixed).")
    ] = None,
    budget: Annotated[str | None, typer.Option("--budget", help="USD the key may spend.")] = None,
    rpm: Annotated[int | None, typer.Option("--rpm", min=1, help="Requests per minute.")] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", help="A model the key may call (repeat).")
    ] = None,
    tool: Annotated[
        list[str] | None, typer.Option("--tool", help="A tool the key may call (repeat).")
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest", exists=True, dir_okay=False, help="A capability manifest YAML instead."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a key; its secret is printed once and never stored (only its hash is)."""
    from shoal.gateway import KeyStore
    from shoal.schemas.manifest import CapabilityManifest

    c = cli(ctx, as_json)
    try:
        amount = Decimal(budget) if budget is not None else None
    except InvalidOperation:
        raise fail(c, f"--budget: {budget!r} is not an amount in USD") from None
    if amount is not None and (not amount.is_finite() or amount < 0):
        raise fail(c, f"--budget: {budget!r} must be >= 0")
    if manifest is not None and (model or tool):
        raise fail(c, "give --manifest or --model/--tool, not both")

    async def body() -> tuple[Any, str]:
        grants = (
            CapabilityManifest.load(manifest)
            if manifest is not None
            else CapabilityManifest(models=tuple(model or ()), tools=list(tool or ()))
        )
        async with open_bus(c.settings, name="shoal-keys") as bus:
            return await KeyStore(bus).create(
                fleet=fleet,
                agent=agent,
                instance=instance,
                principal=principal,
                budget_usd=amount,
                rpm=rpm,
                manifest=grants,
                by=c.settings.principal,
            )

    key, secret = run(c, body())
    if c.json:
        emit_json({**key.public(), "secret": secret})
        return
    c.err.print(f"key {key.id} for {fleet}/{agent}; the secret is shown once:")
    c.out.print(secret)


@keys_app.command("ls")
def keys_ls(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List keys (never their secrets)."""
    from shoal.gateway import KeyStore

    c = cli(ctx, as_json)

    async def body() -> list[Any]:
        async with open_bus(c.settings, name="shoal-keys") as bus:
            return await KeyStore(bus).list()

    keys = run(c, body())
    if c.json:
        emit_json([k.public() for k in keys])
        return
    table = Table("id", "fleet/agent", "instance", "principal", "budget", "rpm", "models", "state")
    for k in keys:
        table.add_row(
            k.id,
            f"{k.fleet}/{k.agent}",
            k.instance or "",
            k.principal or "",
            f"${k.budget_usd}" if k.budget_usd is not None else "",
            str(k.rpm or ""),
            ", ".join(k.manifest.models),
            "revoked" if k.revoked_at else "active",
        )
    c.out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="The key's id (from keys ls).")],
    as_json: JsonOption = False,
) -> None:
    """Revoke a key: every gateway refuses it from its next call."""
    from shoal.gateway import KeyStore

    c = cli(ctx, as_json)

    async def body() -> Any:
        async with open_bus(c.settings, name="shoal-keys") as bus:
            return await KeyStore(bus).revoke(key_id, by=c.settings.principal)

    key = run(c, body())
    if c.json:
        emit_json(key.public())
    else:
        c.out.print(f"key {key.id} revoked")


def register(app: typer.Typer) -> None:
    app.command("gateway")(gateway)
    app.add_typer(keys_app, name="keys")
