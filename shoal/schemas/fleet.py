"""Fleet specs (what an operator applies) and desired fleet state (what supervisors watch).

A :class:`FleetSpec` is the declarative YAML document of ``shoal fleet apply``: the fleet's
name, its agents (each an image-free run target: a Python ``target: module:attr``, or a
``command: [executable, args…]`` for an agent in any language; a version label, a replica
count, a capability manifest) and a budget. Unknown fields are refused, so a typo such as
``replica: 3`` names the field instead of being silently ignored. Every accepted field takes
effect (docs/operations.md lists where); the limits below hold on every path that sets a
replica count (apply, scale, the aggregate, the desired document a supervisor reads).

A :class:`FleetDesired` is the JSON document the core writes into the fleets KV bucket under
the fleet's name, derived from the Fleet aggregate: supervisors reconcile running instances
to it. Readers ignore fields they do not know (newer writers may add some).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from shoal.errors import USAGE_EXIT, InvalidSpec, Refused
from shoal.schemas.envelope import Token, describe_validation_error
from shoal.schemas.manifest import CapabilityManifest

__all__ = [
    "DEFAULT_CANARY_SAMPLES",
    "MAX_AGENTS",
    "MAX_CONCURRENCY",
    "MAX_REPLICAS",
    "TARGET_PATTERN",
    "VERSION_PATTERN",
    "AgentSpec",
    "Command",
    "DesiredAgent",
    "DesiredCanary",
    "FleetDesired",
    "FleetSpec",
    "RolloutSpec",
    "Target",
    "canary_count",
    "check_replicas",
    "check_target",
    "check_version",
    "parse_fleet_spec",
]

MAX_REPLICAS = 1000
"""Instances of one agent, at most (a supervisor admits fewer if its capacity is lower)."""
MAX_CONCURRENCY = 1000
"""Tasks at once per instance, at most."""
MAX_AGENTS = 100
"""Agents in one fleet, at most."""

VERSION_PATTERN = r"^[^\s]+$"
TARGET_PATTERN = r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$"
_TARGET = re.compile(TARGET_PATTERN)


def _check_target(value: str) -> str:
    if not _TARGET.match(value):
        raise ValueError(f"{value!r} is not a run target: expected 'package.module:attribute'")
    return value


# The same limits for commands that change one field (scale, upgrade) as for a spec: a
# command outside them is refused (:class:`Refused`) naming the value and the limit.


def check_target(value: str) -> str:
    """``value`` if it is a run target ``package.module:attribute``."""
    try:
        return _check_target(value)
    except ValueError as e:
        raise Refused(str(e)) from None


def check_version(value: str) -> str:
    """``value`` if it is a version label (1-64 characters, no whitespace)."""
    if not 1 <= len(value) <= 64 or not re.match(VERSION_PATTERN, value):
        raise Refused(f"{value!r} is not a version label: 1 to 64 characters, no whitespace")
    return value


DEFAULT_CANARY_SAMPLES = 20
"""Outcomes each cohort needs before the core judges a canary: below about 20 a success rate
of 1.0 against 0.4 is still too few expected failures for the normal test (shoal.stats)."""


def canary_count(canary: str, replicas: int) -> int:
    """``"2"`` or ``"25%"`` of ``replicas`` as a slot count (a percentage rounds up).

    Raises :class:`ValueError` naming the value when it is neither, or below one slot.
    """
    text = canary.strip()
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if not 0 < pct < 100:
                raise ValueError
            return max(1, math.ceil(pct * replicas / 100))
        count = int(text)
        if count < 1:
            raise ValueError
        return count
    except ValueError:
        raise ValueError(f"--canary {canary!r} is not a count (2) or a percentage (25%)") from None


class OutOfLimits(Refused):
    """A fleet command beyond the limits every path enforces: refused as a usage error."""

    code = "out_of_limits"
    exit_code = USAGE_EXIT


def check_replicas(agent: str, count: int) -> int:
    """``count`` if it is a replica count within ``0..MAX_REPLICAS``."""
    if not 0 <= count <= MAX_REPLICAS:
        raise OutOfLimits(f"cannot scale {agent} to {count}: replicas must be 0 to {MAX_REPLICAS}")
    return count


Target = Annotated[
    str, AfterValidator(_check_target), Field(json_schema_extra={"pattern": TARGET_PATTERN})
]
"""A Python entry point ``package.module:attribute`` that ``shoal agent run`` loads."""


def _check_command(value: tuple[str, ...]) -> tuple[str, ...]:
    if not value[0]:
        raise ValueError("the executable (its first word) must not be empty")
    if any("\0" in word for word in value):
        raise ValueError("a command word cannot contain a NUL byte")
    return value


Command = Annotated[
    tuple[str, ...],
    Field(min_length=1, max_length=256),
    AfterValidator(_check_command),
]
"""An executable and its arguments, run as is (no shell): a non-Python agent. It learns its
identity from the environment (docs/agents.md, "Non-Python agents in a fleet spec")."""


class RolloutSpec(BaseModel):
    """How ``fleet upgrade`` replaces instances: ``batch`` at a time, each new one must
    report presence within ``first_heartbeat_s`` or the rollout stops."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    batch: int = Field(default=2, ge=1, le=100)
    # Generous: under CPU contention (many instances starting at once on few cores) a
    # healthy Python instance can take tens of seconds to its first heartbeat.
    first_heartbeat_s: float = Field(default=60.0, gt=0, le=600)


