"""The registry's operator side: what ``fleet apply|upgrade`` register, the certification gate
of production fleets, and the commands of ``shoal registry``.

``fleet apply`` registers every agent version of the spec that the registry does not have
yet, as ``draft`` (with what the agent's code declares when its target imports here:
capabilities and their schemas, purpose, tools), and ``fleet upgrade`` the version it rolls
to. A fleet spec with ``production: true`` is then refused, before anything changes, unless
every agent version it would run is ``certified`` — and for the run target it was certified
for, and with the manifest it was certified with when the spec overrides the manifest.
Each registry command is audited on ``<p>.control.registry.<verb>`` like fleet commands.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, get_type_hints

from pydantic import BaseModel, TypeAdapter

from shoal.bus import Bus, ShoalSettings
from shoal.errors import NotFound, Refused, ShoalError
from shoal.schemas import ControlAccepted, ControlRefused
from shoal.schemas.fleet import FleetSpec
from shoal.schemas.manifest import CapabilityManifest
from shoal.schemas.registry import (
    AgentRegistration,
    CapabilitySpec,
    RegistrationFile,
    ToolRegistration,
)

if TYPE_CHECKING:  # the core (eventsourcing) loads when a command needs it
    from shoal.aggregates.definitions import RegistryApplication
    from shoal.aggregates.fleet import FleetApplication

__all__ = [
    "audit",
    "certification_problem",
    "collaboration_problem",
    "describe_target",
    "gate_apply",
    "gate_upgrade",
    "mcp_registrations",
    "open_registry_app",
    "register_file",
]

log = logging.getLogger("shoal.registry")


def open_registry_app(settings: ShoalSettings) -> RegistryApplication:
    from shoal.aggregates.registry_service import open_registry

    return open_registry(settings)


def _schema(annotation: Any) -> dict[str, Any] | None:
    if annotation is None or annotation is type(None):
        return None
    try:
        schema: dict[str, Any] = TypeAdapter(annotation).json_schema()
    except Exception:  # an annotation pydantic cannot describe: no schema, not a failure
        return None
    return schema


def runs_of(target: str | None, command: Sequence[str] | None) -> str:
    """What a version runs, as the registry pins it: the target, or the command line."""
    return shlex.join(command) if command is not None else target or ""


def describe_target(
    name: str,
    version: str,
    target: str,
    manifest: CapabilityManifest | None,
    *,
    command: Sequence[str] | None = None,
    serves: Sequence[str] = (),
) -> tuple[AgentRegistration, list[ToolRegistration]]:
    """What the registry records of a spec's agent: the code's declaration when ``target``
    imports here (capabilities with input and output schemas, purpose, tools), else the
    target and manifest alone. A ``command`` agent (not Python) is its command line and the
    capabilities its spec names."""
    from shoal.agents.serve import resolve_agent

    if command is not None:
        caps = [CapabilitySpec(name=c) for c in serves]
        reg = AgentRegistration(
            name=name,
            version=version,
            target=runs_of(None, command),
            capabilities=caps,
            manifest=manifest or CapabilityManifest(),
        )
        return reg, []
    try:
        agent = resolve_agent("registry", name, target)
    except (Exception, SystemExit) as e:  # user code: any failure to import is "unknown"
        log.warning("cannot import %s to describe %s %s: %s", target, name, version, e)
        return (
            AgentRegistration(
                name=name, version=version, target=target, manifest=manifest or CapabilityManifest()
            ),
            [],
        )
    capabilities = []
    for cap, handler in agent.handlers.items():
        try:
            returns = get_type_hints(handler.fn).get("return")
        except Exception:
            returns = None
        doc = (handler.fn.__doc__ or "").strip().splitlines()
        capabilities.append(
            CapabilitySpec(
                name=cap,
                description=doc[0] if doc else "",
                input_schema=handler.input.json_schema(),
                output_schema=_schema(returns)
                if isinstance(returns, type) and issubclass(returns, BaseModel)
                else None,
            )
        )
    if agent.goal_handler is not None:
        capabilities.append(CapabilitySpec(name="goals", description="the fleet's goals"))
    tools = [
        ToolRegistration(
            name=t.name, version=t.version, purpose=t.description, side_effects=t.side_effects
        )
        for t in agent.tools.values()
    ]
    reg = AgentRegistration(
        name=name,
        version=version,
        purpose=agent.description,
        target=target,
        capabilities=capabilities,
        manifest=manifest or agent.manifest,
    )
    return reg, tools


def _register_quietly(
    app: RegistryApplication, reg: AgentRegistration | ToolRegistration, by: str
) -> None:
    # A version past draft keeps its certified content: the gate below compares, and a
    # fleet that is not production runs what it says without rewriting the record.
    try:
        app.register(reg, by, "registered by fleet apply")
    except Refused as e:
        log.info("registry keeps %s %s: %s", reg.name, reg.version, e)


def certification_problem(
    app: RegistryApplication,
    fleet: str,
    agent: str,
    version: str,
    target: str,
    manifest: CapabilityManifest | None,
) -> str | None:
    """Why a production fleet may not run ``agent`` at ``version`` (one line), or None."""
    try:
        definition = app.get("agent", agent)
        entry = definition.entry(version)
    except NotFound:
        return (
            f"fleet {fleet} is production: agent {agent} version {version} is not registered, "
            "so not certified (shoal registry register FILE, then certify)"
        )
    if entry.state != "certified":
        return (
            f"fleet {fleet} is production: agent {agent} version {version} is {entry.state}, "
            f"not certified (shoal registry certify {agent} {version} --reason ...)"
        )
    certified_target = entry.content.get("target")
    if certified_target and certified_target != target:
        return (
            f"fleet {fleet} is production: agent {agent} version {version} was certified for "
            f"target {certified_target}, not {target}"
        )
    if manifest is not None and manifest.model_dump(mode="json") != entry.content.get("manifest"):
        return (
            f"fleet {fleet} is production: agent {agent} version {version} was certified with "
            "another manifest than the spec's (register and certify a new version)"
        )
    return None


def collaboration_problem(
    app: RegistryApplication, fleet: str, members: dict[str, str]
) -> str | None:
    """Why certified ``members`` (agent → version) may not work together, or None: an agent
    that delegates to a capability another member serves must be in that member's
    ``called_by`` when it names any."""
    content: dict[str, dict[str, Any]] = {}
    for agent, version in members.items():
        try:
            content[agent] = app.get("agent", agent).entry(version).content
        except NotFound:  # not registered: certification_problem says so where it matters
            continue
    for caller, c in content.items():
        for capability in (c.get("manifest") or {}).get("delegates") or []:
            for callee, d in content.items():
                serves = {x["name"] for x in d.get("capabilities") or []}
                allowed = (d.get("collaborators") or {}).get("called_by") or []
                if callee == caller or capability not in serves or not allowed:
                    continue
                if caller not in allowed:
                    return (
                        f"fleet {fleet} is production: agent {caller} may not delegate "
                        f"{capability} to {callee} {members[callee]}, which may be called by "
                        f"{', '.join(allowed)} only"
                    )
    return None


def _gate_apply(settings: ShoalSettings, spec: FleetSpec, by: str) -> None:
    app = open_registry_app(settings)
    try:
        for a in spec.agents:
            reg, tools = describe_target(
                a.name,
                a.version,
                a.target or "",
                a.manifest,
                command=a.command,
                serves=a.capabilities or (),
            )
            for tool in tools:
                _register_quietly(app, tool, by)
            _register_quietly(app, reg, by)
        if not spec.production:
            return
        for a in spec.agents:
            problem = certification_problem(
                app, spec.fleet, a.name, a.version, runs_of(a.target, a.command), a.manifest
            )
            if problem:
                raise Refused(problem)
        problem = collaboration_problem(app, spec.fleet, {a.name: a.version for a in spec.agents})
        if problem:
            raise Refused(problem)
    finally:
        app.close()


async def gate_apply(settings: ShoalSettings, spec: FleetSpec, by: str) -> None:
    """Register the spec's agent versions (as drafts when new); for a production spec, raise
    :class:`Refused` naming the first agent version that is not certified."""
    await asyncio.to_thread(_gate_apply, settings, spec, by)


def _gate_upgrade(
    settings: ShoalSettings,
    fleets: FleetApplication,
    name: str,
    agent: str,
    version: str,
    target: str | None,
    by: str,
) -> None:
    fleet = fleets.get_fleet(name)
    state = fleet.agents.get(agent)
    if state is None:
        return  # the aggregate refuses an unknown agent, naming the ones it has
    run_target = target or state.target
    command = None if target else state.command
    app = open_registry_app(settings)
    try:
        reg, tools = describe_target(
            agent, version, run_target, state.manifest, command=command, serves=state.capabilities
        )
        run_target = runs_of(run_target, command)
        for tool in tools:
            _register_quietly(app, tool, by)
        _register_quietly(app, reg, by)
        if fleet.spec.production:
            problem = certification_problem(app, name, agent, version, run_target, state.manifest)
            members = {a: s.version for a, s in fleet.agents.items()} | {agent: version}
            problem = problem or collaboration_problem(app, name, members)
            if problem:
                raise Refused(problem)
    finally:
        app.close()


async def gate_upgrade(
    settings: ShoalSettings,
    fleets: FleetApplication,
    name: str,
    *,
    agent: str,
    version: str,
    target: str | None = None,
    by: str,
    **_: Any,
) -> None:
    """The same gate for ``fleet upgrade``: the version it rolls to, on the fleet's target."""
    await asyncio.to_thread(_gate_upgrade, settings, fleets, name, agent, version, target, by)


