"""The NATS connection: connect fast, refuse what the server would reject, notice a dead link.

Two faults nats-py leaves to its caller, both of which once stopped the whole system:

- The server's ``max_payload`` bounds a message's headers and body *together*; nats-py checks
  the body alone. A message over the limit is rejected with ``-ERR 'Maximum Payload
  Violation'`` and the server closes the connection; after a server error nats-py does not
  reconnect. :class:`ShoalClient` counts the headers too and raises
  :class:`~shoal.errors.MessageTooLarge` before anything is sent. Every publisher on a
  connection goes through ``Client.publish`` (events, work, KV puts, object chunks, acks,
  request/reply answers), so one check covers them all.
- A connection nats-py closed for good (a server error, credentials revoked) stays closed:
  every later operation fails, and a loop that retries would idle alive forever.
  :class:`ConnectionWatch` ends the task that owns the connection instead (``Bus.connect``
  turns that into :class:`~shoal.errors.ConnectionLost`, so the process exits non-zero and
  its supervisor starts it afresh).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.errors import NoServersError

from shoal.bus.connectopts import auth_error, connect_options, redact_url
from shoal.bus.settings import ShoalSettings
from shoal.errors import ConnectionLost, MessageTooLarge, NatsUnreachable

__all__ = ["ConnectionWatch", "ShoalClient", "message_size", "open_connection"]

log = logging.getLogger("shoal.bus")

_HEADER_LINE = len(b"NATS/1.0\r\n")

AUTH_REFUSED = "authorization violation"
AUTH_REFUSALS_FATAL = 3
"""Reconnect attempts in a row the server refuses our credentials before we give up."""


def message_size(payload: bytes, headers: dict[str, str] | None) -> int:
    """Bytes the server counts against ``max_payload``: the encoded headers plus the body."""
    if not headers:
        return len(payload)
    size = _HEADER_LINE + 2  # status line, blank line after the headers
    for key, value in headers.items():
        size += len(key.strip().encode()) + len(value.strip().encode()) + 4  # ": ", CRLF
    return size + len(payload)


class ShoalClient(NATS):
    """A nats-py client that refuses a message the server would reject for its size."""

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        reply: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        size = message_size(payload, headers)
        if size > self.max_payload:
            raise MessageTooLarge(
                f"a message of {size} bytes on {subject[:200]} exceeds the server's max_payload "
                f"of {self.max_payload} bytes; it was not sent"
            )
        await super().publish(subject, payload, reply, headers)


class ConnectionWatch:
    """Cancels the task that owns a connection once nats-py has closed it without being asked.

    ``closed`` is nats-py's ``closed_cb``. It fires for our own close too, so the owner marks
    that with :attr:`closing` first. The owner converts the cancellation into
    :class:`ConnectionLost` (see :meth:`lost`), as ``asyncio.timeout`` turns its own into
    ``TimeoutError``.
    """

    def __init__(self) -> None:
        self.owner: asyncio.Task[object] | None = None
        self.nc: NATS | None = None
        self.reason: str | None = None
        self.closing = False

    def arm(self, nc: NATS) -> None:
        """From now on a close not asked for ends the current task."""
        self.nc, self.owner = nc, asyncio.current_task()

    async def closed(self) -> None:
        if self.closing or self.owner is None or self.reason is not None:
            return
        reason = self._closed_for_good()
        if not self.owner.done():
            self.owner.cancel(reason)

    def note(self) -> str | None:
        """The reason, once nats-py has closed the connection for good (not at our asking).

        The owner may meet the closed connection (``ConnectionClosedError``) before
        ``closed_cb`` has run; it asks here, so the error is still :class:`ConnectionLost`.
        """
        if self.reason is None and not self.closing and self.nc is not None and self.nc.is_closed:
            self._closed_for_good()
        return self.reason

    def _closed_for_good(self) -> str:
        error = self.nc.last_error if self.nc is not None else None
        self.reason = "the NATS connection was closed and will not reconnect" + (
            f" ({error})" if error else ""
        )
        log.error("%s; stopping", self.reason)
        return self.reason

    async def patrol(self, every_s: float = 1.0) -> None:
        """Backstop for ``closed_cb``: nats-py skips it when its own close fails midway (a
        flush of pending data to a dead socket raises), leaving the client closed, silently."""
        while self.nc is not None and not self.nc.is_closed:  # noqa: ASYNC110 - no event for it
            await asyncio.sleep(every_s)
        await self.closed()

    def lost(self) -> ConnectionLost:
        """The error to raise in the owner, taking back the cancellation it was sent."""
        if self.owner is not None and self.owner.cancelling():
            self.owner.uncancel()
        return ConnectionLost(self.reason or "the NATS connection was closed")


async def open_connection(
    url: str,
    settings: ShoalSettings,
    *,
    name: str,
    closed_cb: Callable[[], Awaitable[None]] | None = None,
) -> NATS:
    """Connect once, fast: an unreachable server is a clear error, not a reconnect loop;
    refused credentials are :class:`AuthorizationFailed`, not "no server reachable"."""

    nc = ShoalClient()
    established, refused = False, 0
    seen: list[Exception] = []  # errors of the first connect, to tell a refusal apart
    closing: set[asyncio.Task[None]] = set()  # a reference, so the close is not collected

    async def on_error(e: Exception) -> None:
        # Connection errors after the first connect are surfaced by the operations that
        # fail; nats-py would otherwise print them to stderr. One is acted on: nats-py
        # retries forever a server that refuses our credentials (revoked, or removed from
        # the server's config): after a few refusals in a row the connection is closed, as
        # nats.go does, so its owner ends instead of idling (see ConnectionWatch).
        nonlocal refused
        if not established and len(seen) < 20:
            seen.append(e)
        if not established or nc.is_connected or AUTH_REFUSED not in str(e).lower():
            return
        refused += 1
        if refused >= AUTH_REFUSALS_FATAL:
            # Not from inside nats-py's reconnect task, which the close cancels.
            task = asyncio.create_task(_close(nc))
            closing.add(task)
            task.add_done_callback(closing.discard)

    async def on_reconnected() -> None:
        nonlocal refused
        refused = 0

    # NATS_URL may list several servers of a cluster, comma-separated.
    servers = [u.strip() for u in url.split(",") if u.strip()]
    options: dict[str, Any] = {
        "name": name,
        "connect_timeout": settings.connect_timeout,
        "allow_reconnect": True,
        # nats-py applies this limit to the first connect too, where -1 would retry
        # forever: try each server twice, then say so.
        "max_reconnect_attempts": 2,
        "reconnect_time_wait": 0.2,
        "error_cb": on_error,
        "reconnected_cb": on_reconnected,
        "closed_cb": closed_cb,
        **connect_options(settings),  # creds, NKey, user/password, token, TLS
    }
    try:
        await nc.connect(servers, **options)
    except (NoServersError, OSError, TimeoutError, nats.errors.Error) as e:
        refusal = auth_error(url, [*seen, e])
        if refusal is not None:
            raise refusal from e
        shown = redact_url(url)  # never a password in a message
        if isinstance(e, NoServersError | OSError | TimeoutError):
            raise NatsUnreachable(
                f"no NATS server reachable at {shown}: {e or type(e).__name__}"
            ) from e
        raise NatsUnreachable(f"cannot connect to {shown}: {e}") from e  # a malformed URL…
    # Once connected, ride out outages: a restarted server must not end a long-running
    # process; operations that fail meanwhile raise and are reported where they happen.
    nc.options["max_reconnect_attempts"] = -1
    nc.options["reconnect_time_wait"] = 0.5
    established = True
    return nc


async def _close(nc: NATS) -> None:
    try:
        await nc.close()
    except Exception as e:  # the socket is already gone: the client is closed all the same
        log.debug("closing a refused connection: %s", e)
