"""The wire contract as data: schema ids, request/reply endpoints, key-value documents.

Every schema shoal publishes has a stable ``$id`` under the URN ``urn:shoal:schema:`` (the
project owns no domain, and an id is a name, not a place to fetch from) and declares the
JSON Schema 2020-12 dialect that pydantic generates. The modules that serve an endpoint or
write a bucket declare it here with :class:`Endpoint` / :class:`KVDocument`; the export and
the AsyncAPI document are built from those declarations, so they cannot disagree with the
code that answers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic.json_schema import JsonSchemaMode

from shoal.errors import USAGE_EXIT, ShoalError
from shoal.schemas.envelope import describe_validation_error

__all__ = [
    "DIALECT",
    "SCHEMA_URN",
    "BadRequest",
    "Endpoint",
    "KVDocument",
    "model_schema",
    "parse_request",
    "schema_id",
]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
"""The JSON Schema dialect of every exported schema (what pydantic generates)."""
SCHEMA_URN = "urn:shoal:schema"

M = TypeVar("M", bound=BaseModel)


def schema_id(kind: str, name: str) -> str:
    """``urn:shoal:schema:<kind>:<name>``: ``event:shoal.model.called``, ``kv:presence``,
    ``api:query.cost.request``."""
    return f"{SCHEMA_URN}:{kind}:{name}"


def model_schema(
    model: type[BaseModel], id_: str, *, mode: JsonSchemaMode = "validation"
) -> dict[str, Any]:
    """``model``'s JSON Schema as a standalone document: dialect, ``$id``, then the rest.

    ``mode="serialization"`` describes what the model writes (a reply, a stored document):
    computed fields included, decimals as the strings they are sent as.
    """
    return {"$schema": DIALECT, "$id": id_, **model.model_json_schema(mode=mode)}


class BadRequest(ShoalError):
    """A request body is not JSON, not an object, or has a field that is missing, wrong or
    unknown (the text names it)."""

    code = "bad_request"
    exit_code = USAGE_EXIT


def parse_request(model: type[M], raw: bytes | None) -> M:
    """The one way every endpoint reads its request: JSON object, unknown fields refused.

    An empty body means ``{}``. Every endpoint's request model forbids unknown fields, so a
    misspelt parameter is an error that names it, never silently ignored.
    """
    if model.model_config.get("extra") != "forbid":
        raise TypeError(f"{model.__name__} must forbid unknown fields (extra='forbid')")
    try:
        body = json.loads(raw) if raw else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"the request is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request must be a JSON object of parameters")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise BadRequest(describe_validation_error(e)) from None


@dataclass(frozen=True)
class Endpoint:
    """One NATS micro endpoint on ``<prefix>.api.<service>.<name>``: its request and reply."""

    service: str
    name: str
    request: type[BaseModel]
    reply: type[BaseModel]
    description: str = ""

    @property
    def request_id(self) -> str:
        return schema_id("api", f"{self.service}.{self.name}.request")

    @property
    def reply_id(self) -> str:
        return schema_id("api", f"{self.service}.{self.name}.reply")

    def metadata(self) -> dict[str, str]:
        """What the endpoint lists in its micro metadata (``$SRV.INFO``)."""
        return {"request_schema": self.request_id, "reply_schema": self.reply_id}


@dataclass(frozen=True)
class KVDocument:
    """The value of the keys of one key-value bucket that match ``keys``.

    ``bucket`` is the bucket's field in the topology (``presence``), ``name`` the schema's
    name (a bucket holding two kinds of value has two documents), ``keys`` the key patterns
    (``<fleet>.<agent>.<instance>``: each ``<…>`` stands for one token).
    """

    name: str
    bucket: str
    model: type[BaseModel]
    keys: tuple[str, ...]
    description: str = ""

    @property
    def id(self) -> str:
        return schema_id("kv", self.name)

    def matches(self, key: str) -> bool:
        """True when ``key`` has one of this document's key patterns."""
        return any(_key_pattern(k).fullmatch(key) for k in self.keys)


def _key_pattern(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"(<[^>]+>)", pattern)
    return re.compile("".join("[^.]+" if p.startswith("<") else re.escape(p) for p in parts))
