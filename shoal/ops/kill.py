"""Kill switches (library side of ``shoal kill`` / ``shoal unkill``).

A kill sets one key in the kill bucket (``instance.<id>``, ``session.<iid>``, ``goal.<gid>``,
``fleet.<name>``, ``tool.<name>``, ``model.<name>``, ``principal.<name>`` or ``all``). Every
gateway mirrors that bucket and refuses its next model or tool call; supervisors mirror it
too and terminate the processes of a killed instance or fleet (or of everything, for
``all``), never restarting them while the key exists. ``unkill`` deletes the key.

Each kill is audited: ``control.accepted`` on ``<prefix>.control.<scope>.kill``, and on the
event log ``agent.killed`` for each instance it stops (as far as presence knows them) or
``session.killed`` for a session.

Under a slow or paused server, :func:`kill_with_retry` retries the whole kill (connect,
check, put) within one deadline and says which of two things happened: the switch is
written (the put was acknowledged), or it could not be confirmed (:class:`KillUnconfirmed`,
exit 1). The put is idempotent, so a retry after a lost acknowledgement is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import nats.errors
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, ServiceUnavailableError

from shoal.bus import (
    KILL_SCOPES,
    Bus,
    KillScope,
    KillSwitch,
    Presence,
    ShoalSettings,
    kill_key,
    parse_kill_key,
)
from shoal.errors import InvalidOption, KillUnconfirmed, NatsUnreachable, NotFound
from shoal.ops.connect import open_bus
from shoal.ops.fleets import control_event, kv_snapshot
from shoal.ops.targets import check_kill_target
from shoal.schemas import AgentKilled, CloudEvent, ControlAccepted, SessionKilled, utcnow

__all__ = ["KillResult", "kill", "kill_with_retry", "list_kills", "parse_scope", "unkill"]

log = logging.getLogger("shoal.kill")

_RETRYABLE = (
    TimeoutError,
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoServersError,
    nats.errors.StaleConnectionError,
    ServiceUnavailableError,
    NatsUnreachable,
    ConnectionError,
)
"""What a slow, paused or restarting server looks like; anything else is not retried."""


@dataclass(frozen=True)
class KillResult:
    """What a kill set: its key, the instances it will stop, and whether it was audited."""

    key: str
    switch: KillSwitch
    instances: list[str]
    audited: bool = True
    attempts: int = 1
    audit_error: str = ""


def parse_scope(options: dict[str, str | None], all_: bool) -> tuple[KillScope, str | None]:
    """Exactly one of ``--instance/--session/…`` or ``--all``; refuse anything else."""
    given: list[tuple[str, str | None]] = [(s, v) for s, v in options.items() if v]
    if all_:
        given.append(("all", None))
    if len(given) != 1:
        names = ", ".join(f"--{s}" for s in KILL_SCOPES)
        raise InvalidOption(f"give exactly one of {names}")
    scope, name = given[0]
    if scope not in KILL_SCOPES:
        raise InvalidOption(f"unknown kill scope {scope!r}")
    return scope, name


async def kill_with_retry(
    settings: ShoalSettings,
    scope: KillScope,
    name: str | None,
    *,
    by: str,
    reason: str = "",
    timeout: float,
    force: bool = False,
) -> KillResult:
    """Connect, check the target (unless ``force``) and set the switch, retrying until
    ``timeout``; :class:`KillUnconfirmed` if no attempt got the put acknowledged."""
    key = kill_key(scope, name)
    deadline = time.monotonic() + timeout
    attempts, last = 0, "no attempt finished"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0.05:
            break
        attempts += 1
        # Each attempt gets a share of the time, so a hung connection leaves room to retry.
        budget = remaining if attempts >= 3 else max(min(remaining, timeout / 3), 0.5)
        try:
            async with asyncio.timeout(budget):
                async with open_bus(settings, name="shoal-kill") as bus:
                    if not force:
                        await check_kill_target(bus, scope, name)
                    result = await kill(bus, scope, name, by=by, reason=reason)
                    return KillResult(
                        result.key,
                        result.switch,
                        result.instances,
                        result.audited,
                        attempts,
                        result.audit_error,
                    )
        except _RETRYABLE as e:
            last = _why(e)
        await asyncio.sleep(min(0.2 * attempts, max(deadline - time.monotonic(), 0)))
    raise KillUnconfirmed(
        f"kill switch {key} NOT confirmed written after {attempts} attempt(s) in "
        f"{timeout:g}s ({last}); assume it is not set: retry, or check 'shoal kill --list'"
    )


def _why(e: BaseException) -> str:
    if isinstance(e, TimeoutError | nats.errors.TimeoutError):
        return "the server did not answer in time"
    return str(e) or type(e).__name__


async def kill(
    bus: Bus, scope: KillScope, name: str | None, *, by: str, reason: str = ""
) -> KillResult:
    """Set the kill key, then record the audit events; return what it stops."""
    key = kill_key(scope, name)
    switch = KillSwitch(scope=scope, name=name, reason=reason, by=by, at=utcnow())
    # Read presence first: a killed instance stops and removes its heartbeat within ms.
    stopped = await _affected_instances(bus, scope, name)
    try:
        kv = await bus.kv(bus.topology.kill.name)
    except BucketNotFoundError:  # a fresh server: provision, then set the switch
        await bus.provision()
        kv = await bus.kv(bus.topology.kill.name)
    await kv.put(key, switch.model_dump_json().encode())
    # The switch is written: from here on a failure only loses the audit, and says so.
    events: list[tuple[str, CloudEvent] | CloudEvent] = [
        (
            bus.subjects.control(scope, "kill"),
            control_event(
                ControlAccepted(
                    command=f"kill.{scope}",
                    target=name or "all",
                    by=by,
                    reason=reason,
                    detail={"key": key, "instances": [p.instance for p in stopped]},
                ),
                by=by,
            ),
        )
    ]
    for p in stopped:
        events.append(
            CloudEvent.new(
                AgentKilled(by=by, reason=reason),
                iid=p.instance,
                source=f"shoal://cli/{by}",
                fleet=p.fleet,
                agent=p.agent,
                instance=p.instance,
                principal=by,
            )
        )
    if scope == "session" and name:
        gid, parentiid, fleet = await _session_identity(bus, name)
        events.append(
            CloudEvent.new(
                SessionKilled(by=by, reason=reason),
                iid=name,
                gid=gid,
                parentiid=parentiid,
                fleet=fleet,
                source=f"shoal://cli/{by}",
                principal=by,
            )
        )
    instances = [p.instance for p in stopped]
    try:
        await bus.publish_many(events)
    except _RETRYABLE as e:
        return KillResult(key, switch, instances, audited=False, audit_error=_why(e))
    return KillResult(key, switch, instances)


async def _session_identity(bus: Bus, iid: str) -> tuple[str | None, str | None, str | None]:
    """The session's GID, parent and fleet from its events on the log (all ``None`` if it has
    none yet): ``session.killed`` carries the GID so a partitioned core folds it in the
    goal's partition (docs/scale.md)."""
    try:
        known = [s.event for s in await bus.session_events(iid) if s.event is not None]
    except _RETRYABLE as e:
        # The switch is set (what agents obey); the event then names the IID only.
        log.warning(
            "cannot read session %s from the log (%s): session.killed has no GID", iid, _why(e)
        )
        known = []
    if not known:
        return None, None, None
    gid = next((e.gid for e in known if e.gid), None)
    return gid, known[0].parentiid, known[0].fleet


