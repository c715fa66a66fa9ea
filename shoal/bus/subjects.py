"""Every subject shoal uses, built and parsed here and nowhere else.

Templates are compiled once per prefix. Tokens are validated at the edge: a fleet,
capability, IID or GID containing ``.``, ``*``, ``>`` or whitespace would silently change
which messages a filter matches, so it is refused with :class:`InvalidName`.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.errors import InvalidName
from shoal.schemas import is_token

__all__ = ["NO_GID", "EventSubject", "Subjects", "check_token", "publisher_tokens"]

OTHER_PUBLISHER = "other"
"""The publisher suffix of an event whose source is of no known form."""

NO_GID = "_"
"""The GID token of an event that belongs to no goal (a bare task)."""


def check_token(value: str, what: str) -> str:
    """Return ``value`` if it can be one subject token, else raise :class:`InvalidName`."""
    if not value or not is_token(value):
        raise InvalidName(f"{what} {value!r} is not a valid name (no '.', '*', '>' or spaces)")
    return value


@dataclass(frozen=True)
class EventSubject:
    """The parts of ``<prefix>.events.<gid>.<iid>.<noun>.<verb>.<publisher…>``."""

    gid: str | None
    iid: str
    short_type: str
    publisher: str = ""
    """The publishing identity's tokens (``agent.F.A.I``, ``core``, ``cli.P``); "" if none."""


def publisher_tokens(source: str) -> str:
    """The subject suffix that names who publishes an event with CloudEvents ``source``.

    ``shoal://core`` → ``core``; ``shoal://cli/<principal>`` → ``cli.<principal>``;
    ``shoal://supervisor/<id>`` → ``supervisor.<id>``; ``shoal://gateway/<replica>`` →
    ``gateway.<replica>``; ``shoal://<fleet>/<agent>/<instance>``
    → ``agent.<fleet>.<agent>.<instance>``; any other source → ``other`` (which only the
    platform's own services may publish, and the core does not believe). Each user's publish
    permission allows only its own suffix, so the server refuses an event published under
    another identity.
    """
    parts = source.removeprefix("shoal://").split("/") if source.startswith("shoal://") else []
    if not parts or not all(is_token(p) for p in parts):
        return OTHER_PUBLISHER
    if parts == ["core"]:
        return "core"
    if len(parts) == 2 and parts[0] in ("cli", "supervisor", "gateway"):
        return f"{parts[0]}.{parts[1]}"
    if len(parts) == 3:
        return "agent." + ".".join(parts)
    return OTHER_PUBLISHER


