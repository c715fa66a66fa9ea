"""Everything a demo run puts on the wire validates against the exported schemas.

On the embedded default (authentication on), ``shoal demo`` and a kill after it run end to
end while every value written to every bucket is recorded; then every message on every
stream of the topology and every recorded bucket value is checked with ``jsonschema``
against the files ``shoal schemas export`` wrote (read back from disk, as a client in
another language would).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from referencing import Registry, Resource

from shoal.bus import Bus, ShoalSettings, Topology
from shoal.ops.contract import KV_DOCUMENTS, kv_document_for
from shoal.ops.server import EmbeddedServer

pytestmark = pytest.mark.timeout(400)


def _validators(directory: Path) -> dict[str, jsonschema.protocols.Validator]:
    """Every exported schema by ``$id``, each checked as a 2020-12 schema first."""
    schemas = [json.loads(p.read_text()) for p in sorted(directory.rglob("*.json"))]
    registry: Registry[Any] = Registry().with_resources(
        (s["$id"], Resource.from_contents(s)) for s in schemas
    )
    out: dict[str, jsonschema.protocols.Validator] = {}
    for s in schemas:
        jsonschema.Draft202012Validator.check_schema(s)
        out[s["$id"]] = jsonschema.Draft202012Validator(
            s, registry=registry, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )
    return out


def _problems(validator: jsonschema.protocols.Validator, doc: Any, where: str) -> list[str]:
    return [
        f"{where}: {list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(doc)
    ]


async def _stream_messages(js: JetStreamContext, stream: str) -> list[tuple[str, bytes]]:
    info = await js.stream_info(stream)
    out: list[tuple[str, bytes]] = []
    if not info.state.messages:
        return out
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await js.get_msg(stream, seq)
        except NotFoundError:  # deleted (a work-queue ack, a limit)
            continue
        out.append((msg.subject or "", msg.data or b""))
    return out


class BucketRecorder:
    """Every value written to the topology's buckets while it runs (an ordered consumer on
    each bucket's stream): presence keys come and go with their instances, so reading the
    buckets afterwards would miss them."""

    def __init__(self, bus: Bus, buckets: dict[str, str]) -> None:
        self.js = bus.js
        self.buckets = buckets  # topology field -> bucket name
        self.seen: list[tuple[str, str, bytes]] = []  # (field, key, value)
        self.last: dict[str, int] = {}
        self.subs: list[Any] = []

    async def __aenter__(self) -> BucketRecorder:
        for field, bucket in self.buckets.items():

            async def record(msg: Msg, field: str = field, bucket: str = bucket) -> None:
                self.last[bucket] = msg.metadata.sequence.stream
                if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
                    return
                key = (msg.subject or "").removeprefix(f"$KV.{bucket}.")
                self.seen.append((field, key, msg.data or b""))

            sub = await self.js.subscribe(f"$KV.{bucket}.>", cb=record, ordered_consumer=True)
            self.subs.append(sub)
        return self

    async def drained(self) -> None:
        """Wait until every value written so far has been recorded."""
        for _ in range(200):
            infos = {b: await self.js.stream_info(f"KV_{b}") for b in self.buckets.values()}
            if all(self.last.get(b, 0) >= i.state.last_seq for b, i in infos.items()):
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the bucket recorder did not catch up")

    async def __aexit__(self, *exc: object) -> None:
        for sub in self.subs:
            await sub.unsubscribe()


async def _shoal(env: dict[str, str], *args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shoal",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
        cwd=Path(env["SHOAL_DATA_DIR"]).parent,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 300)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-3000:]


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[ShoalSettings]:
    """The embedded default, authentication on; the test's server is stopped after it."""
    settings = ShoalSettings(data_dir=tmp_path / "data", nats_url=None)
    yield settings
    EmbeddedServer(settings).stop()


async def test_every_message_and_document_a_demo_writes_validates_against_the_exported_schemas(
    embedded: ShoalSettings, tmp_path: Path
) -> None:
    env = {
        "SHOAL_DATA_DIR": str(embedded.data_dir),
        "NATS_URL": "",
        "SHOAL_GATEWAY_PORT": "0",
        "SHOAL_GATEWAY_MCP_PORT": "0",
    }
    await _shoal(env, "up", "--no-services")  # the server (auth on) and the topology
    record = EmbeddedServer(embedded).running()
    assert record is not None
    top = Topology.for_settings(embedded)
    fields = sorted({d.bucket for d in KV_DOCUMENTS})
    async with Bus.connect(record.url, embedded, name="contract-test") as bus:
        assert embedded.effective_creds is not None  # the local admin's: auth is on
        async with BucketRecorder(bus, {f: getattr(top, f).name for f in fields}) as recorder:
            await _shoal(env, "demo", "--json")
            # An operator command after it: a kill switch in its bucket and an audit record.
            await _shoal(env, "kill", "--fleet", "demo", "--reason", "check", "--force")
            await recorder.drained()
        stored = {spec.name: await _stream_messages(bus.js, spec.name) for spec in top.streams}
    exported = tmp_path / "schemas"
    await _shoal(env, "schemas", "export", str(exported))
    validators = _validators(exported)
    problems: list[str] = []

    types: Counter[str] = Counter()
    on_stream: Counter[str] = Counter()
    for name, messages in stored.items():
        for subject, raw in messages:
            on_stream[name] += 1
            event = json.loads(raw)
            types[event.get("type")] += 1
            validator = validators.get(f"urn:shoal:schema:event:{event.get('type')}")
            if validator is None:
                problems.append(f"{subject}: no schema for type {event.get('type')!r}")
                continue
            problems += _problems(validator, event, subject)
            assert subject.split(".")[1] in {"goals", "tasks", "events", "control"}

    documents: Counter[str] = Counter()
    for field, key, raw in recorder.seen:
        doc = kv_document_for(field, key)
        if doc is None:
            problems.append(f"{field}/{key}: no declared document for this key")
            continue
        documents[doc.name] += 1
        problems += _problems(validators[doc.id], json.loads(raw), f"{field}/{key}")

    assert problems == []
    # What was checked: the demo's whole run, the kill, and nothing dead-lettered.
    assert on_stream[top.deadletter.name] == 0
    assert on_stream[top.tasks.name] == 0  # a work queue: every task was acked
    assert on_stream[top.goals.name] == 1 and on_stream[top.control.name] == 1
    assert types["shoal.goal.submitted"] == 2  # on the goals stream and on the event log
    assert types["shoal.control.accepted"] == 1
    assert types["shoal.model.called"] > 0 and types["shoal.goal.completed"] == 1
    assert sum(on_stream.values()) == sum(types.values())
    # Buckets: the instances' heartbeats (each of the 3 agents, at least once), their gateway
    # keys, the approval the demo asks for, and the kill switch.
    assert set(documents) == {"presence", "keys", "approvals", "kill"}
    assert documents["kill"] == 1
    presence = {key for field, key, _ in recorder.seen if field == "presence"}
    assert len(presence) == types["shoal.agent.started"] == 3
