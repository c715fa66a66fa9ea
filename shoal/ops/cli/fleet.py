"""``shoal fleet apply|ls|describe|start|stop|scale|upgrade|rollback|history``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.markup import escape

from shoal.bus import Bus
from shoal.errors import InvalidOption, InvalidSpec, Refused
from shoal.ops import fleets as ops
from shoal.ops.canary_wait import wait_canary
from shoal.ops.cli._common import Cli, JsonOption, cli, emit_json, fail, run
from shoal.ops.cli._roles import require_role
from shoal.ops.connect import open_bus
from shoal.schemas.fleet import DEFAULT_CANARY_SAMPLES, FleetDesired, FleetSpec, canary_count

if TYPE_CHECKING:  # eventsourcing loads lazily: every ``shoal agent run`` imports this module
    from shoal.aggregates.fleet import FleetApplication

fleet_app = typer.Typer(help="Declare, scale, upgrade and inspect fleets.", no_args_is_help=True)

T = TypeVar("T")
ReasonOption = Annotated[
    str, typer.Option("--reason", "-r", help="Why: recorded in the fleet's history.")
]
FleetArg = Annotated[str, typer.Argument(help="Fleet name.")]
WaitOption = Annotated[
    bool, typer.Option("--wait", help="Wait until running instances match, showing progress.")
]
WaitTimeout = Annotated[
    float, typer.Option("--wait-timeout", help="Seconds --wait may take before exit 1.")
]


def _with_app(
    c: Cli, body: Callable[[Bus, FleetApplication], Awaitable[T]], *, bounded: bool = True
) -> T:
    require_role(c, "operator", "fleet")  # every fleet command that changes desired state

    async def _run() -> T:
        app = ops.open_fleet_app(c.settings)
        try:
            async with open_bus(c.settings, name="shoal-fleet") as bus:
                return await body(bus, app)
        finally:
            app.close()

    return run(c, _run(), bounded=bounded)


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
    wait: WaitOption = False,
    wait_timeout: WaitTimeout = 120.0,
    as_json: JsonOption = False,
) -> None:
    """Register a fleet from a spec file, or update it (declarative: the spec wins)."""
    c = cli(ctx, as_json)
    parsed = _load_spec(spec)

    async def body(bus: Bus, app: FleetApplication) -> FleetDesired:
        return await ops.apply_fleet(bus, app, parsed, by=c.settings.principal, reason=reason)

    desired = _with_app(c, body)
    if not (wait and c.json):
        _print_desired(c, "applied", desired)
    if wait:
        _wait(c, desired.fleet, wait_timeout)


def _progress_line(view: ops.FleetView) -> str:
    parts = []
    for a in view.agents:
        versions = ", ".join(f"{n} at {v}" for v, n in sorted(a.versions.items()))
        parts.append(f"{a.name} {a.actual}/{a.desired}" + (f" ({versions})" if versions else ""))
    return f"fleet {view.fleet}: " + "; ".join(parts)


def _converged(view: ops.FleetView) -> bool:
    want = (lambda a: a.desired) if view.running else (lambda a: 0)
    return all(a.actual == want(a) and a.versions.get(a.version, 0) == want(a) for a in view.agents)


async def wait_converged(
    c: Cli, bus: Bus, name: str, timeout: float, poll_s: float = 0.5
) -> tuple[bool, ops.FleetView]:
    """Poll the fleet until running instances match desired state; a line per change."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        view = await ops.describe_fleet(bus, name)
        line = _progress_line(view)
        if line != last and not c.json:
            c.err.print(escape(line), highlight=False)
            last = line
        if _converged(view):
            return True, view
        if time.monotonic() > deadline:
            return False, view
        await asyncio.sleep(poll_s)


def _finish_wait(c: Cli, ok: bool, view: ops.FleetView, timeout: float) -> None:
    if c.json:
        emit_json({"converged": ok, "fleet": view.to_json()})
    elif ok:
        c.out.print(f"[green]converged:[/] {escape(_progress_line(view))}")
    else:
        c.out.print(f"[red]not converged after {timeout:g}s:[/] {escape(_progress_line(view))}")
    if not ok:
        raise typer.Exit(1)


def _load_spec(spec: str) -> FleetSpec:
    """The parsed spec file, before anything connects; not UTF-8 is an invalid spec."""
    try:
        return ops.load_fleet_spec(spec)
    except UnicodeDecodeError as e:
        raise InvalidSpec(
            f"fleet spec {spec} is not UTF-8 text ({e.reason} at byte {e.start})"
        ) from None


