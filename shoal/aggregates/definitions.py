"""The registry's aggregates: an :class:`AgentDefinition` per agent, a :class:`Tool` per tool
or MCP server, each with its versions and every version's lifecycle.

A version's content (target, capabilities with their schemas, manifest, collaborators) is
fixed once it leaves ``draft``: certification vouches for exactly that content, so
registering other content under a certified version is refused (register a new version).
Each transition (``certify``, ``deprecate``, ``retire``, see
:data:`shoal.schemas.registry.TRANSITIONS`) records who, why and when. The
:class:`RegistryApplication` keeps them on the ``eventsourcing`` library's persistence (the
``registry`` store, beside ``fleets``), with an index aggregate so ``ls`` needs no scan.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError

from shoal.errors import NotFound, Refused
from shoal.schemas import utcnow
from shoal.schemas.registry import (
    TRANSITIONS,
    AgentRegistration,
    LifecycleState,
    ToolRegistration,
)

__all__ = [
    "AgentDefinition",
    "Definition",
    "Kind",
    "RegistryApplication",
    "RegistryIndex",
    "Tool",
    "Transition",
    "VersionEntry",
]

Kind = Literal["agent", "tool"]
Registration = AgentRegistration | ToolRegistration
T = TypeVar("T")


@dataclass
class Transition:
    """One lifecycle step of a version: the state it entered, who, why, when."""

    state: LifecycleState
    by: str
    reason: str
    at: datetime


@dataclass
class VersionEntry:
    """One registered version: its content, digest and lifecycle so far."""

    version: str
    content: dict[str, Any]
    digest: str
    state: LifecycleState
    history: list[Transition] = field(default_factory=list)

    @property
    def certified_by(self) -> Transition | None:
        """The transition that certified this version (the latest one), if any."""
        return next((t for t in reversed(self.history) if t.state == "certified"), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "state": self.state,
            "digest": self.digest,
            **self.content,
            "history": [asdict(t) for t in self.history],
        }


class Definition(Aggregate):
    """What agents and tools share: a name, purpose, owner, and versions with lifecycles."""

    @property
    def kind(self) -> Kind:
        return "tool"

    class Registered(Aggregate.Created):
        name: str
        purpose: str
        owner: str
        by: str

    class Described(Aggregate.Event):
        purpose: str
        owner: str
        by: str

    class VersionRegistered(Aggregate.Event):
        version: str
        content: dict[str, Any]
        digest: str
        by: str
        reason: str
        at: datetime

    class VersionRevised(VersionRegistered):
        """A draft's content replaced (the same fields as its registration)."""

    class Certified(Aggregate.Event):
        version: str
        by: str
        reason: str
        at: datetime

    class Deprecated(Certified):
        """A lifecycle step: the same fields as :class:`Certified`."""

    class Retired(Certified):
        """A lifecycle step: the same fields as :class:`Certified`."""

    @event(Registered)
    def __init__(self, name: str, purpose: str, owner: str, by: str) -> None:
        self.name = name
        self.purpose = purpose
        self.owner = owner
        self.versions: dict[str, VersionEntry] = {}

    # -- commands ---------------------------------------------------------------------------
    def register(self, reg: Registration, by: str, reason: str = "") -> str:
        """Record ``reg``'s version: ``added``, ``revised`` (a draft's new content) or
        ``unchanged``; other content under a version past draft is :class:`Refused`."""
        if (reg.purpose and reg.purpose != self.purpose) or (reg.owner and reg.owner != self.owner):
            self._described(
                purpose=reg.purpose or self.purpose, owner=reg.owner or self.owner, by=by
            )
        content, digest = reg.content(), reg.digest()
        known = self.versions.get(reg.version)
        if known is None:
            self._version_registered(
                version=reg.version,
                content=content,
                digest=digest,
                by=by,
                reason=reason,
                at=utcnow(),
            )
            return "added"
        if known.digest == digest:
            return "unchanged"
        if known.state != "draft":
            raise Refused(
                f"{self.kind} {self.name} version {reg.version} is {known.state} with content "
                f"{known.digest}; this registration differs ({digest}): register a new version"
            )
        self._version_revised(
            version=reg.version, content=content, digest=digest, by=by, reason=reason, at=utcnow()
        )
        return "revised"

    def transition(self, verb: str, version: str, by: str, reason: str) -> LifecycleState:
        """``certify``, ``deprecate`` or ``retire`` one version; the state it is now in."""
        try:
            sources, target = TRANSITIONS[verb]
        except KeyError:
            raise ValueError(f"unknown lifecycle verb {verb!r}") from None
        entry = self.entry(version)
        if not reason.strip():
            raise Refused(f"{verb} needs --reason: who certifies, deprecates or retires says why")
        if entry.state not in sources:
            raise Refused(
                f"cannot {verb} {self.kind} {self.name} version {version}: it is {entry.state} "
                f"({verb} applies to {' or '.join(sources)})"
            )
        step = {"certify": self._certified, "deprecate": self._deprecated, "retire": self._retired}
        step[verb](version=version, by=by, reason=reason, at=utcnow())
        return target

    def entry(self, version: str) -> VersionEntry:
        try:
            return self.versions[version]
        except KeyError:
            known = ", ".join(self.versions) or "none"
            raise NotFound(
                f"{self.kind} {self.name} has no version {version!r} (versions: {known})"
            ) from None

    # -- events -----------------------------------------------------------------------------
    @event(Described)
    def _described(self, purpose: str, owner: str, by: str) -> None:
        self.purpose, self.owner = purpose, owner

    @event(VersionRegistered)
    def _version_registered(
        self, version: str, content: dict[str, Any], digest: str, by: str, reason: str, at: datetime
    ) -> None:
        self.versions[version] = VersionEntry(
            version, content, digest, "draft", [Transition("draft", by, reason, at)]
        )

    @event(VersionRevised)
    def _version_revised(
        self, version: str, content: dict[str, Any], digest: str, by: str, reason: str, at: datetime
    ) -> None:
        entry = self.versions[version]
        entry.content, entry.digest = content, digest
        entry.history.append(Transition("draft", by, reason or "revised", at))

    def _enter(
        self, state: LifecycleState, version: str, by: str, reason: str, at: datetime
    ) -> None:
        entry = self.versions[version]
        entry.state = state
        entry.history.append(Transition(state, by, reason, at))

    @event(Certified)
    def _certified(self, version: str, by: str, reason: str, at: datetime) -> None:
        self._enter("certified", version, by, reason, at)

    @event(Deprecated)
    def _deprecated(self, version: str, by: str, reason: str, at: datetime) -> None:
        self._enter("deprecated", version, by, reason, at)

    @event(Retired)
    def _retired(self, version: str, by: str, reason: str, at: datetime) -> None:
        self._enter("retired", version, by, reason, at)

    # -- derived ----------------------------------------------------------------------------
    @property
    def latest(self) -> VersionEntry | None:
        """The most recently registered version that is not retired (else the last one)."""
        live = [v for v in self.versions.values() if v.state != "retired"]
        pool = live or list(self.versions.values())
        return pool[-1] if pool else None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "purpose": self.purpose,
            "owner": self.owner,
            "versions": [v.to_json() for v in self.versions.values()],
        }


