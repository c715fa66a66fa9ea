"""A worker in plain nats-py, written from docs/agents.md only: it imports nothing of shoal.

Usage: ``python plain_worker.py NATS_URL PREFIX FLEET CAPABILITY COUNT`` — takes COUNT tasks,
answers each with ``{"text": input.text upper-cased}``, prints a JSON line, exits 0. On a
secured server it connects with the creds file in ``NATS_CREDS`` (``shoal auth enroll``) as
the instance in ``SHOAL_INSTANCE``, the one its credentials were issued for.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import nats
from nats.js import api


def event(
    task: dict[str, Any], type_: str, data: dict[str, Any], fleet: str, instance: str
) -> dict[str, Any]:
    """A CloudEvent of the same session as ``task`` (iid, gid, parentiid, principal copied)."""
    out = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": f"shoal://{fleet}/plain-worker/{instance}",
        "type": type_,
        "time": datetime.now(UTC).isoformat(),
        "datacontenttype": "application/json",
        "iid": task["iid"],
        "fleet": fleet,
        "agent": "plain-worker",
        "instance": instance,
        "data": data,
    }
    for key in ("gid", "parentiid", "principal"):
        if task.get(key):
            out[key] = task[key]
    return out


def own_inbox(creds: str | None) -> str:
    """The reply inbox these credentials may subscribe to: ``_INBOX.<user public key>``."""
    if creds is None:
        return "_INBOX"
    with open(creds) as f:
        token = next(line.strip() for line in f if line.count(".") == 2)
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return f"_INBOX.{claims['sub']}"


async def main(url: str, prefix: str, fleet: str, capability: str, count: int) -> int:
    creds = os.environ.get("NATS_CREDS") or None
    nc = await nats.connect(
        url, connect_timeout=2, user_credentials=creds, inbox_prefix=own_inbox(creds)
    )
    js = nc.jetstream(timeout=5)
    stream = prefix.upper().replace("-", "_") + "_TASKS"
    subject = f"{prefix}.tasks.{fleet}.{capability}"
    durable = f"{fleet}_{capability}"
    instance = os.environ.get("SHOAL_INSTANCE") or uuid.uuid4().hex
    try:
        await js.consumer_info(stream, durable)  # bind to the fleet's consumer if it exists
    except nats.js.errors.NotFoundError:
        await js.add_consumer(
            stream,
            api.ConsumerConfig(
                name=durable,  # created on CONSUMER.CREATE.<stream>.<durable>.<subject>
                durable_name=durable,
                filter_subject=subject,
                ack_policy=api.AckPolicy.EXPLICIT,
                deliver_policy=api.DeliverPolicy.ALL,
                ack_wait=30,
                max_deliver=4,
                max_ack_pending=20000,
                max_waiting=4096,
            ),
        )
    psub = await js.pull_subscribe_bind(durable, stream)

    async def report(task: dict[str, Any], type_: str, data: dict[str, Any]) -> None:
        ev = event(task, type_, data, fleet, instance)
        gid = ev.get("gid", "_")
        short = type_.removeprefix("shoal.")
        headers = {"Nats-Msg-Id": ev["id"], "content-type": "application/cloudevents+json"}
        # The subject ends in the publisher's identity: agent.<fleet>.<agent>.<instance>.
        me = f"agent.{fleet}.plain-worker.{instance}"
        subject = f"{prefix}.events.{gid}.{ev['iid']}.{short}.{me}"
        await js.publish(subject, json.dumps(ev).encode(), headers=headers)

    handled = 0
    deadline = time.monotonic() + 30
    while handled < count and time.monotonic() < deadline:
        try:
            [msg] = await psub.fetch(1, timeout=1)
        except TimeoutError:
            continue
        task = json.loads(msg.data)
        attempt = msg.metadata.num_delivered
        started = time.perf_counter()
        await report(task, "shoal.task.started", {"capability": capability, "attempt": attempt})
        output = {"text": str(task["data"]["input"]["text"]).upper()}
        await report(
            task,
            "shoal.task.completed",
            {
                "capability": capability,
                "output": output,
                "attempt": attempt,
                "duration_ms": (time.perf_counter() - started) * 1000,
            },
        )
        await msg.ack_sync()
        handled += 1
    await nc.drain()
    shoal_free = not any(m == "shoal" or m.startswith("shoal.") for m in sys.modules)
    print(json.dumps({"handled": handled, "shoal_free": shoal_free, "pid": os.getpid()}))
    return 0 if handled == count else 1


if __name__ == "__main__":
    url, prefix, fleet, capability, count = sys.argv[1:6]
    sys.exit(asyncio.run(main(url, prefix, fleet, capability, int(count))))
