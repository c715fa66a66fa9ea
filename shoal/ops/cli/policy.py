"""``shoal policy apply|test|show``: policy as code (Cedar with risk tiers), recorded on the log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from shoal.errors import InvalidEvent
from shoal.ops.cli._common import JsonOption, cli, emit_json, run
from shoal.ops.connect import open_bus
from shoal.policy import AppliedPolicy, CallFacts, apply_policy, compile_policy, policy_key
from shoal.policy.engine import InvalidPolicy
from shoal.schemas import ModelCalled, ToolCalled, parse_event

policy_app = typer.Typer(help="Apply, test and show policies.", no_args_is_help=True)

FleetOption = Annotated[
    str | None, typer.Option("--fleet", help="The fleet it applies to (default: global).")
]


def read_policy(path: Path) -> str:
    """The policy file's text; :class:`InvalidPolicy` naming why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InvalidPolicy(f"policy {path} is not UTF-8 text (byte {e.start})") from e
    except OSError as e:
        raise InvalidPolicy(f"cannot read policy {path}: {e.strerror or e}") from e


def facts_from_json(raw: str) -> CallFacts:
    """The call a dry run decides: a ``tool.called``/``model.called`` CloudEvent, or facts."""
    try:
        doc: Any = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InvalidEvent(f"--event is not JSON: {e.msg} at column {e.colno}") from e
    if not isinstance(doc, dict):
        raise InvalidEvent("--event must be a JSON object")
    if "specversion" in doc:
        event = parse_event(doc)
        d = event.data
        if isinstance(d, ToolCalled):
            action, target, args = "tool.call", d.tool, dict(d.arguments)
        elif isinstance(d, ModelCalled):
            action, target, args = "model.call", d.model, {}
        else:
            raise InvalidEvent(f"--event of type {event.type} is not a call to decide")
        return CallFacts(
            action=action,
            target=target,
            arguments=args,
            principal=event.principal,
            fleet=event.fleet,
            agent=event.agent,
            instance=event.instance,
        )
    allowed = set(CallFacts.__dataclass_fields__)
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise InvalidEvent(f"--event has unknown field {unknown[0]!r} (known: {sorted(allowed)})")
    if not isinstance(doc.get("action"), str) or not isinstance(doc.get("target"), str):
        raise InvalidEvent("--event needs 'action' (tool.call, model.call…) and 'target'")
    doc["side_effects"] = tuple(doc.get("side_effects") or ())
    return CallFacts(**doc)


@policy_app.command("apply")
def apply(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="A Cedar policy file (see docs/policy.md).")],
    fleet: FleetOption = None,
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded on the log).")] = "",
    as_json: JsonOption = False,
) -> None:
    """Validate FILE and make it the fleet's (or the global) policy; record who and why."""
    c = cli(ctx, as_json)

    async def _apply() -> tuple[AppliedPolicy, Any]:
        text = read_policy(file)
        async with open_bus(c.settings) as bus:
            return await apply_policy(
                bus, text, fleet=fleet, by=c.settings.principal, reason=reason
            )

    applied, compiled = run(c, _apply())
    if c.json:
        emit_json({"scope": applied.scope, "version": compiled.version, "rules": compiled.rules})
    else:
        c.out.print(f"policy {compiled.version} applied ({len(compiled.rules)} rules)")


@policy_app.command("test")
def test(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="A Cedar policy file.")],
    event: Annotated[
        str, typer.Option("--event", help="A tool.called/model.called event, or call facts.")
    ],
    as_json: JsonOption = False,
) -> None:
    """Dry run: how FILE decides one call (nothing is written)."""
    c = cli(ctx, as_json)

    async def _test() -> Any:
        compiled = compile_policy(read_policy(file), version=f"{file.name}:draft")
        return compiled.evaluate(facts_from_json(event))

    verdict = run(c, _test())
    if c.json:
        emit_json({"outcome": verdict.outcome, "rule": verdict.rule, "reason": verdict.reason})
    else:
        c.out.print(f"{verdict.outcome}  (rule {verdict.rule})")


@policy_app.command("show")
def show(ctx: typer.Context, fleet: FleetOption = None, as_json: JsonOption = False) -> None:
    """The policy applied to the fleet (or globally), with its version and rules."""
    c = cli(ctx, as_json)

    async def _show() -> AppliedPolicy:
        async with open_bus(c.settings) as bus:
            kv = await bus.kv(bus.topology.policies.name)
            try:
                entry = await kv.get(policy_key(fleet))
            except Exception as e:
                raise InvalidPolicy(
                    f"no policy applied {'to fleet ' + fleet if fleet else 'globally'}"
                ) from e
            return AppliedPolicy.from_json(entry.value or b"{}", entry.revision or 0)

    applied = run(c, _show())
    compiled = compile_policy(applied.text, version=applied.version)
    if c.json:
        emit_json(
            {
                "scope": applied.scope,
                "version": applied.version,
                "by": applied.by,
                "reason": applied.reason,
                "at": applied.at.isoformat(),
                "rules": compiled.rules,
                "text": applied.text,
            }
        )
        return
    c.out.print(f"{applied.version}  applied by {applied.by} at {applied.at:%Y-%m-%d %H:%M:%S}Z")
    if applied.reason:
        c.out.print(f"why: {applied.reason}")
    c.out.print("rules: " + (", ".join(compiled.rules) or "(none: everything is allowed)"))


def register(app: typer.Typer) -> None:
    app.add_typer(policy_app, name="policy")
