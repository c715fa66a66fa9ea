"""A TCP proxy for fault tests: forwards to a server and cuts every connection on demand.

Clients connect to :attr:`CutProxy.url` instead of the server's. :meth:`CutProxy.cut` cuts
every live connection the way a real network fault does: the client's side is reset at
once, while the server's side goes *half-open* — the proxy keeps it open, reads and discards
what the server still sends, and closes it only ``linger_s`` later. Until then the server
believes the old connection alive and keeps delivering to it (push consumers included):
those messages are lost on the wire, exactly as behind a dead link or a vanished NAT entry.
Clients reconnect through the proxy as they would after a real fault.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    cut: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class CutProxy:
    """Forwards ``127.0.0.1:<port>`` to an upstream ``host:port``."""

    def __init__(self, upstream_url: str, *, linger_s: float = 2.0) -> None:
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 4222)
        self.linger_s = linger_s
        self.cuts = 0
        self.discarded = 0
        """Bytes the server sent into cut connections (lost on the wire)."""
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._closers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"nats://127.0.0.1:{port}"

    async def __aenter__(self) -> CutProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for link in list(self._links):
            link.client.transport.abort()
            link.server.transport.abort()
        for task in list(self._closers):
            task.cancel()
        await self._server.wait_closed()

    def cut(self) -> int:
        """Cut every live connection (client reset, server half-open); return how many."""
        links = [link for link in self._links if not link.cut]
        for link in links:
            link.cut = True
            link.client.transport.abort()
            closer = asyncio.create_task(self._close_later(link))
            self._closers.add(closer)
            closer.add_done_callback(self._closers.discard)
        if links:
            self.cuts += 1
        return len(links)

    async def _close_later(self, link: _Link) -> None:
        await asyncio.sleep(self.linger_s)
        link.server.transport.abort()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.transport.abort()
            return
        link = _Link(client_w, server_w)
        self._links.add(link)
        await asyncio.gather(
            self._pipe(link, client_r, server_w, upstream=True),
            self._pipe(link, server_r, client_w, upstream=False),
            return_exceptions=True,
        )
        self._links.discard(link)

    async def _pipe(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        upstream: bool,
    ) -> None:
        try:
            while data := await reader.read(65536):
                if link.cut:
                    if not upstream:
                        self.discarded += len(data)  # the server talks into a dead link
                    continue
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if not link.cut:  # a cut link's server side is closed by _close_later
                with contextlib.suppress(Exception):
                    writer.transport.abort()
