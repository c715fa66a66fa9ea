"""Refusals and failures in OpenAI's error shape, so clients' own retry logic behaves.

``{"error": {"message", "type", "param", "code"}}`` with the HTTP status OpenAI would use:
401 for a bad key, 403 for a kill switch or a model/tool the manifest does not grant, 429
for the rate limit (retried by clients) and for an exhausted budget (``insufficient_quota``,
with ``x-should-retry: false`` so the OpenAI SDKs do not retry it), 404 for an unknown model,
400 for a malformed request, 502/504 when every upstream failed or timed out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["GatewayError"]


@dataclass
class GatewayError(Exception):
    """A call the gateway answers itself; ``rule`` is recorded on ``policy.decided``."""

    status: int
    message: str
    type: str
    code: str
    rule: str | None = None
    retry: bool | None = None
    param: str | None = None
    recorded: bool = False
    """Already on the log as ``policy.decided`` (a policy rule's refusal records itself)."""

    def __str__(self) -> str:
        return self.message

    def body(self) -> bytes:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return json.dumps({"error": error}).encode()

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.retry is not None:
            headers["x-should-retry"] = "true" if self.retry else "false"
        return headers

    # -- the refusals, by rule ------------------------------------------------------------
    @classmethod
    def bad_key(cls) -> GatewayError:
        return cls(
            401, "invalid or revoked gateway key", "invalid_request_error", "invalid_api_key"
        )

    @classmethod
    def bad_request(cls, message: str, param: str | None = None) -> GatewayError:
        return cls(400, message, "invalid_request_error", "invalid_request", param=param)

    @classmethod
    def killed(cls, message: str, key: str) -> GatewayError:
        return cls(403, message, "permission_error", "killed", rule=f"kill.{key}", retry=False)

    @classmethod
    def not_granted(cls, message: str, kind: str) -> GatewayError:
        return cls(
            403, message, "permission_error", f"{kind}_not_allowed", f"manifest.{kind}", False
        )

    @classmethod
    def policy_denied(cls, message: str, rule: str) -> GatewayError:
        """A policy rule (or a human's approval decision) refused the call."""
        return cls(
            403, message, "permission_error", "policy_denied", rule=rule, retry=False, recorded=True
        )

    @classmethod
    def released(cls, message: str, rule: str) -> GatewayError:
        """A parked call let go by a stopping replica: retry it; the approval stays."""
        return cls(
            503, message, "server_error", "approval_pending", rule=rule, retry=True, recorded=True
        )

    @classmethod
    def rate_limited(cls, message: str) -> GatewayError:
        return cls(429, message, "requests", "rate_limit_exceeded", rule="rate.key")

    @classmethod
    def over_budget(cls, message: str, scope: str) -> GatewayError:
        return cls(
            429, message, "insufficient_quota", "insufficient_quota", f"budget.{scope}", False
        )

    @classmethod
    def unknown_model(cls, model: str) -> GatewayError:
        return cls(
            404,
            f"the gateway routes no model {model!r}",
            "invalid_request_error",
            "model_not_found",
            param="model",
        )

    @classmethod
    def upstream(cls, message: str, timeout: bool = False) -> GatewayError:
        if timeout:
            return cls(504, message, "server_error", "upstream_timeout")
        return cls(502, message, "server_error", "upstream_error")