class AgentDefinition(Definition):
    """One agent: purpose, owner, and per version its capabilities, manifest, collaborators."""

    @property
    def kind(self) -> Kind:
        return "agent"

    @staticmethod
    def create_id(name: str, **_: Any) -> UUID:
        return uuid5(NAMESPACE_URL, f"shoal:registry:agent:{name}")


class Tool(Definition):
    """One tool or MCP server: purpose, owner, and per version its schemas and transport."""

    @staticmethod
    def create_id(name: str, **_: Any) -> UUID:
        return uuid5(NAMESPACE_URL, f"shoal:registry:tool:{name}")


class RegistryIndex(Aggregate):
    """Every registered name by kind, so listing reads one aggregate."""

    class Opened(Aggregate.Created):
        pass

    class Added(Aggregate.Event):
        kind: str
        name: str

    @staticmethod
    def create_id(**_: Any) -> UUID:
        return uuid5(NAMESPACE_URL, "shoal:registry:index")

    @event(Opened)
    def __init__(self) -> None:
        self.names: dict[str, list[str]] = {"agent": [], "tool": []}

    @event(Added)
    def add(self, kind: str, name: str) -> None:
        self.names[kind].append(name)


_CLASSES: dict[Kind, type[Definition]] = {"agent": AgentDefinition, "tool": Tool}


