"""What each principal may publish and subscribe: the one permission table, as code.

Roles are nested: a ``viewer`` reads (streams, buckets, queries), an ``operator`` also
commands (kill switches, fleets, goals, outcomes), an ``admin`` may do anything in the
account (admin endpoints, stream management). Services have their own users. An agent
*instance* gets exactly its own slice: its fleet's task consumers for its capabilities,
task subjects for the capabilities its manifest may delegate to, its own presence key, the
kill bucket read-only, and events only under its own identity suffix. docs/security.md shows
the same table in prose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shoal.auth.jwt import Permissions
from shoal.bus import ShoalSettings, Subjects, Topology

__all__ = [
    "ADMIN_ENDPOINTS",
    "PROXY_ENDPOINTS",
    "ROLES",
    "InstanceScope",
    "Role",
    "instance_permissions",
    "role_permissions",
    "service_permissions",
]

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
ADMIN_ENDPOINTS = ("export", "swap", "rebuild")
"""Query-service endpoints only ``admin`` may call."""
PROXY_ENDPOINTS = ("send", "reply", "decide")
"""Interactions endpoints that act for the principal named in the request (``by``): the
core publishes as ``shoal://cli/<by>`` and decides approvals as ``by``, so only those who
hold the whole account (admins, services such as the console) may call them; operators do
the same through the CLI, as themselves."""

OPERATOR_ENDPOINTS = (
    ("interactions", "send"),
    ("interactions", "reply"),
    ("interactions", "decide"),
)
"""Endpoints that act (message a session, answer it, decide an approval): not for ``viewer``.
The service records the ``by`` its caller names, so the server must keep viewers out."""

INBOX = "_INBOX.>"
PRIVATE_INBOX = "_INBOX.{user}.>"
"""A user's own reply inbox (the key store puts the user's public key for ``{user}``): no
user reads replies meant for another; clients take the prefix from their creds."""

AGENT_EVENT_TYPES = (
    "agent.started",
    "agent.stopped",
    "task.assigned",
    "task.started",
    "task.completed",
    "task.failed",
    "model.called",
    "tool.called",
    "policy.decided",
    "approval.requested",
    "approval.denied",  # only as expired: a request it waited on and nobody decided in time
    "session.asked",
)
"""What an instance reports about its own work; never kills, budgets, outcomes or approvals
granted, which are the operators' and the core's to say."""
GOAL_EVENT_TYPES = ("goal.planned", "goal.completed", "goal.failed")
"""Only an orchestrator (an instance consuming its fleet's goals) reports on goals."""


@dataclass(frozen=True)
class InstanceScope:
    """The identity an instance's credentials are scoped to."""

    fleet: str
    agent: str
    instance: str
    capabilities: tuple[str, ...]
    """What it serves; ``goals`` is the fleet's goal subject (an orchestrator)."""
    delegates: tuple[str, ...] | None = ()
    """What its manifest may delegate to; None: any capability of its fleet."""

    @property
    def user_name(self) -> str:
        return f"{self.fleet}.{self.agent}.{self.instance}"


def _read_only(t: Topology) -> tuple[str, ...]:
    """JetStream API calls a reader needs: stream/bucket info, reads, ephemeral consumers."""
    return (
        "$JS.API.INFO",
        "$JS.API.STREAM.INFO.*",
        "$JS.API.STREAM.NAMES",
        "$JS.API.STREAM.LIST",
        "$JS.API.STREAM.MSG.GET.*",
        "$JS.API.DIRECT.GET.>",
        "$JS.API.CONSUMER.CREATE.*",
        "$JS.API.CONSUMER.CREATE.*.*",
        "$JS.API.CONSUMER.CREATE.*.*.>",
        "$JS.API.CONSUMER.INFO.*.*",
        "$JS.API.CONSUMER.MSG.NEXT.*.*",
        "$JS.API.CONSUMER.DELETE.*.*",
        "$JS.FC.>",
    )


def _no_work_stealing(t: Topology, partitions: int) -> tuple[str, ...]:
    """A reader must not consume (and so delete) tasks or goals, nor touch shared consumers."""
    out: list[str] = []
    for stream in (t.tasks.name, t.goals.name):
        out += [
            f"$JS.API.CONSUMER.CREATE.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*",
            f"$JS.API.CONSUMER.DELETE.{stream}.*",
        ]
    out.append(f"$JS.API.CONSUMER.DELETE.{t.events.name}.*")
    if partitions > 1:  # the partitioned core's own stream: nobody else's consumers on it
        stream = f"{t.events.name}_P{partitions}"  # shoal.aggregates.partstream
        out += [
            f"$JS.API.CONSUMER.CREATE.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.DELETE.{stream}.*",
        ]
    return tuple(out)


def role_permissions(role: Role, settings: ShoalSettings, principal: str) -> Permissions | None:
    """An operator's permissions by role (``admin``: None, everything in the account)."""
    if role == "admin":
        return None
    t, s = Topology.for_settings(settings), Subjects(settings.prefix)
    api = f"{settings.prefix}.api"
    pub = [*_read_only(t), f"{api}.*.*", "$SRV.>", s.refusals_as(f"cli.{principal}")]
    deny = [
        *_no_work_stealing(t, settings.core_partitions),
        *(s.api("query", e) for e in ADMIN_ENDPOINTS),
        *(s.api("interactions", e) for e in PROXY_ENDPOINTS),
    ]
    if role == "operator":
        pub += [
            f"$KV.{t.kill.name}.>",
            f"$KV.{t.fleets.name}.>",
            f"$KV.{t.approvals.name}.>",
            f"$KV.{t.policies.name}.>",
            s.all_goals,
            s.all_control,
            *_own_events(s, "cli", principal),
        ]
    return Permissions(pub_allow=tuple(pub), pub_deny=tuple(deny), sub_allow=(PRIVATE_INBOX,))


def service_permissions(service: str) -> Permissions | None:
    """The platform's own services act for every fleet: the whole account (see security.md)."""
    return None


def _own_events(s: Subjects, *identity: str) -> tuple[str, ...]:
    """Event subjects ending in the publisher's own identity tokens, and no others."""
    return (s.events_as(".".join(identity)),)


def instance_permissions(scope: InstanceScope, settings: ShoalSettings) -> Permissions:
    """Exactly what one agent instance needs, and nothing of another instance's."""
    t, s = Topology.for_settings(settings), Subjects(settings.prefix)
    js = "$JS.API"
    # Stream and bucket info (every command checks the topology on connect), no more.
    pub: list[str] = [f"{js}.INFO", f"{js}.STREAM.INFO.*"]
    for capability in scope.capabilities:
        goals = capability == "goals"
        stream = t.goals.name if goals else t.tasks.name
        durable = f"{scope.fleet}_{capability}"  # shoal.agents.consumer.consumer_name
        own = s.goals(scope.fleet) if goals else s.tasks(scope.fleet, capability)
        pub += [
            f"{js}.STREAM.INFO.{stream}",
            f"{js}.CONSUMER.INFO.{stream}.{durable}",
            # Only the form with the filter in the subject, which the server checks against
            # the config's: the bare ``CREATE.<stream>.<durable>`` and the legacy
            # ``DURABLE.CREATE`` take any filter, so an instance could point its own durable
            # at another fleet's tasks and take them.
            f"{js}.CONSUMER.CREATE.{stream}.{durable}.{own}",
            f"{js}.CONSUMER.MSG.NEXT.{stream}.{durable}",
            f"$JS.ACK.{stream}.{durable}.>",
        ]
    if scope.delegates is None:
        pub.append(f"{settings.prefix}.tasks.{scope.fleet}.*")
    else:
        pub += [s.tasks(scope.fleet, c) for c in scope.delegates]
    me = f"agent.{scope.fleet}.{scope.agent}.{scope.instance}"
    types = AGENT_EVENT_TYPES + (GOAL_EVENT_TYPES if "goals" in scope.capabilities else ())
    pub += [f"{settings.prefix}.events.*.*.{t}.{me}" for t in types]
    pub.append(s.deadletter("tasks"))
    # The kill and policies buckets read-only (a watch is an ordered consumer), the
    # approvals bucket (its requests; see security.md), its own presence key.
    for bucket in (t.kill.name, t.policies.name, t.approvals.name):
        stream = f"KV_{bucket}"
        pub += [
            f"{js}.STREAM.INFO.{stream}",
            f"{js}.CONSUMER.CREATE.{stream}",
            f"{js}.CONSUMER.CREATE.{stream}.>",
            f"{js}.CONSUMER.DELETE.{stream}.*",
            f"{js}.CONSUMER.INFO.{stream}.*",
            f"{js}.DIRECT.GET.{stream}.>",
            f"{js}.STREAM.MSG.GET.{stream}",
        ]
    pub += [
        "$JS.FC.>",
        f"$KV.{t.approvals.name}.>",
        f"$KV.{t.presence.name}.{scope.fleet}.{scope.agent}.{scope.instance}",
    ]
    # Every instance reads the log: redelivery checks, replies to its questions, the
    # outcomes of the tasks it delegated.
    pub += [
        f"{js}.STREAM.INFO.{t.events.name}",
        f"{js}.CONSUMER.CREATE.{t.events.name}",
        f"{js}.CONSUMER.CREATE.{t.events.name}.*",
        f"{js}.CONSUMER.CREATE.{t.events.name}.*.>",
        f"{js}.CONSUMER.MSG.NEXT.{t.events.name}.*",
        f"{js}.CONSUMER.INFO.{t.events.name}.*",
    ]
    return Permissions(pub_allow=tuple(dict.fromkeys(pub)), sub_allow=(PRIVATE_INBOX,))
