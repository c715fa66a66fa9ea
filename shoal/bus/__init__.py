"""The NATS side: settings, subjects, streams and buckets, publish and read. No domain logic."""

from shoal.bus.client import Bus, Stored, event_headers, open_connection, to_stored
from shoal.bus.keys import (
    KILL_SCOPES,
    KillScope,
    KillSwitch,
    Lease,
    Presence,
    kill_key,
    lease_key,
    parse_kill_key,
    presence_key,
)
from shoal.bus.settings import ShoalSettings
from shoal.bus.streams import BucketSpec, ObjectStoreSpec, StreamSpec, Topology, provision
from shoal.bus.subjects import NO_GID, EventSubject, Subjects, check_token

__all__ = [
    "KILL_SCOPES",
    "NO_GID",
    "BucketSpec",
    "Bus",
    "EventSubject",
    "KillScope",
    "KillSwitch",
    "Lease",
    "ObjectStoreSpec",
    "Presence",
    "ShoalSettings",
    "Stored",
    "StreamSpec",
    "Subjects",
    "Topology",
    "check_token",
    "event_headers",
    "kill_key",
    "lease_key",
    "open_connection",
    "parse_kill_key",
    "presence_key",
    "provision",
    "to_stored",
]
