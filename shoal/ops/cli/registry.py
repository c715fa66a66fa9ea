"""``shoal registry ls|search|show|card|register|certify|deprecate|retire``.

Reads open the registry store as ``fleet history`` opens the fleets store; writes are
operator commands (role checked, audited on ``<p>.control.registry.<verb>``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from shoal.errors import InvalidSpec, ShoalError
from shoal.ops.cli._common import Cli, JsonOption, cli, emit_json, require_store, run
from shoal.ops.cli._roles import require_role
from shoal.ops.cli.layout import fit
from shoal.ops.connect import open_bus

if TYPE_CHECKING:
    from shoal.aggregates.definitions import RegistryApplication
    from shoal.aggregates.registry_query import RegistryRow

registry_app = typer.Typer(
    help="The registry of agents and tools: versions, lifecycle, A2A agent cards.",
    no_args_is_help=True,
)

T = TypeVar("T")
NameArg = Annotated[str, typer.Argument(help="Agent (or tool) name.")]
VersionArg = Annotated[str, typer.Argument(help="Version label.")]
ReasonOption = Annotated[
    str, typer.Option("--reason", "-r", help="Why: recorded with the state change (required).")
]
CapabilityOption = Annotated[
    str | None, typer.Option("--capability", help="Only versions serving this capability.")
]
StateOption = Annotated[
    str | None,
    typer.Option("--state", help="Only versions in state: draft|certified|deprecated|retired."),
]
KindOption = Annotated[
    str | None, typer.Option("--kind", help="Only agents or only tools: agent|tool.")
]
VersionOption = Annotated[
    str | None, typer.Option("--version", help="This version (default: newest certified).")
]


def _read(c: Cli, body: Callable[[RegistryApplication], T]) -> T:
    from shoal.ops.registry import open_registry_app

    require_store(c.settings, "registry")

    async def _run() -> T:
        import asyncio

        app = open_registry_app(c.settings)
        try:
            return await asyncio.to_thread(body, app)
        finally:
            app.close()

    return run(c, _run())


def _write(
    c: Cli, verb: str, target: str, reason: str, body: Callable[[RegistryApplication], T]
) -> T:
    """An operator command: role check, then the change, then its audit record."""
    require_role(c, "operator", f"registry.{verb}", target)
    from shoal.ops.registry import audit, open_registry_app

    async def _run() -> T:
        import asyncio

        app = open_registry_app(c.settings)
        by = c.settings.principal
        try:
            async with open_bus(c.settings, name="shoal-registry") as bus:
                try:
                    result = await asyncio.to_thread(body, app)
                except ShoalError as e:
                    await audit(bus, verb, target, by, reason, e, {})
                    raise
                await audit(bus, verb, target, by, reason, None, {})
                return result
        finally:
            app.close()

    return run(c, _run())


def _kind(kind: str | None) -> Literal["agent", "tool"] | None:
    from shoal.errors import InvalidOption

    if kind is None or kind in ("agent", "tool"):
        return kind  # type: ignore[return-value]
    raise InvalidOption(f"--kind {kind!r} is not one of agent, tool")


def _rows(c: Cli, text: str, capability: str | None, state: str | None, kind: str | None) -> None:
    from shoal.aggregates.registry_query import check_state, search

    check_state(state)  # a bad --state is a usage error before any store is opened
    wanted = _kind(kind)
    rows: list[RegistryRow] = _read(
        c, lambda app: search(app.all(), text, capability=capability, state=state, kind=wanted)
    )
    if c.json:
        emit_json([r.to_json() for r in rows])
        return
    if not rows:
        c.out.print("no registered version matches")
        return
    table = Table("name", "version", "state", "kind", "owner", "capabilities", "purpose")
    colour = {"certified": "green", "draft": "yellow", "deprecated": "magenta", "retired": "dim"}
    for r in rows:
        table.add_row(
            r.name,
            r.version,
            f"[{colour[r.state]}]{r.state}[/]",
            r.kind,
            escape(r.owner) or "-",
            ", ".join(r.capabilities) or "-",
            escape(r.purpose) or "-",
        )
    c.out.print(fit(table, c.out, drop=("purpose", "kind", "owner"), keep=("name", "version")))


@registry_app.command("ls")
def ls(
    ctx: typer.Context,
    capability: CapabilityOption = None,
    state: StateOption = None,
    kind: KindOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every registered version of every agent and tool, with its lifecycle state."""
    _rows(cli(ctx, as_json), "", capability, state, kind)


@registry_app.command("search")
def search_cmd(
    ctx: typer.Context,
    text: Annotated[str, typer.Argument(help="Words in a name, purpose, owner or capability.")],
    capability: CapabilityOption = None,
    state: StateOption = None,
    kind: KindOption = None,
    as_json: JsonOption = False,
) -> None:
    """Find agents and tools by what they do (case-insensitive)."""
    _rows(cli(ctx, as_json), text, capability, state, kind)


