"""Dead letters: a bounded record of every message shoal could not process.

A dead letter must always fit on the bus, whatever it is about: a message just under the
server's ``max_payload``, republished with reason headers, would exceed it (and the server
would close the connection). So the record's metadata lives in headers of bounded length,
and its body is the original message only when that is small (:data:`INLINE_MAX`); a larger
original goes to the dead-letter object store and the record names the object. The format is
documented in ``docs/foundation.md`` ("Dead letters").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from shoal.bus.connection import message_size

__all__ = [
    "INLINE_MAX",
    "OBJECT_HEADER",
    "OBJECT_STORE_HEADER",
    "ORIGINAL_SUBJECT_HEADER",
    "REASON_HEADER",
    "SHA256_HEADER",
    "SIZE_HEADER",
    "DeadLetterRecord",
]

REASON_HEADER = "Shoal-Reason"
ORIGINAL_SUBJECT_HEADER = "Shoal-Original-Subject"
SIZE_HEADER = "Shoal-Size"
SHA256_HEADER = "Shoal-Sha256"
OBJECT_STORE_HEADER = "Shoal-Object-Store"
OBJECT_HEADER = "Shoal-Object"

INLINE_MAX = 64 * 1024
"""Largest original kept inline in the record; anything larger goes to the object store."""

REASON_MAX = 1000
SUBJECT_MAX = 1024


@dataclass(frozen=True)
class DeadLetterRecord:
    """What is published to ``<p>.deadletter.<origin>`` for one unprocessable message.

    ``object_name`` is set when the original is kept in the object store (``body`` is then
    empty); the id is derived from the original subject and bytes, so a message dead-lettered
    again (a batch folded again after a crash) is de-duplicated by the stream.
    """

    msg_id: str
    headers: dict[str, str]
    body: bytes
    object_name: str | None

    @classmethod
    def build(
        cls, raw: bytes, reason: str, original_subject: str, *, bucket: str, max_payload: int
    ) -> DeadLetterRecord:
        digest = hashlib.sha256(original_subject.encode() + b"\0" + raw).hexdigest()
        msg_id = "dl-" + digest[:32]
        headers = {
            "Nats-Msg-Id": msg_id,
            REASON_HEADER: _one_line(reason)[:REASON_MAX],
            ORIGINAL_SUBJECT_HEADER: _one_line(original_subject)[:SUBJECT_MAX],
            SIZE_HEADER: str(len(raw)),
            SHA256_HEADER: hashlib.sha256(raw).hexdigest(),
        }
        if len(raw) <= INLINE_MAX and message_size(raw, headers) <= max_payload:
            return cls(msg_id, headers, raw, None)
        headers[OBJECT_STORE_HEADER] = bucket
        headers[OBJECT_HEADER] = msg_id
        return cls(msg_id, headers, b"", msg_id)


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")
