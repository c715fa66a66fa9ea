"""Decoding event-log bytes in one pass: ``model_validate_json`` with no dict detour.

:class:`~shoal.schemas.envelope.CloudEvent` validates ``data`` with the model of its
``type`` in a ``mode="before"`` validator. That is what lets one envelope class carry every
payload, but a before-validator makes pydantic-core build the whole message as Python dicts
first and validate them a second time (``validate_json`` → dict → ``validate_python``).

:func:`decode_event` instead peeks at the ``"type"`` in the bytes and validates them with a
subclass of ``CloudEvent`` made for that type (``type: Literal[...]``, ``data: <Model>``):
pydantic-core parses and validates the JSON in Rust in one pass. The result *is* a
``CloudEvent`` (a subclass, same fields, same JSON). Anything the fast path cannot take —
no ``"type"`` found, an unknown one, any validation error — goes through
:func:`~shoal.schemas.envelope.parse_event`, so refusals and their messages are unchanged.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import StringConstraints, ValidationError, model_validator

from shoal.schemas.envelope import CloudEvent, parse_event
from shoal.schemas.events import EVENT_TYPES, EventData

__all__ = ["decode_event"]

_TYPE = re.compile(rb'"type"\s*:\s*"([^"\\]+)"')

_RustToken = Annotated[str, StringConstraints(pattern=r"^[^.*>\s\x1c-\x1f]+$")]
""":data:`~shoal.schemas.envelope.Token`'s rule checked in Rust (Python's ``\\s`` also
matches ``\\x1c``-``\\x1f``, Rust's does not: named here). A value it refuses goes through
the general path, whose message names the field."""

_OPTIONAL_TOKENS = ("gid", "parentiid", "fleet", "agent", "instance")


def _typed_envelope(type_: str, model: type[EventData]) -> type[CloudEvent]:
    """A ``CloudEvent`` whose ``type`` is ``type_`` and whose ``data`` is ``model``."""
    name = "CloudEvent_" + re.sub(r"\W", "_", type_)
    namespace: dict[str, Any] = {
        "__module__": __name__,
        "__annotations__": {
            "type": Literal[type_],
            "data": model,
            "iid": _RustToken,
            **{name: _RustToken | None for name in _OPTIONAL_TOKENS},
        },
        # The base's validator of the same name replaced: nothing runs in Python before the
        # Rust validation (the type is a literal, the data typed by the annotation). The
        # base's ``_known_type`` stays: a set lookup on the validated string.
        "_typed_data": model_validator(mode="after")(_as_is),
        **dict.fromkeys(_OPTIONAL_TOKENS),
    }
    return type(name, (CloudEvent,), namespace)


def _as_is(event: CloudEvent) -> CloudEvent:
    return event


_ENVELOPES: dict[bytes, type[CloudEvent]] = {
    t.encode(): _typed_envelope(t, model) for t, model in EVENT_TYPES.items()
}


def decode_event(raw: bytes) -> CloudEvent:
    """Parse event-log bytes; :class:`~shoal.errors.InvalidEvent` as ``parse_event`` would."""
    found = _TYPE.search(raw)
    envelope = _ENVELOPES.get(found.group(1)) if found else None
    if envelope is not None:
        try:
            return envelope.model_validate_json(raw)
        except ValidationError:
            pass  # the general path names what is wrong
    return parse_event(raw)
