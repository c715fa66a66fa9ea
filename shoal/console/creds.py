"""Sign-in with operator credentials: the ``.creds`` file ``shoal auth add NAME --role R`` wrote.

The NATS server is the judge, not the console. The pasted credentials open a connection
(the server checks the JWT's chain of signatures, its revocations, and — by the nonce it
makes the client sign — that the holder has the seed); the console then asks its own
account's connections (``$SYS.REQ.ACCOUNT.PING.CONNZ``, account-scoped) whether that user is
among them, so credentials of another account (another tenant) or a server without JWT auth
sign no one in. The role and principal are the ``role:`` and ``principal:`` tags the issuer
put in the JWT, as the CLI reads them.

That connection stays open while the console runs: it is what the sign-in rests on. A
revocation (``shoal auth revoke NAME``, or the warden) makes the server close it, and every
request checks the user still has a connection in the account, so the sign-in ends at its
next request, on every replica. If the console that holds the connection stops, its
sign-ins end too (sign in again). The seed is used for the connection only: never stored,
logged or put in the sign-in record (which keeps the user's public key).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.client import RawCredentials

from shoal.auth.jwt import creds_file, decode_claims, parse_creds
from shoal.bus import Bus
from shoal.bus.connectopts import connect_options
from shoal.console.access import ROLES, Authenticator, Principal

__all__ = ["NATS_CREDENTIAL", "CredsAuthenticator", "EitherAuthenticator", "looks_like_creds"]

log = logging.getLogger("shoal.console")

NATS_CREDENTIAL = "nats:"
"""The prefix of a principal's credential id when it signed in with NATS credentials."""

_CONNZ = "$SYS.REQ.ACCOUNT.PING.CONNZ"


def looks_like_creds(text: str) -> bool:
    return "BEGIN NATS USER JWT" in text


class CredsAuthenticator:
    """An :class:`~shoal.console.access.Authenticator` for shoal-issued NATS credentials."""

    def __init__(self, bus: Bus, *, window_s: float = 0.5) -> None:
        self.bus = bus
        self.window_s = window_s
        self._held: dict[str, NATS] = {}

    async def authenticate(self, credential: str) -> Principal | None:
        try:
            token, seed = parse_creds(credential)
            claims = decode_claims(token)
        except ValueError:
            return None
        tags = dict(
            str(t).split(":", 1) for t in claims.get("nats", {}).get("tags", []) if ":" in str(t)
        )
        role, user = tags.get("role"), str(claims.get("sub", ""))
        name = tags.get("principal") or str(claims.get("name", ""))
        if role not in ROLES or not user or not name:
            return None  # not an operator's credentials (a service, an instance, foreign)
        held = await self._hold(user, creds_file(token, seed), claims)
        if held is None or not await self._in_account(user):
            if held is not None and self._held.get(user) is held:
                await self._drop(user)
            return None
        return Principal(name, next(r for r in ROLES if r == role), NATS_CREDENTIAL + user)

    async def still_valid(self, who: Principal) -> bool:
        user = who.credential.removeprefix(NATS_CREDENTIAL)
        return who.credential.startswith(NATS_CREDENTIAL) and await self._in_account(user)

    async def close(self) -> None:
        for user in list(self._held):
            await self._drop(user)

    async def _hold(self, user: str, creds: str, claims: dict[str, Any]) -> NATS | None:
        current = self._held.get(user)
        if current is not None and current.is_connected:
            return current
        inboxes = [
            s
            for s in claims.get("nats", {}).get("sub", {}).get("allow", [])
            if isinstance(s, str) and s.startswith("_INBOX.")
        ]
        inbox = inboxes[0].removesuffix(".>") if len(inboxes) == 1 else "_INBOX"

        async def quiet(e: Exception) -> None:
            log.debug("a sign-in's connection: %s", e)

        url = self.bus.nc.connected_url
        if url is None:
            return None
        tls = connect_options(self.bus.settings).get("tls")  # the console's own CA, if any
        try:
            nc = await nats.connect(
                f"{url.scheme}://{url.hostname}:{url.port}",
                user_credentials=RawCredentials(creds),
                **({"tls": tls} if tls is not None else {}),
                name="shoal-console-sign-in",
                inbox_prefix=inbox,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                connect_timeout=5,
                error_cb=quiet,
            )
        except Exception as e:  # refused by the server (revoked, forged, wrong operator)
            log.info("console sign-in with NATS credentials refused: %s", e)
            return None
        self._held[user] = nc
        return nc

    async def _drop(self, user: str) -> None:
        nc = self._held.pop(user, None)
        if nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 2.0)

    async def _in_account(self, user: str) -> bool:
        """True once a server of this account's cluster reports a connection of ``user``."""
        nc = self.bus.nc
        inbox = nc.new_inbox()
        found = asyncio.Event()

        async def on_reply(msg: Any) -> None:
            try:
                conns = json.loads(msg.data)["data"]["connections"] or []
            except (ValueError, KeyError, TypeError):
                return
            if any(c.get("authorized_user") == user for c in conns):
                found.set()

        sub = await nc.subscribe(inbox, cb=on_reply)
        try:
            query = {"auth": True, "user": user}  # open connections of that user
            await nc.publish(_CONNZ, json.dumps(query).encode(), reply=inbox)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(found.wait(), self.window_s)
        finally:
            await sub.unsubscribe()
        return found.is_set()


class EitherAuthenticator:
    """Operator credentials when the text is a ``.creds`` file, else a console token."""

    def __init__(self, token: Authenticator, creds: CredsAuthenticator) -> None:
        self.token = token
        self.creds = creds

    async def authenticate(self, credential: str) -> Principal | None:
        if looks_like_creds(credential):
            return await self.creds.authenticate(credential)
        return await self.token.authenticate(credential)

    async def still_valid(self, who: Principal) -> bool:
        if who.credential.startswith(NATS_CREDENTIAL):
            return await self.creds.still_valid(who)
        return await self.token.still_valid(who)

    async def close(self) -> None:
        await self.creds.close()
