"""A faster transcoder for the core's stored events: orjson, the library's own format.

``eventsourcing``'s :class:`~eventsourcing.persistence.JSONTranscoder` encodes with the
standard library's pure-Python encoder loop (``json.encoder.iterencode``), which the core's
profile put at ~14 µs of every ~80 µs event (docs/performance.md). :class:`OrjsonTranscoder`
writes **the same bytes format** — values of registered types (``Decimal``, ``datetime``,
``UUID``…) as ``{"_type_": name, "_data_": …}`` — so a store written by either transcoder is
read by the other, and an existing store needs no migration.

orjson serializes ``datetime`` and ``UUID`` natively, as plain strings that would not decode
back to those types. An event's state is usually flat (scalars, ``Decimal``, ``datetime``):
orjson then encodes it in one call, handing ``Decimal`` and ``datetime`` (passed through)
to the wrapping hook. A state holding a container or a ``UUID`` is first walked in Python,
every registered value replaced by its wrapper. Integers orjson refuses (past 64 bits) fall
back to the library's encoder.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import JSONTranscoder, TranscodingNotRegisteredError

__all__ = ["OrjsonTranscoder"]

_PLAIN = (str, int, float, bool, type(None))
_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
_WALKED = frozenset({dict, list, tuple, UUID})
"""Types a flat state must not hold for orjson to encode it directly (see the module doc)."""


class OrjsonTranscoder(JSONTranscoder):
    """:class:`JSONTranscoder`'s format and transcodings, encoded and decoded by orjson."""

    def encode(self, obj: Any) -> bytes:
        """Encode ``obj``, registered types wrapped as the library's transcoder wraps them."""
        try:
            if type(obj) is dict and not any(type(v) in _WALKED for v in obj.values()):
                return orjson.dumps(obj, default=self._hook, option=_OPTIONS)
            return orjson.dumps(self._wrap(obj), option=_OPTIONS)
        except orjson.JSONEncodeError:
            return super().encode(obj)  # e.g. an int past 64 bits: the library's encoder

    def decode(self, data: bytes) -> Any:
        """Decode bytes written by this transcoder or by :class:`JSONTranscoder`."""
        return self._unwrap(orjson.loads(data))

    def _hook(self, o: Any) -> Any:
        transcoding = self.types.get(type(o))
        if transcoding is None:
            raise TypeError(type(o))  # orjson reports it as JSONEncodeError: the fallback
        return {"_type_": transcoding.name, "_data_": self._wrap(transcoding.encode(o))}

    def _wrap(self, o: Any) -> Any:
        kind = type(o)
        if kind in _PLAIN:
            return o
        if kind is dict:
            return {k: v if type(v) in _PLAIN else self._wrap(v) for k, v in o.items()}
        if kind is list or kind is tuple:
            return [v if type(v) in _PLAIN else self._wrap(v) for v in o]
        transcoding = self.types.get(kind)
        if transcoding is None:
            raise TranscodingNotRegisteredError(
                f"Object of type {kind} is not serializable. Please define and register "
                "a custom transcoding for this type."
            )
        return {"_type_": transcoding.name, "_data_": self._wrap(transcoding.encode(o))}

    def _unwrap(self, o: Any) -> Any:
        kind = type(o)
        if kind is dict:
            if len(o) == 2 and "_type_" in o and "_data_" in o:
                transcoding = self.names.get(o["_type_"])
                if transcoding is not None:
                    return transcoding.decode(self._unwrap(o["_data_"]))
                # The library raises on an unknown name: so does this.
                return self._decode_obj(o)
            return {k: v if type(v) in _PLAIN else self._unwrap(v) for k, v in o.items()}
        if kind is list:
            return [v if type(v) in _PLAIN else self._unwrap(v) for v in o]
        return o
