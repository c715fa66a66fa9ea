"""``shoal fleet apply|ls|describe|start|stop|scale|upgrade|rollback|history``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from shoal.bus import Bus
from shoal.ops import fleets as ops
from shoal.ops.cli._common import Cli, JsonOption, cli, emit_json, run
from shoal.ops.cli._roles import require_role
from shoal.ops.connect import open_bus
from shoal.schemas.fleet import FleetDesired

if TYPE_CHECKING:  # eventsourcing loads lazily: every ``shoal agent run`` imports this module
    from shoal.aggregates.fleet import FleetApplication

fleet_app = typer.Typer(help="Declare, scale, upgrade and inspect fleets.", no_args_is_help=True)

T = TypeVar("T")
ReasonOption = Annotated[
    str, typer.Option("--reason", "-r", help="Why: recorded in the fleet's history.")
]
FleetArg = Annotated[str, typer.Argument(help="Fleet name.")]


def _with_app(c: Cli, body: Callable[[Bus, FleetApplication], Awaitable[T]]) -> T:
    require_role(c, "operator", "fleet")  # every fleet command that changes desired state

    async def _run() -> T:
        app = ops.open_fleet_app(c.settings)
        try:
            async with open_bus(c.settings, name="shoal-fleet") as bus:
                return await body(bus, app)
        finally:
            app.close()

    return run(c, _run())


def _print_desired(c: Cli, verb: str, desired: FleetDesired) -> None:
    if c.json:
        emit_json({"command": verb, "desired": desired.model_dump(mode="json")})
        return
    state = "running" if desired.running else "stopped"
    agents = ", ".join(
        f"{name}={a.replicas}@{a.version}" for name, a in sorted(desired.agents.items())
    )
    c.out.print(f"fleet [bold]{desired.fleet}[/] {verb}: {state}, {agents}")


@fleet_app.command("apply")
def apply(
    ctx: typer.Context,
    spec: Annotated[str, typer.Argument(help="Fleet spec YAML file.")],
    reason: ReasonOption = "",
    as_json: JsonOption = False,
) -> None:
    """Register a fleet from a spec file, or update it (declarative: the spec wins)."""
    c = cli(ctx, as_json)

    async def body(bus: Bus, app: FleetApplication) -> FleetDesired:
        parsed = ops.load_fleet_spec(spec)
        return await ops.apply_fleet(bus, app, parsed, by=c.settings.principal, reason=reason)

    _print_desired(c, "applied", _with_app(c, body))


def _command(c: Cli, name: str, verb: str, reason: str, **args: Any) -> None:
    async def body(bus: Bus, app: FleetApplication) -> FleetDesired:
        return await ops.fleet_command(
            bus, app, name, verb, by=c.settings.principal, reason=reason, **args
        )

    _print_desired(c, _PAST.get(verb, verb), _with_app(c, body))


_PAST = {"start": "started", "stop": "stopped", "rollback": "rolled back"}


@fleet_app.command("start")
def start(
    ctx: typer.Context, name: FleetArg, reason: ReasonOption = "", as_json: JsonOption = False
) -> None:
    """Run the fleet again with its desired replica counts."""
    _command(cli(ctx, as_json), name, "start", reason)


@fleet_app.command("stop")
def stop(
    ctx: typer.Context, name: FleetArg, reason: ReasonOption = "", as_json: JsonOption = False
) -> None:
    """Drain every instance of the fleet (replica counts are kept for ``start``)."""
    _command(cli(ctx, as_json), name, "stop", reason)


@fleet_app.command("scale")
def scale(
    ctx: typer.Context,
    name: FleetArg,
    replicas: Annotated[list[str], typer.Argument(help="AGENT=N, one or more.")],
    reason: ReasonOption = "",
    as_json: JsonOption = False,
) -> None:
    """Set the number of instances of one or more agents."""
    c = cli(ctx, as_json)

    async def body(bus: Bus, app: FleetApplication) -> FleetDesired:
        return await ops.fleet_command(
            bus,
            app,
            name,
            "scale",
            by=c.settings.principal,
            reason=reason,
            replicas=ops.parse_replicas(replicas),
        )

    _print_desired(c, "scaled", _with_app(c, body))


@fleet_app.command("upgrade")
def upgrade(
    ctx: typer.Context,
    name: FleetArg,
    agent: Annotated[str, typer.Argument(help="Agent to upgrade.")],
    version: Annotated[str, typer.Argument(help="New version label.")],
    target: Annotated[
        str | None, typer.Option("--target", help="New run target module:attr (default: same).")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Follow the rolling replacement.")
    ] = True,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to follow it.")] = 120.0,
    reason: ReasonOption = "",
    as_json: JsonOption = False,
) -> None:
    """Roll an agent to a new version, a few instances at a time; stop if new ones fail."""
    c = cli(ctx, as_json)

    Result = tuple[FleetDesired, ops.RolloutResult | None]

    async def body(bus: Bus, app: FleetApplication) -> Result:
        desired = await ops.fleet_command(
            bus,
            app,
            name,
            "upgrade",
            by=c.settings.principal,
            reason=reason,
            agent=agent,
            version=version,
            target=target,
        )
        if not wait or not desired.running:
            return desired, None
        return desired, await ops.wait_rollout(bus, name, agent, version, timeout=timeout)

    desired, result = _with_app(c, body)
    if c.json:
        emit_json(
            {
                "command": "upgrade",
                "desired": desired.model_dump(mode="json"),
                "rollout": None
                if result is None
                else {"done": result.done, "message": result.message},
            }
        )
    else:
        _print_desired(c, "upgrading", desired)
        if result is not None:
            colour = "green" if result.done else "red"
            c.out.print(f"[{colour}]{escape(result.message)}[/]")
    if result is not None and not result.done:
        raise typer.Exit(1)


@fleet_app.command("rollback")
def rollback(
    ctx: typer.Context,
    name: FleetArg,
    agent: Annotated[str, typer.Argument(help="Agent to roll back.")],
    reason: ReasonOption = "",
    as_json: JsonOption = False,
) -> None:
    """Go back to the agent's previous version (and run target)."""
    _command(cli(ctx, as_json), name, "rollback", reason, agent=agent)


