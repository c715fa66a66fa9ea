"""A local mirror of the kill-switch bucket, so the check before every call is a dict lookup.

:class:`KillWatcher` follows the bucket with a KV watch (an ordered consumer: the server
pushes each change as it is written) and keeps the live keys in a dict. The gateways ask
:meth:`KillWatcher.match` before each model or tool call; nothing goes over the network on
that path. ``on_change`` lets the runtime react too (an instance kill stops it taking tasks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from shoal.bus import Bus, KillSwitch, kill_key
from shoal.schemas import utcnow

__all__ = ["KillWatcher", "Scope", "kill_keys"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scope:
    """Who is calling: the identities a kill switch can name."""

    instance: str
    fleet: str
    iid: str | None = None
    gid: str | None = None
    parentiid: str | None = None
    principal: str | None = None


def kill_keys(scope: Scope, *, tool: str | None = None, model: str | None = None) -> list[str]:
    """Every kill key that would stop a call from ``scope`` (most specific first)."""
    keys = [kill_key("instance", scope.instance)]
    for iid in (scope.iid, scope.parentiid):
        if iid:
            keys.append(kill_key("session", iid))
    if scope.gid:
        keys.append(kill_key("goal", scope.gid))
    if tool:
        keys.append(kill_key("tool", tool))
    if model:
        keys.append(kill_key("model", model))
    if scope.principal and "." not in scope.principal and " " not in scope.principal:
        keys.append(kill_key("principal", scope.principal))
    keys.append(kill_key("fleet", scope.fleet))
    keys.append(kill_key("all"))
    return keys


class KillWatcher:
    """Watches the kill bucket; :meth:`match` answers from memory."""

    def __init__(self, bus: Bus, on_change: Callable[[str, KillSwitch | None], None] | None = None):
        self.bus = bus
        self.active: dict[str, KillSwitch] = {}
        self.set_at: dict[str, float] = {}  # monotonic time each key was seen (bench, logs)
        self.on_change = on_change
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watcher: KeyValue.KeyWatcher | None = None

    async def start(self, timeout: float = 5.0) -> None:
        """Begin watching; return once the bucket's current keys are loaded."""
        kv = await self.bus.kv(self.bus.topology.kill.name)
        self._watcher = await kv.watchall()
        self._task = asyncio.create_task(self._follow(self._watcher), name="kill-watcher")
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def stop(self) -> None:
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()  # type: ignore[no-untyped-call]
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def match(self, keys: Iterable[str]) -> tuple[str, KillSwitch] | None:
        """The first of ``keys`` that is set, with its switch, or None."""
        for key in keys:
            switch = self.active.get(key)
            if switch is not None:
                return key, switch
        return None

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:  # end of the initial values
                self._ready.set()
                continue
            if entry.operation in (KV_DEL, KV_PURGE):
                self.active.pop(entry.key, None)
                self.set_at.pop(entry.key, None)
                self._notify(entry.key, None)
                continue
            try:
                switch = KillSwitch.model_validate_json(entry.value or b"{}")
            except ValueError as e:
                # A malformed value must still stop things: fail closed, say why in the log.
                log.warning(
                    "kill key %s has an invalid value (%s); treating it as set", entry.key, e
                )
                switch = KillSwitch(scope="all", by="unknown", reason="invalid value", at=utcnow())
            self.active[entry.key] = switch
            self.set_at[entry.key] = time.monotonic()
            self._notify(entry.key, switch)
            if entry.delta == 0:
                self._ready.set()

    def _notify(self, key: str, switch: KillSwitch | None) -> None:
        if self.on_change is not None:
            try:
                self.on_change(key, switch)
            except Exception:
                log.exception("kill-switch callback failed for %s", key)