@registry_app.command("show")
def show(ctx: typer.Context, name: NameArg, as_json: JsonOption = False) -> None:
    """One agent or tool: purpose, owner, and every version with its history."""
    c = cli(ctx, as_json)
    doc: dict[str, Any] = _read(c, lambda app: app.find(name).to_json())
    if c.json:
        emit_json(doc)
        return
    purpose = escape(doc["purpose"] or "-")
    c.out.print(f"{doc['kind']} [bold]{escape(doc['name'])}[/]: {purpose}", soft_wrap=False)
    c.out.print(f"owner: {escape(doc['owner'] or '-')}")
    for v in doc["versions"]:
        c.out.print(f"\n[bold]version {escape(v['version'])}[/]: {v['state']} ({v['digest']})")
        if doc["kind"] == "agent":
            caps = ", ".join(cap["name"] for cap in v.get("capabilities") or []) or "-"
            manifest = v.get("manifest") or {}
            c.out.print(f"  target: {escape(v.get('target') or '-')}")
            c.out.print(f"  capabilities: {caps}")
            c.out.print(f"  delegates to: {', '.join(manifest.get('delegates') or []) or '-'}")
            called = (v.get("collaborators") or {}).get("called_by") or []
            c.out.print(f"  called by: {', '.join(called) or 'any agent of its fleet'}")
        else:
            c.out.print(f"  kind: {v.get('kind')}")
        table = Table("when", "state", "by", "why")
        for h in v["history"]:
            table.add_row(
                h["at"].strftime("%Y-%m-%d %H:%M:%S"), h["state"], h["by"], escape(h["reason"])
            )
        c.out.print(fit(table, c.out, keep=("when", "state")))


@registry_app.command("card")
def card(
    ctx: typer.Context, name: NameArg, version: VersionOption = None, as_json: JsonOption = False
) -> None:
    """The agent's A2A agent card (JSON, as the console serves it)."""
    from shoal.aggregates.agent_cards import agent_card

    c = cli(ctx, as_json)
    prefix = c.settings.prefix
    doc = _read(c, lambda app: agent_card(app.get("agent", name), version, prefix=prefix))
    if c.json:
        emit_json(doc)
    else:
        c.out.print_json(json.dumps(doc))


@registry_app.command("register")
def register_cmd(
    ctx: typer.Context,
    file: Annotated[
        str | None, typer.Argument(help="Registration YAML: agents and/or tools.")
    ] = None,
    gateway_config: Annotated[
        str | None,
        typer.Option(
            "--gateway-config",
            help="Register the MCP servers of this gateway file and the tools each lists.",
        ),
    ] = None,
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why: recorded.")] = "",
    as_json: JsonOption = False,
) -> None:
    """Register agent and tool versions from a file (new versions start as draft)."""
    from shoal.errors import InvalidOption
    from shoal.ops.registry import mcp_registrations, register_file
    from shoal.schemas.registry import RegistrationFile, parse_registration

    c = cli(ctx, as_json)
    if (file is None) == (gateway_config is None):
        raise InvalidOption("give a registration FILE or --gateway-config PATH (one of them)")
    doc: RegistrationFile
    if file is not None:
        doc = parse_registration(_read_text(file), origin=file)
        origin = file
    else:
        assert gateway_config is not None
        from shoal.gateway.config import GatewayConfig

        GatewayConfig.load(Path(gateway_config))  # a bad file is a usage error, before connecting
        doc = run(c, mcp_registrations(gateway_config))
        origin = gateway_config
    by = c.settings.principal
    results = _write(c, "register", origin, reason, lambda app: register_file(app, doc, by, reason))
    if c.json:
        emit_json([{"kind": k, "name": n, "version": v, "outcome": o} for k, n, v, o in results])
        return
    for kind, name, version, outcome in results:
        c.out.print(f"{kind} [bold]{escape(name)}[/] {escape(version)}: {outcome}")


def _read_text(file: str) -> str:
    try:
        with open(file, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise InvalidSpec(f"cannot read registration {file}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise InvalidSpec(f"registration {file} is not UTF-8 text ({e.reason})") from None


def _transition(
    ctx: typer.Context, verb: str, name: str, version: str, reason: str, as_json: bool
) -> None:
    c = cli(ctx, as_json)
    by = c.settings.principal
    definition = _write(
        c,
        verb,
        f"{name}@{version}",
        reason,
        lambda app: app.transition(name, version, verb, by, reason),
    )
    entry = definition.entry(version)
    if c.json:
        emit_json({"kind": definition.kind, "name": name, **entry.to_json()})
        return
    c.out.print(
        f"{definition.kind} [bold]{escape(name)}[/] {escape(version)}: {entry.state} "
        f"by {escape(by)} ({escape(reason)})"
    )


def _lifecycle_command(verb: str, doc: str) -> None:
    def command(
        ctx: typer.Context,
        name: NameArg,
        version: VersionArg,
        reason: ReasonOption = "",
        as_json: JsonOption = False,
    ) -> None:
        _transition(ctx, verb, name, version, reason, as_json)

    command.__doc__ = doc
    registry_app.command(verb)(command)


for _verb, _doc in (
    ("certify", "Certify a draft version: production fleets may run it."),
    ("deprecate", "Deprecate a certified version: production fleets may no longer run it."),
    ("retire", "Retire a version for good (its record stays)."),
):
    _lifecycle_command(_verb, _doc)


def register(app: typer.Typer) -> None:
    app.add_typer(registry_app, name="registry")
