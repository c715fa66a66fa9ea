"""Stream and key-value bucket configurations, as frozen data, and their provisioning.

Provisioning is idempotent: a missing stream or bucket is created, an identical one is left
alone, and one whose settings differ from shoal's is reported as :class:`ConfigConflict`
(never silently replaced: it may hold the only copy of someone's events).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext, api
from nats.js.errors import BucketNotFoundError, NotFoundError

from shoal.bus.settings import ShoalSettings
from shoal.bus.subjects import Subjects
from shoal.errors import ConfigConflict

__all__ = ["BucketSpec", "ObjectStoreSpec", "StreamSpec", "Topology", "provision"]


@dataclass(frozen=True)
class StreamSpec:
    """One JetStream stream.

    ``retention="workqueue"`` deletes a message once a consumer acks it and allows one
    consumer per subject, which is what competing task workers need; ``"limits"`` keeps
    every message (until ``max_age_s``), which is what a forensic log needs.
    ``duplicate_window_s`` is how long JetStream remembers ``Nats-Msg-Id`` values to drop a
    re-published event.
    """

    name: str
    subjects: tuple[str, ...]
    retention: str = "limits"
    replicas: int = 1
    duplicate_window_s: float = 120.0
    max_age_s: float = 0.0
    description: str = ""

    def config(self) -> api.StreamConfig:
        return api.StreamConfig(
            name=self.name,
            description=self.description or None,
            subjects=list(self.subjects),
            retention=api.RetentionPolicy(self.retention),
            storage=api.StorageType.FILE,
            num_replicas=self.replicas,
            duplicate_window=self.duplicate_window_s,
            max_age=self.max_age_s,
        )

    def differences(self, existing: api.StreamConfig) -> list[str]:
        """Human-readable settings in which ``existing`` differs from this spec."""
        wanted: dict[str, Any] = {
            "subjects": sorted(self.subjects),
            "retention": self.retention,
            "storage": "file",
            "replicas": self.replicas,
            "duplicate_window_s": round(self.duplicate_window_s, 3),
            "max_age_s": round(self.max_age_s, 3),
        }
        actual: dict[str, Any] = {
            "subjects": sorted(existing.subjects or []),
            "retention": _plain(existing.retention),
            "storage": _plain(existing.storage),
            "replicas": existing.num_replicas or 1,
            "duplicate_window_s": round(existing.duplicate_window or 0.0, 3),
            "max_age_s": round(existing.max_age or 0.0, 3),
        }
        return [
            f"{k} is {actual[k]!r}, shoal wants {v!r}" for k, v in wanted.items() if actual[k] != v
        ]


@dataclass(frozen=True)
class BucketSpec:
    """One JetStream key-value bucket; ``ttl_s`` expires keys not rewritten in time."""

    name: str
    history: int = 1
    ttl_s: float = 0.0
    replicas: int = 1
    description: str = ""

    def config(self) -> api.KeyValueConfig:
        return api.KeyValueConfig(
            bucket=self.name,
            description=self.description or None,
            history=self.history,
            ttl=self.ttl_s or None,
            replicas=self.replicas,
            storage=api.StorageType.FILE,
        )

    def differences(self, existing: api.StreamConfig) -> list[str]:
        wanted = {"history": self.history, "ttl_s": round(self.ttl_s, 3), "replicas": self.replicas}
        actual = {
            "history": existing.max_msgs_per_subject,
            "ttl_s": round(existing.max_age or 0.0, 3),
            "replicas": existing.num_replicas or 1,
        }
        return [
            f"{k} is {actual[k]!r}, shoal wants {v!r}" for k, v in wanted.items() if actual[k] != v
        ]


@dataclass(frozen=True)
class ObjectStoreSpec:
    """One JetStream object store (stream ``OBJ_<name>``): large bodies, chunked."""

    name: str
    replicas: int = 1
    description: str = ""

    @property
    def stream(self) -> str:
        return f"OBJ_{self.name}"

    def config(self) -> api.ObjectStoreConfig:
        return api.ObjectStoreConfig(
            bucket=self.name,
            description=self.description or None,
            replicas=self.replicas,
            storage=api.StorageType.FILE,
        )

    def differences(self, existing: api.StreamConfig) -> list[str]:
        wanted = {"storage": "file", "replicas": self.replicas}
        actual = {"storage": _plain(existing.storage), "replicas": existing.num_replicas or 1}
        return [
            f"{k} is {actual[k]!r}, shoal wants {v!r}" for k, v in wanted.items() if actual[k] != v
        ]


@dataclass(frozen=True)
class Topology:
    """The names of everything shoal provisions for one prefix."""

    goals: StreamSpec
    tasks: StreamSpec
    events: StreamSpec
    control: StreamSpec
    deadletter: StreamSpec
    fleets: BucketSpec
    kill: BucketSpec
    presence: BucketSpec
    leases: BucketSpec
    policies: BucketSpec
    approvals: BucketSpec
    deadletter_objects: ObjectStoreSpec
    keys: BucketSpec
    budgets: BucketSpec
    responses: BucketSpec

    @classmethod
    def for_settings(cls, settings: ShoalSettings) -> Topology:
        p, s, r = settings.stream_prefix, Subjects(settings.prefix), settings.stream_replicas
        dedup = settings.dedup_window_s

        def stream(name: str, subject: str, retention: str, what: str) -> StreamSpec:
            return StreamSpec(
                f"{p}_{name}", (subject,), retention, r, duplicate_window_s=dedup, description=what
            )

        return cls(
            goals=stream("GOALS", s.all_goals, "limits", "Goals submitted to fleets"),
            tasks=stream("TASKS", s.all_tasks, "workqueue", "Tasks for competing workers"),
            events=stream("EVENTS", s.all_events, "limits", "The forensic event log"),
            control=stream("CONTROL", s.all_control, "limits", "Audit of operator commands"),
            deadletter=stream("DEADLETTER", s.all_deadletters, "limits", "Unprocessable messages"),
            fleets=BucketSpec(
                f"{p}_fleets", history=10, replicas=r, description="Desired fleet state"
            ),
            kill=BucketSpec(f"{p}_kill", history=5, replicas=r, description="Kill switches"),
            presence=BucketSpec(
                f"{p}_presence",
                ttl_s=settings.presence_ttl_s,
                replicas=r,
                description="Instance heartbeats",
            ),
            leases=BucketSpec(
                f"{p}_leases",
                ttl_s=settings.lease_ttl_s,
                replicas=r,
                description="Supervisor slot leases",
            ),
            policies=BucketSpec(
                f"{p}_policies", history=20, replicas=r, description="Applied policy files"
            ),
            approvals=BucketSpec(
                f"{p}_approvals", history=5, replicas=r, description="Approval requests"
            ),
            deadletter_objects=ObjectStoreSpec(
                f"{p}_deadletter", replicas=r, description="Bodies of large dead letters"
            ),
            keys=BucketSpec(f"{p}_keys", history=5, replicas=r, description="Gateway keys"),
            budgets=BucketSpec(
                f"{p}_budgets", replicas=r, description="Gateway reservations and rate windows"
            ),
            responses=BucketSpec(
                f"{p}_responses",
                ttl_s=settings.gateway_cache_ttl_s,
                replicas=r,
                description="Gateway response cache",
            ),
        )

    @property
    def streams(self) -> tuple[StreamSpec, ...]:
        return (self.goals, self.tasks, self.events, self.control, self.deadletter)

    @property
    def buckets(self) -> tuple[BucketSpec, ...]:
        return (
            self.fleets,
            self.kill,
            self.presence,
            self.leases,
            self.policies,
            self.approvals,
            self.keys,
            self.budgets,
            self.responses,
        )


async def provision(js: JetStreamContext, topology: Topology) -> list[str]:
    """Create what is missing; return the names created. Raise on a conflicting config."""
    created: list[str] = []
    for spec in topology.streams:
        try:
            info = await js.stream_info(spec.name)
        except NotFoundError:
            await js.add_stream(spec.config())
            created.append(spec.name)
            continue
        _raise_on_conflict(f"stream {spec.name}", spec.differences(info.config))
    for bucket in topology.buckets:
        try:
            await js.key_value(bucket.name)
        except BucketNotFoundError:
            await js.create_key_value(bucket.config())
            created.append(bucket.name)
            continue
        info = await js.stream_info(f"KV_{bucket.name}")
        _raise_on_conflict(f"bucket {bucket.name}", bucket.differences(info.config))
    objects = getattr(topology, "deadletter_objects", None)  # a partial topology has none
    if objects is not None:
        created += await provision_object_store(js, objects)
    return created


async def provision_object_store(js: JetStreamContext, spec: ObjectStoreSpec) -> list[str]:
    """Create the object store if missing; return ``[name]`` if created. Raise on conflict."""
    try:
        info = await js.stream_info(spec.stream)
    except NotFoundError:
        await js.create_object_store(spec.name, config=spec.config())
        return [spec.name]
    _raise_on_conflict(f"object store {spec.name}", spec.differences(info.config))
    return []


def _plain(value: Any) -> Any:
    # stream_info returns enum fields as plain strings; a freshly built config has enums.
    return getattr(value, "value", value)


def _raise_on_conflict(what: str, differences: list[str]) -> None:
    if differences:
        raise ConfigConflict(
            f"{what} exists with other settings ({'; '.join(differences)}); "
            "shoal will not replace it: delete it or align the settings"
        )