@fleet_app.command("ls")
def ls(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Every fleet: running or stopped, desired vs live instances."""
    c = cli(ctx, as_json)

    async def body() -> list[ops.FleetView]:
        async with open_bus(c.settings, name="shoal-fleet") as bus:
            return await ops.list_fleets(bus)

    views = run(c, body())
    if c.json:
        emit_json([v.to_json() for v in views])
        return
    table = Table("fleet", "state", "agents (actual/desired)", "generation", "updated by")
    for v in views:
        agents = ", ".join(f"{a.name} {a.actual}/{a.desired}" for a in v.agents)
        state = "running" if v.running else "[yellow]stopped[/]"
        table.add_row(v.fleet, state, agents, str(v.generation), v.updated_by)
    c.out.print(table)


@fleet_app.command("describe")
def describe(ctx: typer.Context, name: FleetArg, as_json: JsonOption = False) -> None:
    """Desired vs actual per agent, versions, instances (host, uptime, heartbeat, session)."""
    c = cli(ctx, as_json)

    async def body() -> ops.FleetView:
        async with open_bus(c.settings, name="shoal-fleet") as bus:
            return await ops.describe_fleet(bus, name)

    view = run(c, body())
    if c.json:
        emit_json(view.to_json())
        return
    state = "running" if view.running else "[yellow]stopped[/]"
    c.out.print(f"fleet [bold]{view.fleet}[/]: {state} (generation {view.generation})")
    for a in view.agents:
        versions = ", ".join(f"{v} x{n}" for v, n in sorted(a.versions.items())) or "-"
        colour = "green" if a.actual == a.desired else "yellow"
        prev = f", previous {a.previous_version}" if a.previous_version else ""
        c.out.print(
            f"\n[bold]{a.name}[/]: [{colour}]{a.actual}/{a.desired}[/] "
            f"version {a.version}{prev} (running: {versions})  {escape(a.target)}"
        )
        table = Table("slot")
        table.add_column("instance", no_wrap=True)  # ids are copied into `shoal kill`
        for column in ("version", "host", "pid", "uptime", "heartbeat", "session"):
            table.add_column(column)
        for i in a.instances:
            table.add_row(
                "-" if i.slot is None else str(i.slot),
                i.instance,
                i.version,
                i.host,
                str(i.pid),
                f"{i.uptime_s:.0f}s",
                f"{i.heartbeat_age_s:.1f}s ago",
                ", ".join(i.sessions) or "-",
            )
        if a.instances:
            c.out.print(table)
        for s in a.problems:
            c.out.print(
                f"  [red]slot {s.slot} {s.state}[/] on {s.host} ({s.supervisor}), "
                f"{s.restarts} restart(s): {escape(s.message)}"
            )


@fleet_app.command("history")
def history(ctx: typer.Context, name: FleetArg, as_json: JsonOption = False) -> None:
    """Every command given to the fleet: when, who, what, why."""
    c = cli(ctx, as_json)

    async def body() -> list[Any]:
        app = ops.open_fleet_app(c.settings)
        try:
            return await ops.fleet_history(app, name)
        finally:
            app.close()

    entries = run(c, body())
    if c.json:
        emit_json([e.__dict__ for e in entries])
        return
    table = Table("#", "when", "command", "by", "why", "detail")
    for e in entries:
        table.add_row(
            str(e.version),
            e.at.strftime("%Y-%m-%d %H:%M:%S"),
            e.command,
            e.by,
            escape(e.reason),
            escape(_detail(e.command, e.detail)),
        )
    c.out.print(table)


def _detail(command: str, detail: dict[str, Any]) -> str:
    if command == "apply":
        agents = detail.get("spec", {}).get("agents", [])
        return ", ".join(f"{a['name']}={a['replicas']}@{a['version']}" for a in agents)
    if command == "scale":
        return ", ".join(f"{k}={v}" for k, v in detail.get("replicas", {}).items())
    if command in ("upgrade", "rollback"):
        return f"{detail.get('agent')} → {detail.get('version')}"
    return ""


def register(app: typer.Typer) -> None:
    app.add_typer(fleet_app, name="fleet")