class RegistryApplication(Application[UUID]):
    """The registry on the ``eventsourcing`` library's persistence (SQLite or PostgreSQL).

    Synchronous, like the library; async callers cross with ``asyncio.to_thread``.
    """

    name = "registry"

    def get(self, kind: Kind, name: str) -> Definition:
        """The definition of ``kind`` called ``name``; :class:`NotFound` if never registered."""
        try:
            found: Aggregate = self.repository.get(_CLASSES[kind].create_id(name))
        except AggregateNotFoundError:
            raise NotFound(f"no {kind} named {name!r} in the registry") from None
        assert isinstance(found, Definition)
        return found

    def find(self, name: str) -> Definition:
        """The agent called ``name``, else the tool; :class:`NotFound` if neither."""
        kinds: tuple[Kind, ...] = ("agent", "tool")
        for kind in kinds:
            if _CLASSES[kind].create_id(name) in self.repository:
                return self.get(kind, name)
        raise NotFound(f"nothing named {name!r} in the registry (see 'shoal registry ls')")

    def all(self) -> list[Definition]:
        """Every definition: agents then tools, each by name."""
        index = self._index()
        if index is None:
            return []
        kinds: tuple[Kind, ...] = ("agent", "tool")
        return [self.get(kind, name) for kind in kinds for name in sorted(index.names[kind])]

    def register(self, reg: Registration, by: str, reason: str = "") -> tuple[Definition, str]:
        """Register one agent or tool version; (the definition, added|revised|unchanged)."""
        kind: Kind = "agent" if isinstance(reg, AgentRegistration) else "tool"
        cls = _CLASSES[kind]

        def change() -> tuple[list[Aggregate], tuple[Definition, str]]:
            if cls.create_id(reg.name) in self.repository:
                definition = self.get(kind, reg.name)
                return [definition], (definition, definition.register(reg, by, reason))
            definition = cls(reg.name, reg.purpose, reg.owner, by)
            outcome = definition.register(reg, by, reason)
            index = self._index() or RegistryIndex()
            index.add(kind, reg.name)
            return [definition, index], (definition, outcome)

        return self._save_fresh(reg.name, change)

    def transition(
        self, name: str, version: str, verb: str, by: str, reason: str, kind: Kind | None = None
    ) -> Definition:
        """Certify, deprecate or retire one version of the agent (or tool) ``name``."""

        def change() -> tuple[list[Aggregate], Definition]:
            definition = self.get(kind, name) if kind else self.find(name)
            definition.transition(verb, version, by, reason)
            return [definition], definition

        return self._save_fresh(name, change)

    def _index(self) -> RegistryIndex | None:
        try:
            index: Aggregate = self.repository.get(RegistryIndex.create_id())
        except AggregateNotFoundError:
            return None
        assert isinstance(index, RegistryIndex)
        return index

    def _save_fresh(
        self, name: str, change: Callable[[], tuple[list[Aggregate], T]], attempts: int = 10
    ) -> T:
        # Two operators registering at once conflict on an aggregate's version (the index,
        # when both add a name): re-read, re-validate, retry after a jittered back-off.
        for attempt in range(attempts):
            aggregates, result = change()
            try:
                self.save(*aggregates)
            except IntegrityError:
                time.sleep(random.uniform(0, 0.002 * 2**attempt))
                continue
            return result
        raise Refused(f"registry entry {name} kept changing under this command; try again")