class AgentSpec(BaseModel):
    """One agent of a fleet: what to run, which version, how many instances.

    What to run is exactly one of ``target`` (a Python ``Agent``) or ``command`` (any
    executable speaking the wire contract). A command cannot be imported to learn what it
    serves, so it names its ``capabilities`` itself: its credentials are scoped to them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Token
    target: Target | None = None
    command: Command | None = None
    capabilities: tuple[Token, ...] | None = Field(
        default=None,
        description="What a command agent serves (required with command; a Python target "
        "declares its own).",
    )
    version: str = Field(default="1", min_length=1, max_length=64, pattern=VERSION_PATTERN)
    replicas: int = Field(default=1, ge=0, le=MAX_REPLICAS)
    concurrency: int = Field(default=1, ge=1, le=MAX_CONCURRENCY)
    manifest: CapabilityManifest | None = Field(
        default=None,
        description="Replaces the manifest the agent's code declares (validated like it): "
        "the instances' gateways enforce this one.",
    )

    @model_validator(mode="after")
    def _one_way_to_run(self) -> AgentSpec:
        if (self.target is None) == (self.command is None):
            which = "both" if self.target is not None else "neither"
            raise ValueError(
                f"give exactly one of 'target' (a Python module:attr) or 'command' "
                f"(an executable and its arguments), not {which}"
            )
        if self.command is not None and not self.capabilities:
            raise ValueError("'capabilities' is required with 'command': what it serves")
        if self.target is not None and self.capabilities is not None:
            raise ValueError(
                "'capabilities' is only for a 'command' agent (a target declares its own)"
            )
        return self


class FleetSpec(BaseModel):
    """The declarative fleet document applied with ``shoal fleet apply``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    fleet: Token
    description: str = ""
    budget_usd: Decimal | None = Field(default=None, ge=0)
    production: bool = Field(
        default=False,
        description="Run only registry-certified agent versions: apply and upgrade refuse "
        "any other (docs/registry.md).",
    )
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    agents: list[AgentSpec] = Field(min_length=1, max_length=MAX_AGENTS)

    @model_validator(mode="after")
    def _unique_agents(self) -> FleetSpec:
        names = [a.name for a in self.agents]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"agent names must be unique; repeated: {', '.join(duplicates)}")
        return self

    def agent(self, name: str) -> AgentSpec | None:
        """The agent called ``name``, if the spec has one."""
        return next((a for a in self.agents if a.name == name), None)


