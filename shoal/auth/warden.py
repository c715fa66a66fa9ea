"""The warden: a kill also revokes credentials, so the server itself stops the killed.

It follows the kill bucket; for every ``instance.<id>``, ``fleet.<name>`` or ``all`` key it
adds the matching instances' user keys to the account's revocation list, re-signs the
account JWT with the operator key and pushes it on ``$SYS.REQ.CLAIMS.UPDATE``. The server
disconnects those users at once and refuses them from then on; its full resolver stores
the JWT, so the revocation survives restarts. A handler that ignores the kill switch is
stopped all the same: this is the stop path no agent code can bypass.
"""

from __future__ import annotations

import asyncio
import json
import logging

from nats.aio.client import Client as NATS
from nats.js.kv import KV_DEL, KV_PURGE

from shoal.auth.issuer import InstanceIssuer
from shoal.auth.store import DEFAULT_ACCOUNT, KeyStore
from shoal.bus import Bus, parse_kill_key
from shoal.errors import Refused

__all__ = ["CLAIMS_UPDATE", "Warden", "push_account"]

log = logging.getLogger("shoal.auth")

CLAIMS_UPDATE = "$SYS.REQ.CLAIMS.UPDATE"
"""The server's own system subject (not a shoal subject: it is not built in bus/subjects)."""


async def push_account(sys_nc: NATS, token: str, timeout: float) -> None:
    """Hand a re-signed account JWT to the server (and, in a cluster, to every server)."""
    reply = await sys_nc.request(CLAIMS_UPDATE, token.encode(), timeout=timeout)
    answer = json.loads(reply.data or b"{}")
    data = answer.get("data") or answer.get("error") or {}
    if data.get("code") != 200:
        raise Refused(f"the server did not take the account update: {data or answer}")


class Warden:
    """Revokes the credentials of killed instances and fleets."""

    def __init__(self, bus: Bus, sys_nc: NATS, store: KeyStore) -> None:
        self.bus = bus
        self.sys_nc = sys_nc
        self.store = store
        self.issuer = InstanceIssuer(store, bus.settings)
        self.revoked = 0

    async def revoke(self, scope: str, name: str | None) -> list[str]:
        """Revoke every not-yet-revoked instance the kill covers; return their user keys."""
        already = self.store.revocations(DEFAULT_ACCOUNT)
        publics = [i.public for i in self.issuer.matching(scope, name) if i.public not in already]
        if publics:
            token = await asyncio.to_thread(self.store.revoke, publics)
            await push_account(self.sys_nc, token, self.bus.settings.request_timeout)
            self.revoked += len(publics)
            log.info("revoked %d credential(s) for kill %s %s", len(publics), scope, name or "")
        return publics

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Follow the kill bucket (current keys first) until ``stop``."""
        kv = await self.bus.kv(self.bus.topology.kill.name)
        watcher = await kv.watchall()
        follow = asyncio.create_task(self._follow(watcher, ready))
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([follow, stopped], return_when=asyncio.FIRST_COMPLETED)
            if follow.done():
                follow.result()  # a failure must be seen, not idle
        finally:
            follow.cancel()
            stopped.cancel()
            await watcher.stop()  # type: ignore[no-untyped-call]

    async def _follow(self, watcher: object, ready: asyncio.Event | None) -> None:
        async for entry in watcher:  # type: ignore[attr-defined]
            if entry is not None and entry.operation not in (KV_DEL, KV_PURGE):
                await self._on_kill(entry.key)
            if ready is not None and (entry is None or entry.delta == 0):
                ready.set()

    async def _on_kill(self, key: str) -> None:
        try:
            scope, name = parse_kill_key(key)
        except ValueError:
            log.warning("ignoring %r in the kill bucket: not a kill key", key)
            return
        await self.revoke(scope, name)
