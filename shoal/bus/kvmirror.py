"""A live in-memory copy of one KV bucket, fed by a watch (supervisors, the core's caps).

Nothing domain-specific: values stay bytes; ``on_change(key)`` is called after every write
or delete the watch delivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

__all__ = ["KvMirror", "MirrorEntry"]


@dataclass
class MirrorEntry:
    value: bytes
    revision: int
    seen_at: float


class KvMirror:
    """A live in-memory copy of one bucket, fed by a KV watch.

    ``seen_at`` is the local monotonic time a key was last written: JetStream removes keys
    whose TTL ran out without telling watchers, so staleness is judged from it.
    """

    def __init__(self, kv: KeyValue, on_change: Callable[[str], None] | None = None) -> None:
        self.kv = kv
        self.entries: dict[str, MirrorEntry] = {}
        self._on_change = on_change
        self._watcher: KeyValue.KeyWatcher | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self, timeout: float) -> None:
        self._watcher = await self.kv.watchall()
        self._task = asyncio.create_task(self._follow(self._watcher), name=f"mirror-{self.kv}")
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def stop(self) -> None:
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()  # type: ignore[no-untyped-call]
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:
                self._ready.set()
                continue
            if entry.operation in (KV_DEL, KV_PURGE):
                self.entries.pop(entry.key, None)
            else:
                self.entries[entry.key] = MirrorEntry(
                    entry.value or b"", entry.revision or 0, time.monotonic()
                )
            if self._on_change is not None:
                self._on_change(entry.key)

    async def renewed(self, timeout: float) -> KvMirror:
        """A new mirror from a new watch (a watch does not survive every server restart).

        Keys whose revision did not change keep their ``seen_at``, so a lease that stopped
        being renewed does not look fresh again. On failure this mirror stays in use.
        """
        mirror = KvMirror(self.kv, self._on_change)
        await mirror.start(timeout)
        for key, entry in mirror.entries.items():
            previous = self.entries.get(key)
            if previous is not None and previous.revision == entry.revision:
                entry.seen_at = previous.seen_at
        await self.stop()
        return mirror

    def fresh(self, key: str, ttl: float, now: float) -> MirrorEntry | None:
        """The entry if it was written within ``ttl`` seconds."""
        entry = self.entries.get(key)
        return entry if entry is not None and now - entry.seen_at < ttl else None
