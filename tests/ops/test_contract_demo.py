"""Everything a demo run leaves on the wire validates against the exported schemas.

``shoal demo`` runs end to end; then every message on every stream of the topology and every
document in every bucket is checked with ``jsonschema`` against the files that
``shoal schemas export`` wrote (read back from disk, as a client in another language would).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import nats
import pytest
from nats.js.errors import NoKeysError, NotFoundError
from referencing import Registry, Resource

from shoal.bus import ShoalSettings, Topology
from shoal.ops.contract import KV_DOCUMENTS, kv_document_for
from tests.natsproc import NatsProcess

pytestmark = pytest.mark.timeout(400)


def _shoal(settings: ShoalSettings, *args: str) -> str:
    base = [sys.executable, "-m", "shoal", "--nats-url", settings.nats_url or ""]
    base += ["--prefix", settings.prefix, "--data-dir", str(settings.data_dir)]
    done = subprocess.run([*base, *args], capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return done.stdout.decode()


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


async def _stream_messages(url: str, stream: str) -> list[tuple[str, bytes]]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
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
    finally:
        await nc.close()


async def _bucket_documents(url: str, bucket: str) -> list[tuple[str, bytes]]:
    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().key_value(bucket)
        try:
            keys = await kv.keys()
        except NoKeysError:
            return []
        out = []
        for key in keys:
            entry = await kv.get(key)
            out.append((key, entry.value or b""))
        return out
    finally:
        await nc.close()


def test_every_message_and_document_a_demo_leaves_validates_against_the_exported_schemas(
    nats_server: NatsProcess, prefix: str, tmp_path: Path
) -> None:
    settings = ShoalSettings(
        nats_url=nats_server.url, prefix=prefix, data_dir=tmp_path / "data", principal="tester"
    )
    _shoal(settings, "demo", "--json")
    # An operator command after it: a kill switch in its bucket and an audit record.
    _shoal(settings, "kill", "--fleet", "demo", "--reason", "contract check", "--force")
    exported = tmp_path / "schemas"
    _shoal(settings, "schemas", "export", str(exported))
    validators = _validators(exported)
    top = Topology.for_settings(settings)
    url = nats_server.url
    problems: list[str] = []

    types: Counter[str] = Counter()
    on_stream: Counter[str] = Counter()
    for spec in top.streams:
        for subject, raw in asyncio.run(_stream_messages(url, spec.name)):
            on_stream[spec.name] += 1
            event = json.loads(raw)
            types[event.get("type")] += 1
            validator = validators.get(f"urn:shoal:schema:event:{event.get('type')}")
            if validator is None:
                problems.append(f"{subject}: no schema for type {event.get('type')!r}")
                continue
            problems += _problems(validator, event, subject)
            assert subject.split(".")[1] in {"goals", "tasks", "events", "control"}

    documents: Counter[str] = Counter()
    for field in sorted({d.bucket for d in KV_DOCUMENTS}):
        bucket = getattr(top, field).name
        for key, raw in asyncio.run(_bucket_documents(url, bucket)):
            doc = kv_document_for(field, key)
            if doc is None:
                problems.append(f"{bucket}/{key}: no declared document for this key")
                continue
            documents[doc.name] += 1
            problems += _problems(validators[doc.id], json.loads(raw), f"{bucket}/{key}")

    assert problems == []
    # What was checked: the demo's whole run, the kill, and nothing dead-lettered.
    assert on_stream[top.deadletter.name] == 0
    assert on_stream[top.tasks.name] == 0  # a work queue: every task was acked
    assert on_stream[top.goals.name] == 1 and on_stream[top.control.name] == 1
    assert types["shoal.goal.submitted"] == 2  # on the goals stream and on the event log
    assert types["shoal.control.accepted"] == 1
    assert types["shoal.model.called"] > 0 and types["shoal.goal.completed"] == 1
    assert sum(on_stream.values()) == sum(types.values())
    assert documents == {"approvals": 1, "kill": 1}
