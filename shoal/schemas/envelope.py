"""The CloudEvents 1.0 envelope (structured JSON mode) every shoal message travels in.

The envelope validates its ``data`` against the model registered for its ``type``, so a
parsed :class:`CloudEvent` always carries a typed payload. Extension attributes shoal does
not know are kept (CloudEvents consumers must tolerate them); unknown *types* are refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)
from ulid import ULID

from shoal.errors import InvalidEvent
from shoal.schemas.events import EVENT_TYPES, EventData

__all__ = [
    "CONTENT_TYPE",
    "TOKEN_PATTERN",
    "CloudEvent",
    "Token",
    "new_id",
    "parse_event",
    "utcnow",
]

CONTENT_TYPE = "application/cloudevents+json"
TOKEN_PATTERN = r"^[^.*>\s]+$"
_TOKEN = re.compile(TOKEN_PATTERN)


def _check_token(value: str) -> str:
    if not _TOKEN.match(value):
        raise ValueError(f"{value!r} must be one subject token: no '.', '*', '>' or whitespace")
    return value


Token = Annotated[
    str, AfterValidator(_check_token), Field(json_schema_extra={"pattern": TOKEN_PATTERN})
]
"""A string that can stand as one NATS subject token (IIDs, GIDs, fleet and agent names)."""


def new_id() -> str:
    """A new sortable unique id (ULID) for events, IIDs, GIDs and instances."""
    return str(ULID())


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the default clock)."""
    return datetime.now(UTC)


class CloudEvent(BaseModel):
    """One shoal event: CloudEvents 1.0 attributes, shoal's correlation extensions, data."""

    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(min_length=1)
    source: str = Field(min_length=1)
    type: str
    time: AwareDatetime
    datacontenttype: Literal["application/json"] = "application/json"
    iid: Token
    gid: Token | None = None
    parentiid: Token | None = None
    fleet: Token | None = None
    agent: Token | None = None
    instance: Token | None = None
    principal: str | None = None
    traceparent: str | None = None
    data: SerializeAsAny[EventData]

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in EVENT_TYPES:
            raise ValueError(f"unknown event type {value!r}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _typed_data(cls, values: Any) -> Any:
        # Validate ``data`` with the model of the event's type; the error then names
        # ``data.<field>``. A payload that is already the right model passes through.
        if isinstance(values, dict):
            model = EVENT_TYPES.get(values.get("type", ""))
            data = values.get("data")
            if model is not None and not isinstance(data, model):
                try:
                    typed = model.model_validate(data if data is not None else {})
                except ValidationError as e:
                    # Re-raised as a plain error so the message names ``data.<field>``.
                    raise ValueError(describe_validation_error(e, prefix="data.")) from None
                values = {**values, "data": typed}
        return values

    @classmethod
    def new(
        cls,
        data: EventData,
        *,
        iid: str,
        source: str,
        gid: str | None = None,
        parentiid: str | None = None,
        fleet: str | None = None,
        agent: str | None = None,
        instance: str | None = None,
        principal: str | None = None,
        traceparent: str | None = None,
        clock: Callable[[], datetime] = utcnow,
        id: str | None = None,
    ) -> CloudEvent:
        """Build an event around ``data``, with a fresh id and the clock's time."""
        return cls(
            id=id or new_id(),
            source=source,
            type=data.type,
            time=clock(),
            iid=iid,
            gid=gid,
            parentiid=parentiid,
            fleet=fleet,
            agent=agent,
            instance=instance,
            principal=principal,
            traceparent=traceparent,
            data=data,
        )

    @property
    def short_type(self) -> str:
        """The type without ``shoal.``: the last tokens of the event's subject."""
        return self.type.removeprefix("shoal.")

    def to_json(self) -> bytes:
        """Structured-mode JSON bytes, with absent optional attributes left out."""
        return self.model_dump_json(exclude_none=True).encode()


def describe_validation_error(error: ValidationError, prefix: str = "") -> str:
    """One line naming each failing field and why (``iid: Field required; …``)."""
    parts = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        if item["loc"]:
            parts.append(f"{prefix}{'.'.join(str(p) for p in item['loc'])}: {message}")
        elif item["type"] == "json_invalid":
            parts.append(f"not JSON: {message}")
        else:
            parts.append(message)
    return "; ".join(parts)


def parse_event(raw: bytes | str | dict[str, Any]) -> CloudEvent:
    """Parse a structured-mode CloudEvent, raising :class:`InvalidEvent` with a clear reason."""
    try:
        if isinstance(raw, dict):
            return CloudEvent.model_validate(raw)
        return CloudEvent.model_validate_json(raw)
    except ValidationError as e:
        raise InvalidEvent(f"invalid event: {describe_validation_error(e)}") from e


def is_token(value: str) -> bool:
    """True when ``value`` can stand as one subject token."""
    return bool(_TOKEN.match(value))
