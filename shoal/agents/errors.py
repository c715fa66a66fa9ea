"""Errors an agent's handler can catch (policy refusals) or raise (permanent failures).

They are :class:`~shoal.errors.ShoalError` subclasses, so the CLI reports them as one line.
A refused call never reached the model or tool: the gateway raised before calling it.
"""

from __future__ import annotations

from shoal.errors import ShoalError

__all__ = [
    "ApprovalDenied",
    "ApprovalRequired",
    "BudgetExhausted",
    "DelegationFailed",
    "Killed",
    "ModelError",
    "PermanentTaskError",
    "PolicyDenied",
    "ToolFailed",
]


class PolicyDenied(ShoalError):
    """A gateway refused a call; ``rule`` names the policy (e.g. ``manifest.tool``)."""

    def __init__(self, message: str, *, rule: str, target: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.target = target


class Killed(PolicyDenied):
    """A kill switch covers this call (``key`` is the kill-bucket key, e.g. ``instance.X``)."""

    def __init__(self, message: str, *, key: str, target: str) -> None:
        super().__init__(message, rule=f"kill.{key.partition('.')[0]}", target=target)
        self.key = key

    @property
    def scope(self) -> str:
        return self.key.partition(".")[0]


class BudgetExhausted(PolicyDenied):
    """The session has spent its budget; no further model or tool call may run."""


class ApprovalRequired(PolicyDenied):
    """The manifest says this action needs a human's approval; it did not run."""


class ApprovalDenied(PolicyDenied):
    """A human denied the approval this call waited for, or nobody decided in time."""

    def __init__(self, message: str, *, rule: str, target: str, approval: str) -> None:
        super().__init__(message, rule=rule, target=target)
        self.approval = approval


class DelegationFailed(ShoalError):
    """A delegated child task ended in a final ``task.failed`` (or timed out waiting)."""

    def __init__(self, message: str, *, iid: str, error_type: str = "Error") -> None:
        super().__init__(message)
        self.iid = iid
        self.error_type = error_type


class ModelError(ShoalError):
    """A model endpoint failed (HTTP error, timeout, malformed reply)."""


class PermanentTaskError(ShoalError):
    """Raised by a handler when retrying cannot help: the task fails at once, finally."""


class ToolFailed(ShoalError):
    """A tool raised an error whose text its sensitivity does not let out (redacted).

    Raised by the tool gateway instead of the tool's own exception when the recorded error
    is redacted, so the secret cannot reach ``task.failed``, a log line or a span through
    the exception either. ``error_type`` is the original exception's class name.
    """

    def __init__(self, message: str, *, tool: str, error_type: str) -> None:
        super().__init__(message)
        self.tool = tool
        self.error_type = error_type