def _wait(c: Cli, name: str, timeout: float) -> None:
    async def body() -> tuple[bool, ops.FleetView]:
        async with open_bus(c.settings, start=False, name="shoal-fleet") as bus:
            return await wait_converged(c, bus, name, timeout)

    ok, view = run(c, body(), bounded=False)
    _finish_wait(c, ok, view, timeout)


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
    wait: WaitOption = False,
    wait_timeout: WaitTimeout = 120.0,
    as_json: JsonOption = False,
) -> None:
    """Set the number of instances of one or more agents."""
    c = cli(ctx, as_json)
    try:
        counts = ops.parse_replicas(replicas)
    except Refused as e:  # a malformed AGENT=N is the user's input to change
        raise InvalidOption(str(e)) from None

    async def body(bus: Bus, app: FleetApplication) -> FleetDesired:
        return await ops.fleet_command(
            bus, app, name, "scale", by=c.settings.principal, reason=reason, replicas=counts
        )

    desired = _with_app(c, body)
    if not (wait and c.json):
        _print_desired(c, "scaled", desired)
    if wait:
        _wait(c, name, wait_timeout)


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
    canary: Annotated[
        str | None,
        typer.Option(
            "--canary",
            help="Upgrade only N slots (or N% of the replicas) and hold the rest until the "
            "core judges the canary: promoted when not worse, rolled back when worse.",
        ),
    ] = None,
    min_samples: Annotated[
        int,
        typer.Option(
            "--min-samples", min=1, help="Sessions each cohort needs before the canary is judged."
        ),
    ] = DEFAULT_CANARY_SAMPLES,
    reason: ReasonOption = "",
    as_json: JsonOption = False,
) -> None:
    """Roll an agent to a new version, a few instances at a time; stop if new ones fail."""
    c = cli(ctx, as_json)
    if canary is not None:
        try:
            canary_count(canary, 100)  # the syntax, before anything connects
        except ValueError as e:
            raise InvalidOption(str(e)) from None

    Result = tuple[FleetDesired, ops.RolloutResult | None]

    async def body(bus: Bus, app: FleetApplication) -> Result:
        slots: int | None = None
        if canary is not None:
            fleet = await asyncio.to_thread(app.get_fleet, name)
            state = fleet.agents.get(agent)
            slots = canary_count(canary, state.replicas if state else 0)
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
            canary=slots,
            min_samples=min_samples,
        )
        if not wait or not desired.running:
            return desired, None
        if not c.json:
            _print_desired(c, "upgrading", desired)
        # Each batch as it rolls: a line whenever the versions running change.
        watcher = asyncio.create_task(wait_converged(c, bus, name, timeout, poll_s=0.5))
        try:
            if slots is not None:
                rollout = await wait_canary(bus, name, agent, version, slots, timeout=timeout)
            else:
                rollout = await ops.wait_rollout(bus, name, agent, version, timeout=timeout)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
        return desired, rollout

    desired, result = _with_app(c, body, bounded=not wait)
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
        if result is None:
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


@fleet_app.command("delete")
def delete(
    ctx: typer.Context,
    name: FleetArg,
    reason: ReasonOption = "",
    wait_timeout: WaitTimeout = 120.0,
    as_json: JsonOption = False,
) -> None:
    """Stop the fleet, wait for its instances to drain, and remove it from desired state.

    Its history stays in the core ('fleet history'); 'fleet apply' brings it back.
    """
    from shoal.schemas import ControlAccepted

    c = cli(ctx, as_json)

    async def body(bus: Bus, app: FleetApplication) -> tuple[bool, ops.FleetView]:
        await ops.fleet_command(bus, app, name, "stop", by=c.settings.principal, reason=reason)
        drained, view = await wait_converged(c, bus, name, wait_timeout)
        if drained:
            kv = await bus.kv(bus.topology.fleets.name)
            await kv.delete(name)
            data = ControlAccepted(
                command="fleet.delete", target=name, by=c.settings.principal, reason=reason
            )
            await bus.publish(
                ops.control_event(data, by=c.settings.principal, fleet=name),
                bus.subjects.control("fleet", "delete"),
            )
        return drained, view

    drained, _ = _with_app(c, body, bounded=False)
    if c.json:
        emit_json({"deleted": drained, "fleet": name})
    elif drained:
        c.out.print(f"fleet [bold]{name}[/] deleted (history kept: shoal fleet history {name})")
    if not drained:
        raise fail(
            c,
            f"fleet {name} stopped but its instances did not drain within {wait_timeout:g}s; "
            "not deleted (is a supervisor running?)",
            1,
            "timeout",
        )


def register(app: typer.Typer) -> None:
    from shoal.ops.cli import fleet_views  # noqa: F401  (ls, describe, history on fleet_app)

    app.add_typer(fleet_app, name="fleet")
