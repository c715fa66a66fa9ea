"""A TCP proxy for fault tests: forwards to a server and cuts every connection on demand.

Clients connect to :attr:`CutProxy.url` instead of the server's; :meth:`CutProxy.cut` aborts
every live connection at once (both directions, bytes in flight are lost), as a network
fault or a load balancer's reset would. Clients reconnect through the proxy as they would
after a real fault.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit


class CutProxy:
    """Forwards ``127.0.0.1:<port>`` to an upstream ``host:port``."""

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 4222)
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

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
        self.cut()
        await self._server.wait_closed()

    def cut(self) -> int:
        """Abort every live connection; return how many were cut."""
        links, self._links = self._links, set()
        for writer in links:
            writer.transport.abort()
        if links:
            self.cuts += 1
        return len(links) // 2

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.transport.abort()
            return
        self._links |= {client_w, server_w}
        await asyncio.gather(
            self._pipe(client_r, server_w), self._pipe(server_r, client_w), return_exceptions=True
        )
        self._links -= {client_w, server_w}

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.transport.abort()