async def unkill(
    bus: Bus, scope: KillScope, name: str | None, *, by: str, reason: str = ""
) -> KillSwitch:
    """Delete the kill key (the switch lifted); :class:`NotFound` if it was not set."""
    key = kill_key(scope, name)
    kv = await bus.kv(bus.topology.kill.name)
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        raise NotFound(f"no kill switch {key} is set") from None
    switch = KillSwitch.model_validate_json(entry.value or b"{}")
    await kv.delete(key)
    data = ControlAccepted(
        command=f"unkill.{scope}", target=name or "all", by=by, reason=reason, detail={"key": key}
    )
    await bus.publish(control_event(data, by=by), bus.subjects.control(scope, "unkill"))
    return switch


async def list_kills(bus: Bus) -> list[tuple[str, KillSwitch]]:
    """Every kill switch set now, by key."""
    entries = await kv_snapshot(await bus.kv(bus.topology.kill.name))
    out = []
    for key, entry in sorted(entries.items()):
        parse_kill_key(key)
        out.append((key, KillSwitch.model_validate_json(entry.value or b"{}")))
    return out


async def _affected_instances(bus: Bus, scope: KillScope, name: str | None) -> list[Presence]:
    # Only the scopes whose processes supervisors terminate get agent.killed events.
    if scope not in ("instance", "fleet", "all"):
        return []
    entries = await kv_snapshot(await bus.kv(bus.topology.presence.name))
    presences = [Presence.model_validate_json(e.value or b"{}") for e in entries.values()]
    if scope == "instance":
        return [p for p in presences if p.instance == name]
    if scope == "fleet":
        return [p for p in presences if p.fleet == name]
    return presences