async def mcp_registrations(path: str, owner: str = "") -> RegistrationFile:
    """A ``Tool`` entry (kind ``mcp-server``) for each MCP server of the gateway file at
    ``path``, and one per tool each lists, with its input and output schemas, all at the
    version the server reports (``serverInfo.version``, else ``1``).

    Each server is started or connected to as the gateway does. Its ``env`` values are not
    recorded (they may hold credentials), only their names.
    """
    from pathlib import Path

    from shoal.gateway.config import GatewayConfig
    from shoal.gateway.mcp import _client  # the gateway's own way to reach a server

    config = GatewayConfig.load(Path(path))
    tools: list[ToolRegistration] = []
    for name, spec in config.mcp_servers.items():
        try:
            async with _client(spec) as client:
                info = client.server_info
                version = (info.version if info is not None else None) or "1"
                listed = (await client.list_tools()).tools
        except Exception as e:  # a server that will not start or answer: say which and why
            raise Refused(f"MCP server {name} of {path} did not list its tools: {e}") from e
        transport: dict[str, Any] = (
            {"command": spec.command} if spec.command is not None else {"url": spec.url}
        )
        if spec.env:
            transport["env"] = sorted(spec.env)
        tools.append(
            ToolRegistration(
                name=name, version=version, kind="mcp-server", owner=owner, server=transport
            )
        )
        tools += [
            ToolRegistration(
                name=t.name,
                version=version,
                purpose=t.description or "",
                owner=owner,
                input_schema=t.input_schema,
                output_schema=t.output_schema,
                server={"mcp_server": name},
            )
            for t in listed
        ]
    if not tools:
        raise Refused(f"gateway config {path} has no mcp_servers to register")
    return RegistrationFile(tools=tools)


def register_file(
    app: RegistryApplication, doc: RegistrationFile, by: str, reason: str = ""
) -> list[tuple[str, str, str, str]]:
    """Register every agent and tool of ``doc``: (kind, name, version, outcome) each."""
    out: list[tuple[str, str, str, str]] = []
    regs: list[AgentRegistration | ToolRegistration] = [*doc.tools, *doc.agents]
    for reg in regs:
        definition, outcome = app.register(reg, by, reason)
        out.append((definition.kind, reg.name, reg.version, outcome))
    return out


async def audit(
    bus: Bus, verb: str, target: str, by: str, reason: str, error: ShoalError | None, detail: Any
) -> None:
    """Record a registry command on ``<p>.control.registry.<verb>``."""
    from shoal.ops.fleets import control_event

    data: ControlAccepted | ControlRefused
    if error is None:
        data = ControlAccepted(
            command=f"registry.{verb}", target=target, by=by, reason=reason, detail=detail
        )
    else:
        data = ControlRefused(command=f"registry.{verb}", target=target, by=by, reason=str(error))
    await bus.publish(control_event(data, by=by), bus.subjects.control("registry", verb))
