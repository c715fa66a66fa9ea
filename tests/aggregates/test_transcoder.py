"""The orjson transcoder writes the library's own format: stores stay readable both ways."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.application import Application
from eventsourcing.persistence import JSONTranscoder, TranscodingNotRegisteredError

from shoal.aggregates.transcoder import OrjsonTranscoder

STATES: list[dict[str, Any]] = [
    {"seq": 1, "timestamp": datetime(2026, 1, 5, 9, 0, 1, 250, tzinfo=UTC)},
    {"cost_usd": Decimal("0.0012345678"), "reported": None, "model": "gpt-4o", "ok": True},
    {"arguments": {"path": "doc.md", "n": [1, 2.5, None]}, "side_effects": ("write",)},
    {"nested": [{"at": datetime(2026, 1, 1, tzinfo=UTC), "id": UUID(int=7)}]},
    {"id": UUID(int=42), "name": "ünïcode ✓"},
    {"big": 2**70, "keys": {1: "one"}},
    {"budgets": {"fleet": Decimal("10.50")}, "flags": []},
]


def _pair() -> tuple[JSONTranscoder, OrjsonTranscoder]:
    app = Application.__new__(Application)
    library, fast = JSONTranscoder(), OrjsonTranscoder()
    Application.register_transcodings(app, library)
    Application.register_transcodings(app, fast)
    return library, fast


@pytest.mark.parametrize("state", STATES)
def test_the_stored_bytes_are_the_librarys_bytes(state: dict[str, Any]) -> None:
    library, fast = _pair()
    assert fast.encode(state) == library.encode(state)


@pytest.mark.parametrize("state", STATES)
def test_each_reads_what_the_other_wrote(state: dict[str, Any]) -> None:
    library, fast = _pair()
    assert fast.decode(library.encode(state)) == library.decode(library.encode(state))
    assert library.decode(fast.encode(state)) == fast.decode(fast.encode(state))


def test_an_unregistered_type_is_refused_as_the_library_refuses_it() -> None:
    _, fast = _pair()
    with pytest.raises(TranscodingNotRegisteredError):
        fast.encode({"x": object()})
    with pytest.raises(TranscodingNotRegisteredError):
        fast.encode({"x": [object()]})
