"""Folding lifecycle events into the registry of instances: started, stopped, killed.

``agent.started`` registers an instance (or records its restart), ``agent.stopped`` and
``agent.killed`` change its status, and ``agent.crashlooping`` (a supervisor's report about a
slot) is recorded on the instance when the core knows it. None of them is an interaction, so
none opens a session.
"""

from __future__ import annotations

from shoal.aggregates.instance import Instance
from shoal.aggregates.workingset import WorkingSet
from shoal.schemas import AgentCrashLooping, AgentKilled, AgentStarted, AgentStopped, CloudEvent

__all__ = ["LIFECYCLE_TYPES", "apply_lifecycle"]

LIFECYCLE_TYPES = frozenset(
    {AgentStarted.type, AgentStopped.type, AgentKilled.type, AgentCrashLooping.type}
)


def apply_lifecycle(ws: WorkingSet, ev: CloudEvent, seq: int) -> None:
    """Record an ``agent.*`` event on its instance."""
    if not ev.instance:  # an agent event naming no instance has nothing to apply to
        return
    known = ws.instances.get(ev.instance)
    d = ev.data
    if isinstance(d, AgentStarted):
        if known is None:
            known = Instance(
                instance=ev.instance,
                fleet=ev.fleet,
                agent=ev.agent,
                version=d.version,
                capabilities=list(d.capabilities),
                host=d.host,
                pid=d.pid,
                seq=seq,
                timestamp=ev.time,
            )
            ws.instances[ev.instance] = known
        else:
            known.restarted(seq, d.version, list(d.capabilities), d.host, d.pid, timestamp=ev.time)
    elif known is None:
        if not isinstance(d, AgentKilled):
            return
        # A kill for an instance the core never saw start: remember it, so it cannot start.
        known = Instance(
            instance=ev.instance,
            fleet=ev.fleet,
            agent=ev.agent,
            version="",
            capabilities=[],
            host="",
            pid=0,
            seq=seq,
            timestamp=ev.time,
        )
        ws.instances[ev.instance] = known
        known.killed(seq, d.by, d.reason, timestamp=ev.time)
    elif isinstance(d, AgentStopped):
        known.stopped(seq, d.reason, timestamp=ev.time)
    elif isinstance(d, AgentKilled) and known.trusted:
        known.killed(seq, d.by, d.reason, timestamp=ev.time)
    elif isinstance(d, AgentCrashLooping):
        known.crash_looping(seq, d.exits, d.exit_code, d.message[:500], timestamp=ev.time)
    ws.collect(known)
