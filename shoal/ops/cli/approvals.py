"""``shoal approvals ls|show|grant|deny|review``: the humans in the loop of high-risk calls."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from shoal.errors import InvalidOption
from shoal.ops.cli._common import JsonOption, cli, emit_json, run
from shoal.ops.cli._roles import require_role
from shoal.ops.cli.layout import fit
from shoal.ops.connect import open_bus
from shoal.policy import Approvals, ApprovalState

approvals_app = typer.Typer(
    help="Pending approvals: list, show, grant, deny.", no_args_is_help=True
)

IdArgument = Annotated[str, typer.Argument(help="The approval's id (apr-…).")]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why (recorded on the timeline).")]


def as_row(a: ApprovalState) -> dict[str, Any]:
    """An approval as JSON (times ISO 8601 with offset)."""
    row = a.model_dump(mode="json")
    row["wait_s"] = a.wait_s
    return row


_DROP = ("fleet/agent", "rule", "asked (UTC)", "state")
"""Dropped in this order where the console is too narrow."""
_KEEP = ("id", "tier", "action", "session")
"""Never wrapped: an id is copied whole into ``show``, ``grant`` or ``session show``."""


def _table(rows: list[ApprovalState], title: str) -> Table:
    # No vertical rules: at 80 columns the id, the call and the session fit whole.
    table = Table("id", "state", "tier", "action", "session", "fleet/agent", "rule", "asked (UTC)")
    table.box, table.show_edge, table.padding = box.SIMPLE_HEAD, False, (0, 1, 0, 0)
    table.title, table.title_justify = title, "left"
    for a in rows:
        # Everything here may come from an agent: text, never markup.
        table.add_row(
            *map(
                escape,
                (
                    a.id,
                    a.state,
                    a.tier,
                    f"{a.action.removesuffix('.call')} {a.target}",
                    a.iid,
                    f"{a.fleet}/{a.agent}",
                    a.rule,
                    f"{a.requested_at:%H:%M:%S}",
                ),
            )
        )
    return table


async def _list(c: Any, **kw: Any) -> list[ApprovalState]:
    async with open_bus(c.settings) as bus:
        return await (await Approvals.open(bus)).list(**kw)


@approvals_app.command("ls")
def ls(
    ctx: typer.Context,
    fleet: Annotated[str | None, typer.Option("--fleet", help="Only this fleet.")] = None,
    tier: Annotated[str | None, typer.Option("--tier", help="Only this tier.")] = None,
    all_states: Annotated[
        bool, typer.Option("--all", help="Decided ones too, not only pending.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Approvals waiting for a decision (oldest first)."""
    c = cli(ctx, as_json)
    if tier is not None and tier not in ("low", "medium", "high"):
        raise InvalidOption(f"--tier {tier!r} must be low, medium or high")
    states = ("pending", "granted", "denied", "expired") if all_states else ("pending",)
    rows = run(c, _list(c, fleet=fleet, tier=tier, states=states))
    if c.json:
        emit_json([as_row(a) for a in rows])
    elif not rows:
        c.out.print("no pending approvals")
    else:
        c.out.print(fit(_table(rows, f"{len(rows)} approval(s)"), c.out, _DROP, _KEEP))


@approvals_app.command("review")
def review(
    ctx: typer.Context,
    fleet: Annotated[str | None, typer.Option("--fleet", help="Only this fleet.")] = None,
    as_json: JsonOption = False,
) -> None:
    """The medium-tier queue: calls that ran and wait for a review after the fact."""
    c = cli(ctx, as_json)
    rows = run(c, _list(c, fleet=fleet, tier="medium", states=("pending",)))
    if c.json:
        emit_json([as_row(a) for a in rows])
    elif not rows:
        c.out.print("nothing to review")
    else:
        c.out.print(fit(_table(rows, f"{len(rows)} call(s) to review"), c.out, _DROP, _KEEP))


@approvals_app.command("show")
def show(ctx: typer.Context, approval: IdArgument, as_json: JsonOption = False) -> None:
    """One approval: the exact request (arguments as redacted for display) and its state."""
    c = cli(ctx, as_json)

    async def _show() -> ApprovalState:
        async with open_bus(c.settings) as bus:
            return await (await Approvals.open(bus)).get(approval)

    a = run(c, _show())
    if c.json:
        emit_json(as_row(a))
        return
    lines = [
        f"{a.id}  {a.state}  tier {a.tier}  rule {a.rule}",
        f"{a.action} {a.target}  session {a.iid}  ({a.fleet}/{a.agent}/{a.instance})",
        f"on behalf of {a.principal}; asked {a.requested_at.isoformat()}",
        *(f"  {key} = {value}" for key, value in a.arguments.items()),
        f"request hash {a.request_hash}",
    ]
    if a.decided_at is not None:
        lines.append(f"{a.state} by {a.decided_by} after {a.wait_s:.1f}s: {a.reason}")
    for line in lines:
        # The arguments come from the agent: printed as they are, never read as markup
        # (a "[redacted 15 chars]" or a crafted "[/]" must reach the approver unchanged).
        c.out.print(line, markup=False, highlight=False, soft_wrap=True)


def _decide(ctx: typer.Context, approval: str, grant: bool, reason: str, as_json: bool) -> None:
    c = cli(ctx, as_json)
    command = "approvals.grant" if grant else "approvals.deny"
    require_role(c, "operator", command, approval)

    async def _get() -> ApprovalState:
        async with open_bus(c.settings) as bus:
            return await (await Approvals.open(bus)).get(approval)

    # A rule may name a stricter approver (@approver("admin")): checked before deciding.
    if run(c, _get()).approver_role == "admin":
        require_role(c, "admin", command, approval)

    async def _go() -> ApprovalState:
        async with open_bus(c.settings) as bus:
            return await (await Approvals.open(bus)).decide(
                approval, grant=grant, by=c.settings.principal, reason=reason
            )

    a = run(c, _go())
    if c.json:
        emit_json(as_row(a))
    else:
        c.out.print(f"{a.id} {a.state} by {a.decided_by}")


@approvals_app.command("grant")
def grant(
    ctx: typer.Context, approval: IdArgument, reason: ReasonOption = "", as_json: JsonOption = False
) -> None:
    """Approve: the parked call runs with exactly the reviewed arguments."""
    _decide(ctx, approval, True, reason, as_json)


@approvals_app.command("deny")
def deny(
    ctx: typer.Context, approval: IdArgument, reason: ReasonOption = "", as_json: JsonOption = False
) -> None:
    """Refuse: the parked call fails with an error its handler sees."""
    _decide(ctx, approval, False, reason, as_json)


def register(app: typer.Typer) -> None:
    app.add_typer(approvals_app, name="approvals")
