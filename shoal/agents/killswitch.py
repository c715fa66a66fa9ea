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
    """Watches the kill bucket; :meth:`match` answers from memory.

    A KV watch is an ordered consumer; after a server restart nats-py recovers it only once
    its heartbeats have been missed (measured: ~17 s), far too slow for a kill switch. So a
    guard notices every reconnect (a local counter, checked every ``check_interval_s``) and
    loads the bucket again through a fresh watch, swapping the new state in whole.
    """

    def __init__(
        self,
        bus: Bus,
        on_change: Callable[[str, KillSwitch | None], None] | None = None,
        check_interval_s: float = 0.25,
    ) -> None:
        self.bus = bus
        self.active: dict[str, KillSwitch] = {}
        self.set_at: dict[str, float] = {}  # monotonic time each key was seen (bench, logs)
        self.on_change = on_change
        self.check_interval_s = check_interval_s
        self.reloads = 0
        self._generation = 0
        self._reconnects = 0
        self._task: asyncio.Task[None] | None = None
        self._watcher: KeyValue.KeyWatcher | None = None
        self._guard: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 5.0) -> None:
        """Begin watching; return once the bucket's current keys are loaded."""
        await self._watch(timeout)
        self._guard = asyncio.create_task(self._guard_loop(timeout), name="kill-guard")

    async def stop(self) -> None:
        tasks = [t for t in (self._guard, self._task) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await _stop_watcher(self._watcher)

    def match(self, keys: Iterable[str]) -> tuple[str, KillSwitch] | None:
        """The first of ``keys`` that is set, with its switch, or None."""
        for key in keys:
            switch = self.active.get(key)
            if switch is not None:
                return key, switch
        return None

    async def _watch(self, timeout: float) -> None:
        """Load the bucket through a new watch and make it the one followed."""
        self._reconnects = self.bus.nc.stats["reconnects"]
        kv = await self.bus.kv(self.bus.topology.kill.name)
        watcher = await kv.watchall()
        self._generation += 1
        loaded = asyncio.Event()
        task = asyncio.create_task(
            self._follow(watcher, self._generation, loaded), name="kill-watcher"
        )
        try:
            await asyncio.wait_for(loaded.wait(), timeout)
        except BaseException:
            task.cancel()
            await _stop_watcher(watcher)
            raise
        old_task, old_watcher = self._task, self._watcher
        self._task, self._watcher = task, watcher
        if old_task is not None:
            old_task.cancel()
        await _stop_watcher(old_watcher)

    async def _guard_loop(self, timeout: float) -> None:
        while True:
            await asyncio.sleep(self.check_interval_s)
            nc = self.bus.nc
            if nc.stats["reconnects"] == self._reconnects or not nc.is_connected:
                continue
            try:
                await self._watch(timeout)
                self.reloads += 1
            except Exception as e:  # the server may still be starting: next turn
                log.warning("kill switches not reloaded after a reconnect yet: %s", e)

    async def _follow(
        self, watcher: KeyValue.KeyWatcher, generation: int, loaded: asyncio.Event
    ) -> None:
        fresh: dict[str, KillSwitch] | None = {}  # the initial values, until swapped in
        async for entry in watcher:
            if generation != self._generation:
                return  # a newer watch took over
            if entry is not None:
                self._apply(entry, fresh)
            if fresh is not None and (entry is None or entry.delta == 0):
                self._swap(fresh)
                fresh = None
                loaded.set()

    def _apply(self, entry: KeyValue.Entry, fresh: dict[str, KillSwitch] | None) -> None:
        target = self.active if fresh is None else fresh
        if entry.operation in (KV_DEL, KV_PURGE):
            target.pop(entry.key, None)
            if fresh is None:
                self.set_at.pop(entry.key, None)
                self._notify(entry.key, None)
            return
        try:
            switch = KillSwitch.model_validate_json(entry.value or b"{}")
        except ValueError as e:
            # A malformed value must still stop things: fail closed, say why in the log.
            log.warning("kill key %s has an invalid value (%s); treating it as set", entry.key, e)
            switch = KillSwitch(scope="all", by="unknown", reason="invalid value", at=utcnow())
        target[entry.key] = switch
        if fresh is None:
            self.set_at[entry.key] = time.monotonic()
            self._notify(entry.key, switch)

    def _swap(self, fresh: dict[str, KillSwitch]) -> None:
        """Replace the state whole, telling ``on_change`` what differs."""
        old, self.active = self.active, fresh
        now = time.monotonic()
        for key in old.keys() - fresh.keys():
            self.set_at.pop(key, None)
            self._notify(key, None)
        for key, switch in fresh.items():
            if old.get(key) != switch:
                self.set_at[key] = now
                self._notify(key, switch)

    def _notify(self, key: str, switch: KillSwitch | None) -> None:
        if self.on_change is not None:
            try:
                self.on_change(key, switch)
            except Exception:
                log.exception("kill-switch callback failed for %s", key)


async def _stop_watcher(watcher: KeyValue.KeyWatcher | None) -> None:
    if watcher is not None:
        with contextlib.suppress(Exception):
            await watcher.stop()  # type: ignore[no-untyped-call]
