"""Is a named target real? The check ``kill`` and ``goal submit`` make before acting.

A kill switch on a misspelt tool (``read_flie``) or an IID nobody used stops nothing, yet
reported success: an operator during an incident believes the fire is out. Each scope is
checked against what the platform knows of it:

- instance: a presence heartbeat, events it published, or a gateway key bound to it;
- session / goal: events of that IID / GID on the log (JetStream answers by subject);
- fleet: a desired state in the fleets bucket, or live instances of it;
- tool: the SDK's file tools, or a tool called or decided on in the log;
- model: the price table, or a model called in the log;
- principal: anyone — a principal is whoever the operator says (no registry to check).

``--force`` skips the check (a kill set before the target first appears).
"""

from __future__ import annotations

import difflib

from nats.js.errors import NotFoundError

from shoal.bus import Bus, KillScope, Presence
from shoal.errors import UnknownTarget
from shoal.ops.fleets import kv_snapshot
from shoal.schemas import is_token

__all__ = ["check_kill_target", "fleet_exists", "known_models", "known_tools"]

_NO_MESSAGE = 10037
"""JetStream's error code for "no message found" (as opposed to "stream not found")."""

BUILTIN_TOOLS = ("read_file", "list_files")
"""The SDK's own sandboxed file tools (``shoal.agents.fstools``)."""


async def check_kill_target(bus: Bus, scope: KillScope, name: str | None) -> None:
    """Raise :class:`UnknownTarget` naming ``name`` if nothing on this platform knows it."""
    if scope in ("all", "principal") or name is None:
        return
    if not is_token(name):
        raise UnknownTarget(f"--{scope} {name!r} is not a valid {scope} name (one subject token)")
    hint = "; pass --force to set the switch anyway"
    if scope == "session":
        if not await _has_events(bus, bus.subjects.session_events(name)):
            raise UnknownTarget(f"no session {name!r} on the event log{hint}")
    elif scope == "goal":
        if not await _has_events(bus, bus.subjects.goal_events(name)):
            raise UnknownTarget(f"no goal {name!r} on the event log{hint}")
    elif scope == "instance":
        if not await _instance_known(bus, name):
            raise UnknownTarget(f"no instance {name!r} is running or on the event log{hint}")
    elif scope == "fleet":
        if not await fleet_exists(bus, name):
            raise UnknownTarget(f"no fleet {name!r}: none declared, none running{hint}")
    elif scope == "tool":
        known = await known_tools(bus)
        if name not in known:
            raise UnknownTarget(f"unknown tool {name!r}{_suggest(name, known)}{hint}")
    elif scope == "model":
        known = await known_models(bus)
        if name not in known:
            raise UnknownTarget(f"unknown model {name!r}{_suggest(name, known)}{hint}")


def _suggest(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known: {', '.join(sorted(known)[:8])})" if known else ""


async def fleet_exists(bus: Bus, name: str) -> bool:
    """A desired state for the fleet, or any live instance of it."""
    kv = await bus.kv(bus.topology.fleets.name)
    try:
        await kv.get(name)
        return True
    except Exception:  # KeyNotFoundError, or an invalid key: both mean "not declared"
        pass
    return any(p.fleet == name for p in await _presences(bus))


async def _presences(bus: Bus) -> list[Presence]:
    entries = await kv_snapshot(
        await bus.kv(bus.topology.presence.name), timeout=bus.settings.request_timeout
    )
    return [Presence.model_validate_json(e.value or b"{}") for e in entries.values()]


async def _instance_known(bus: Bus, name: str) -> bool:
    """A heartbeat, events it published (its subject suffix), or a gateway key bound to it."""
    if any(p.instance == name for p in await _presences(bus)):
        return True
    for publisher in (f"agent.*.*.{name}",):
        if await _has_events(bus, bus.subjects.events_as(publisher)):
            return True
    if await _has_events(bus, bus.subjects.session_events(name)):  # its boot session
        return True
    try:
        keys = await kv_snapshot(
            await bus.kv(bus.topology.keys.name), timeout=bus.settings.request_timeout
        )
    except NotFoundError:
        return False
    for entry in keys.values():
        raw = entry.value or b""
        if f'"instance":"{name}"'.encode() in raw.replace(b" ", b""):
            return True
    return False


async def _has_events(bus: Bus, filter_subject: str) -> bool:
    try:
        msg = await bus.js.get_msg(bus.topology.events.name, subject=filter_subject)
    except NotFoundError as e:
        if e.err_code == _NO_MESSAGE:
            return False
        raise
    return msg is not None


async def known_tools(bus: Bus) -> set[str]:
    """The SDK's file tools and every tool called or decided on in the event log."""
    found = set(BUILTIN_TOOLS)
    for short_type, field in (("tool.called", "tool"), ("policy.decided", "target")):
        for item in await bus.read(bus.subjects.events_of_type(short_type)):
            data = item.event.data.model_dump() if item.event else {}
            if short_type == "policy.decided" and data.get("action") != "tool.call":
                continue
            if data.get(field):
                found.add(str(data[field]))
    return found


async def known_models(bus: Bus) -> set[str]:
    """The price table's models and every model called in the event log."""
    from shoal.aggregates.pricing import PriceTable

    found = {m for m in PriceTable.load(bus.settings.price_table).models if m != "*"}
    for item in await bus.read(bus.subjects.events_of_type("model.called")):
        model = item.event.data.model_dump().get("model") if item.event else None
        if model:
            found.add(str(model))
    return found