@dataclass(frozen=True)
class Subjects:
    """Subject builders and filters for one prefix (``shoal`` unless multi-tenant)."""

    prefix: str = "shoal"

    def __post_init__(self) -> None:
        check_token(self.prefix, "prefix")

    # -- goals and tasks ------------------------------------------------------------------
    def goals(self, fleet: str) -> str:
        return f"{self.prefix}.goals.{check_token(fleet, 'fleet')}"

    @property
    def all_goals(self) -> str:
        return f"{self.prefix}.goals.*"

    def tasks(self, fleet: str, capability: str) -> str:
        fleet = check_token(fleet, "fleet")
        return f"{self.prefix}.tasks.{fleet}.{check_token(capability, 'capability')}"

    @property
    def all_tasks(self) -> str:
        return f"{self.prefix}.tasks.*.*"

    # -- the event log --------------------------------------------------------------------
    def event(self, gid: str | None, iid: str, short_type: str, publisher: str = "") -> str:
        """Subject of one event; ``short_type`` is the type without ``shoal.`` (two tokens),
        ``publisher`` the :func:`publisher_tokens` of its source (empty: unattributed,
        which the core refuses)."""
        gid_token = check_token(gid, "gid") if gid else NO_GID
        subject = f"{self.prefix}.events.{gid_token}.{check_token(iid, 'iid')}.{short_type}"
        return f"{subject}.{publisher}" if publisher else subject

    def events_as(self, publisher: str) -> str:
        """Every event subject ending in ``publisher`` (a user's publish permission)."""
        return f"{self.prefix}.events.*.*.*.*.{publisher}"

    def session_events(self, iid: str) -> str:
        """Filter for every event of one session (IID)."""
        return f"{self.prefix}.events.*.{check_token(iid, 'iid')}.>"

    def session_events_of_type(self, iid: str, short_type: str) -> str:
        """Filter for one type of event of one session (``session.message``)."""
        return f"{self.prefix}.events.*.{check_token(iid, 'iid')}.{short_type}.>"

    def goal_events(self, gid: str) -> str:
        """Filter for every event of one goal (GID), all its sessions included."""
        return f"{self.prefix}.events.{check_token(gid, 'gid')}.>"

    def events_of_type(self, short_type: str) -> str:
        """Filter for one event type across all sessions (``model.called``)."""
        return f"{self.prefix}.events.*.*.{short_type}.>"

    def events_filter(
        self, *, gid: str | None = None, iid: str | None = None, short_type: str | None = None
    ) -> str:
        """Filter for events narrowed by any of GID, IID and type (``None`` matches all)."""
        gid_token = check_token(gid, "gid") if gid else "*"
        iid_token = check_token(iid, "iid") if iid else "*"
        if short_type is None:
            return f"{self.prefix}.events.{gid_token}.{iid_token}.>"
        short_type = short_type.removeprefix("shoal.")
        for part in short_type.split("."):
            check_token(part, "event type")
        return f"{self.prefix}.events.{gid_token}.{iid_token}.{short_type}.>"

    def task_outcomes(self, gid: str | None, iid: str | None = None) -> str:
        """Filter for the ``task.*`` events of one session, or of every session of a goal.

        With ``iid`` a missing ``gid`` means the bare-task token ``_``; without ``iid`` the
        filter covers every session of goal ``gid``.
        """
        if iid is None:
            return f"{self.prefix}.events.{check_token(gid or '', 'gid')}.*.task.*.>"
        gid_token = check_token(gid, "gid") if gid else NO_GID
        return f"{self.prefix}.events.{gid_token}.{check_token(iid, 'iid')}.task.*.>"

    @property
    def all_events(self) -> str:
        return f"{self.prefix}.events.>"

    def parse_event(self, subject: str) -> EventSubject:
        """Split an event subject into GID, IID and type; raise :class:`InvalidName`."""
        head = f"{self.prefix}.events."
        parts = subject.removeprefix(head).split(".") if subject.startswith(head) else []
        if len(parts) < 4:
            raise InvalidName(f"{subject!r} is not an event subject under {head}")
        gid, iid, noun, verb, *publisher = parts
        return EventSubject(
            gid=None if gid == NO_GID else gid,
            iid=iid,
            short_type=f"{noun}.{verb}",
            publisher=".".join(publisher),
        )

    @staticmethod
    def misattributed(
        publisher: str, source: str, fleet: str | None, agent: str | None, instance: str | None
    ) -> str | None:
        """Why an event's identity (source; fleet/agent/instance) is not the one its subject
        was published under, or None when they agree."""
        claimed = publisher_tokens(source)
        if publisher != claimed:
            shown = publisher or "no identity"
            return f"published as {shown!r} but claims source {source!r}"
        if claimed.startswith("agent.") and claimed != f"agent.{fleet}.{agent}.{instance}":
            return (
                f"source {source!r} disagrees with fleet/agent/instance "
                f"{fleet!r}/{agent!r}/{instance!r}"
            )
        return None

    # -- request/reply, audit, dead letters --------------------------------------------------
    def api(self, service: str, endpoint: str) -> str:
        service = check_token(service, "service")
        return f"{self.prefix}.api.{service}.{check_token(endpoint, 'endpoint')}"

    def control(self, scope: str, verb: str, publisher: str = "") -> str:
        """``<p>.control.<scope>.<verb>``; a refusal ends in its caller's identity tokens."""
        subject = f"{self.prefix}.control.{check_token(scope, 'scope')}.{check_token(verb, 'verb')}"
        return f"{subject}.{publisher}" if publisher else subject

    def refusals_as(self, publisher: str) -> str:
        """The control subjects where ``publisher`` may record its own refused commands."""
        return f"{self.prefix}.control.*.refused.{publisher}"

    @property
    def all_control(self) -> str:
        return f"{self.prefix}.control.>"

    def control_scope(self, scope: str) -> str:
        """Every verb of one scope: ``<p>.control.<scope>.>`` (a fleet's history)."""
        return f"{self.prefix}.control.{check_token(scope, 'scope')}.>"

    def deadletter(self, origin: str) -> str:
        """Where a message that cannot be processed goes, by where it came from."""
        return f"{self.prefix}.deadletter.{check_token(origin, 'origin')}"

    @property
    def all_deadletters(self) -> str:
        return f"{self.prefix}.deadletter.>"
