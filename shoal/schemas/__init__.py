"""Wire models: the CloudEvents envelope and one payload model per event type. No I/O."""

from shoal.schemas.contract import (
    DIALECT,
    SCHEMA_URN,
    BadRequest,
    Endpoint,
    KVDocument,
    model_schema,
    parse_request,
    schema_id,
)
from shoal.schemas.envelope import (
    CONTENT_TYPE,
    TOKEN_PATTERN,
    CloudEvent,
    Token,
    describe_validation_error,
    is_token,
    new_id,
    parse_event,
    utcnow,
)
from shoal.schemas.events import *  # noqa: F403
from shoal.schemas.events import __all__ as _events_all
from shoal.schemas.export import contract_schemas, event_json_schema, export_json_schemas

__all__ = [
    "CONTENT_TYPE",
    "DIALECT",
    "SCHEMA_URN",
    "BadRequest",
    "Endpoint",
    "KVDocument",
    "contract_schemas",
    "model_schema",
    "parse_request",
    "schema_id",
    "TOKEN_PATTERN",
    "CloudEvent",
    "Token",
    "describe_validation_error",
    "event_json_schema",
    "export_json_schemas",
    "is_token",
    "new_id",
    "parse_event",
    "utcnow",
    *_events_all,
]