class DesiredCanary(BaseModel):
    """A canary in progress (``fleet upgrade --canary``): slots ``0..replicas-1`` run this
    version and target, the others keep the agent's; the core judges the two cohorts once
    each has ``min_samples`` outcomes, then promotes or rolls back (docs/canary.md)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    version: str
    target: str
    replicas: int = Field(ge=1, le=MAX_REPLICAS)
    min_samples: int = Field(ge=1)


class DesiredAgent(BaseModel):
    """Desired state of one agent of a fleet, as supervisors read it.

    The limits are the spec's: a document written by hand with ``replicas: 100000`` is
    refused by the supervisor as invalid rather than obeyed.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)
    target: str = ""
    version: str
    replicas: int = Field(ge=0, le=MAX_REPLICAS)
    concurrency: int = Field(default=1, ge=1, le=MAX_CONCURRENCY)
    manifest: CapabilityManifest | None = None
    previous_version: str | None = None
    command: tuple[str, ...] | None = None
    """Set for a non-Python agent (then ``target`` is empty): its argv."""
    capabilities: tuple[str, ...] = ()
    """What a command agent serves (its credentials are scoped to these)."""

    @property
    def runs(self) -> str:
        """What its instances run, for people: the target, or the command line."""
        return shlex.join(self.command) if self.command is not None else self.target

    canary: DesiredCanary | None = None

    def for_slot(self, index: int) -> DesiredAgent:
        """What slot ``index`` runs: the canary's version and target in a canary slot."""
        c = self.canary
        if c is None or index >= c.replicas:
            return self
        return self.model_copy(update={"version": c.version, "target": c.target, "canary": None})

    def fingerprint(self) -> str:
        """What an instance of this agent runs: target or command, version, concurrency and
        manifest.

        An instance started from another fingerprint is replaced by a rolling upgrade, so a
        changed manifest or concurrency reaches running instances, not only new ones.
        """
        run: dict[str, Any] = {
            "target": self.target,
            "version": self.version,
            "concurrency": self.concurrency,
            "manifest": None if self.manifest is None else self.manifest.model_dump(mode="json"),
        }
        if self.command is not None:  # absent for Python agents: their fingerprints stay
            run.update(command=list(self.command), capabilities=list(self.capabilities))
        digest = hashlib.sha256(json.dumps(run, sort_keys=True).encode()).hexdigest()
        return digest[:16]


class FleetDesired(BaseModel):
    """The fleets-bucket document of one fleet: what should run, per agent.

    ``running=False`` means no instance should run (``fleet stop``) while the replica
    counts are kept for ``fleet start``. ``generation`` is the Fleet aggregate's version:
    it grows with every accepted command, so a watcher can tell old documents from new (and
    a writer never replaces a document with an older one). ``budget_usd`` is the fleet's
    spend cap, enforced by the core (which watches these documents).
    """

    model_config = ConfigDict(extra="ignore", frozen=True)
    fleet: str
    running: bool
    generation: int
    agents: dict[str, DesiredAgent]
    description: str = ""
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    budget_usd: Decimal | None = None
    updated_by: str = ""
    updated_at: datetime | None = None

    def replicas(self, agent: str) -> int:
        """How many instances of ``agent`` should run now (0 when stopped or unknown)."""
        desired = self.agents.get(agent)
        return desired.replicas if desired is not None and self.running else 0


def parse_fleet_spec(raw: str | bytes | dict[str, Any], origin: str = "spec") -> FleetSpec:
    """Parse YAML (or an already-loaded mapping) into a :class:`FleetSpec`.

    Raises :class:`InvalidSpec` naming the failing field and why.
    """
    if isinstance(raw, dict):
        data: Any = raw
    else:
        try:
            data = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise InvalidSpec(f"{origin} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise InvalidSpec(f"{origin} must be a YAML mapping with 'fleet' and 'agents'")
    try:
        return FleetSpec.model_validate(data)
    except ValidationError as e:
        raise InvalidSpec(f"invalid fleet spec {origin}: {describe_validation_error(e)}") from e
