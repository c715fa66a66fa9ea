"""``shoal kill …`` and ``shoal unkill …``: set or lift a kill switch."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from shoal.bus import KillScope, KillSwitch
from shoal.ops import kill as ops
from shoal.ops.cli._common import Cli, JsonOption, cli, emit_json, run
from shoal.ops.connect import open_bus


def _opt(scope: str, what: str) -> object:
    return typer.Option(f"--{scope}", help=f"Kill switch on one {what}.")


InstanceOpt = Annotated[str | None, _opt("instance", "agent instance (its process stops)")]
SessionOpt = Annotated[str | None, _opt("session", "session (IID)")]
GoalOpt = Annotated[str | None, _opt("goal", "goal (GID): every session serving it")]
FleetOpt = Annotated[str | None, _opt("fleet", "fleet (its instances stop)")]
ToolOpt = Annotated[str | None, _opt("tool", "tool, in every instance of every fleet")]
ModelOpt = Annotated[str | None, _opt("model", "model, in every instance of every fleet")]
PrincipalOpt = Annotated[str | None, _opt("principal", "principal: all work on their behalf")]
AllOpt = Annotated[bool, typer.Option("--all", help="Everything: every call, every instance.")]
ReasonOpt = Annotated[str, typer.Option("--reason", "-r", help="Why (recorded in the audit).")]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Set it even if nothing knows the target (yet).")
]


def _scope(
    c: Cli,
    instance: str | None,
    session: str | None,
    goal: str | None,
    fleet: str | None,
    tool: str | None,
    model: str | None,
    principal: str | None,
    all_: bool,
) -> tuple[KillScope, str | None]:
    async def parse() -> tuple[KillScope, str | None]:
        options = {
            "instance": instance,
            "session": session,
            "goal": goal,
            "fleet": fleet,
            "tool": tool,
            "model": model,
            "principal": principal,
        }
        return ops.parse_scope(options, all_)

    return run(c, parse())


def kill(
    ctx: typer.Context,
    instance: InstanceOpt = None,
    session: SessionOpt = None,
    goal: GoalOpt = None,
    fleet: FleetOpt = None,
    tool: ToolOpt = None,
    model: ModelOpt = None,
    principal: PrincipalOpt = None,
    all_: AllOpt = False,
    reason: ReasonOpt = "",
    force: ForceOpt = False,
    list_: Annotated[bool, typer.Option("--list", help="Show the switches set now.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Stop exactly one instance, session, goal, fleet, tool, model, principal — or all.

    The target must be known (a running instance, a session on the log, a declared fleet,
    a tool or model seen or priced) unless --force. Under a slow server the kill is retried
    until --timeout; the exit status is 0 only once the server confirmed the switch written.
    """
    c = cli(ctx, as_json)
    if list_:
        _list(c)
        return
    scope, name = _scope(c, instance, session, goal, fleet, tool, model, principal, all_)
    body = ops.kill_with_retry(
        c.settings,
        scope,
        name,
        by=c.settings.principal,
        reason=reason,
        timeout=c.timeout,
        force=force,
    )
    result = run(c, body, bounded=False)
    if c.json:
        emit_json(
            {
                "key": result.key,
                "written": True,
                "attempts": result.attempts,
                "audited": result.audited,
                "switch": result.switch.model_dump(mode="json"),
                "instances": result.instances,
            }
        )
        return
    tries = f" after {result.attempts} attempts" if result.attempts > 1 else ""
    c.out.print(f"kill switch [bold]{result.key}[/] set: written, confirmed by the server{tries}")
    if result.instances:
        c.out.print(f"stopping {len(result.instances)} instance(s): {', '.join(result.instances)}")
    if not result.audited:
        c.err.print(
            f"[yellow]warning: the audit events were not recorded ({result.audit_error})[/]"
        )


def _list(c: Cli) -> None:
    async def body() -> list[tuple[str, KillSwitch]]:
        async with open_bus(c.settings, start=False, name="shoal-kill") as bus:
            return await ops.list_kills(bus)

    switches = run(c, body())
    if c.json:
        emit_json([{"key": k, **s.model_dump(mode="json")} for k, s in switches])
        return
    table = Table("key", "by", "at", "reason")
    for key, s in switches:
        table.add_row(key, s.by, s.at.strftime("%Y-%m-%d %H:%M:%S"), escape(s.reason))
    c.out.print(table)


def unkill(
    ctx: typer.Context,
    instance: InstanceOpt = None,
    session: SessionOpt = None,
    goal: GoalOpt = None,
    fleet: FleetOpt = None,
    tool: ToolOpt = None,
    model: ModelOpt = None,
    principal: PrincipalOpt = None,
    all_: AllOpt = False,
    reason: ReasonOpt = "",
    as_json: JsonOption = False,
) -> None:
    """Lift a kill switch (a killed instance's slot or fleet is started again)."""
    c = cli(ctx, as_json)
    scope, name = _scope(c, instance, session, goal, fleet, tool, model, principal, all_)

    async def body() -> KillSwitch:
        async with open_bus(c.settings, name="shoal-kill") as bus:
            return await ops.unkill(bus, scope, name, by=c.settings.principal, reason=reason)

    switch = run(c, body())
    if c.json:
        emit_json({"lifted": switch.model_dump(mode="json")})
    else:
        c.out.print(f"kill switch lifted (set by {switch.by}: {escape(switch.reason) or '-'})")


def register(app: typer.Typer) -> None:
    app.command()(kill)
    app.command()(unkill)
