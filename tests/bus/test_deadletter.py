"""Dead letters always fit: a bounded record, with the original inline or in the object store."""

from __future__ import annotations

import hashlib

import pytest
from nats.js import api

from shoal.bus import Bus
from shoal.bus.connection import message_size
from shoal.bus.deadletter import INLINE_MAX

pytestmark = pytest.mark.timeout(30)


async def only_record(bus: Bus) -> api.RawStreamMsg:
    stream = bus.topology.deadletter.name
    (item,) = await bus.read(bus.subjects.all_deadletters, stream=stream)
    return await bus.js.get_msg(stream, item.seq)


def dl_id(subject: str, raw: bytes) -> str:
    return "dl-" + hashlib.sha256(subject.encode() + b"\0" + raw).hexdigest()[:32]


async def test_a_small_dead_letter_keeps_the_original_inline_with_its_size_and_hash(
    bus: Bus,
) -> None:
    await bus.deadletter("tasks", b"garbage", "invalid event: not JSON", "p.tasks.f.c")
    msg = await only_record(bus)
    assert msg.data == b"garbage"
    assert msg.headers == {
        "Nats-Msg-Id": dl_id("p.tasks.f.c", b"garbage"),
        "Shoal-Reason": "invalid event: not JSON",
        "Shoal-Original-Subject": "p.tasks.f.c",
        "Shoal-Size": "7",
        "Shoal-Sha256": hashlib.sha256(b"garbage").hexdigest(),
    }
    assert await bus.deadletter_body(msg) == b"garbage"


async def test_a_near_max_size_message_is_dead_lettered_as_a_record_naming_its_object(
    bus: Bus,
) -> None:
    raw = b"x" * (bus.nc.max_payload - 100)
    subject = bus.subjects.tasks("calc", "add")
    for _ in range(2):  # dead-lettered again (after a crash): one record, one object
        await bus.deadletter("tasks", raw, "invalid event: not JSON", subject)
    assert bus.nc.is_connected
    msg = await only_record(bus)
    bucket = bus.topology.deadletter_objects.name
    assert bucket == f"{bus.settings.stream_prefix}_deadletter"
    assert (msg.data or b"") == b""
    assert msg.headers == {
        "Nats-Msg-Id": dl_id(subject, raw),
        "Shoal-Reason": "invalid event: not JSON",
        "Shoal-Original-Subject": subject,
        "Shoal-Size": str(len(raw)),
        "Shoal-Sha256": hashlib.sha256(raw).hexdigest(),
        "Shoal-Object-Store": bucket,
        "Shoal-Object": dl_id(subject, raw),
    }
    assert await bus.deadletter_body(msg) == raw
    # 1 MiB in 128 KiB chunks, plus the object's meta message: stored once.
    objects = await bus.js.stream_info(f"OBJ_{bucket}")
    assert objects.state.messages == 8 + 1


async def test_an_original_just_over_the_inline_limit_goes_to_the_object_store(bus: Bus) -> None:
    inline, stored = b"a" * INLINE_MAX, b"b" * (INLINE_MAX + 1)
    await bus.deadletter("events", inline, "too odd", "p.events._.I.x.y")
    await bus.deadletter("events", stored, "too odd", "p.events._.I.x.y")
    stream = bus.topology.deadletter.name
    items = await bus.read(bus.subjects.deadletter("events"), stream=stream)
    first, second = [await bus.js.get_msg(stream, s.seq) for s in items]
    assert (first.data, "Shoal-Object" in (first.headers or {})) == (inline, False)
    assert (second.data or b"", (second.headers or {})["Shoal-Size"]) == (b"", str(INLINE_MAX + 1))
    assert await bus.deadletter_body(second) == stored


async def test_a_dead_letter_record_is_bounded_whatever_its_reason_and_subject(bus: Bus) -> None:
    raw = b"y" * (bus.nc.max_payload - 10)
    reason = "line one\r\nline two " + "r" * 5000
    subject = "p.tasks." + "s" * 3000
    await bus.deadletter("tasks", raw, reason, subject)
    msg = await only_record(bus)
    headers = msg.headers or {}
    assert headers["Shoal-Reason"] == ("line one  line two " + "r" * 5000)[:1000]
    assert headers["Shoal-Original-Subject"] == subject[:1024]
    assert message_size(msg.data or b"", headers) < 2500
    assert await bus.deadletter_body(msg) == raw


async def test_a_server_provisioned_without_the_object_store_still_keeps_large_dead_letters(
    bus: Bus,
) -> None:
    # A server provisioned by an earlier shoal has no dead-letter object store yet.
    await bus.js.delete_object_store(bus.topology.deadletter_objects.name)
    raw = b"z" * (INLINE_MAX * 2)
    await bus.deadletter("goals", raw, "invalid event: not JSON", "p.goals.f")
    assert await bus.deadletter_body(await only_record(bus)) == raw
