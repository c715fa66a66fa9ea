"""Calls to the upstream providers over one pooled aiohttp client, with fallback.

:meth:`Upstreams.open` tries a route's targets in order and returns the first answer that is
not a server failure: a 5xx, a refused connection or a timeout moves on to the next target;
a 4xx is the caller's problem and is returned as it is (the next provider would say the same).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp

from shoal.gateway.config import GatewayConfig, Target
from shoal.gateway.errors import GatewayError

__all__ = ["Answer", "Upstreams"]

log = logging.getLogger(__name__)


@dataclass
class Answer:
    """An open upstream response and the target that gave it (the caller must release it)."""

    target: Target
    response: aiohttp.ClientResponse
    fallbacks: int


class Upstreams:
    """One HTTP connection pool for every provider in the gateway file."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
        self._http = aiohttp.ClientSession(
            connector=connector, json_serialize=json.dumps, auto_decompress=True
        )

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def open(self, targets: list[Target], body: dict[str, Any]) -> Answer:
        """The first non-5xx answer of ``targets`` for ``body`` (its model set per target)."""
        assert self._http is not None, "Upstreams.start() first"
        failures: list[str] = []
        timed_out = False
        for n, target in enumerate(targets):
            provider = self.config.providers[target.provider]
            headers = {"Content-Type": "application/json"}
            api_key = provider.api_key()
            if api_key:
                headers["Authorization"] = f"Bearer {api_key}"
            payload = json.dumps({**body, "model": target.model}).encode()
            timeout = aiohttp.ClientTimeout(
                total=None if body.get("stream") else provider.timeout_s,
                sock_connect=min(provider.timeout_s, 10.0),
                sock_read=provider.timeout_s,
            )
            url = provider.base_url.rstrip("/") + "/chat/completions"
            try:
                response = await self._http.post(
                    url, data=payload, headers=headers, timeout=timeout
                )
            except TimeoutError:
                timed_out = True
                failures.append(f"{target.name}: no answer within {provider.timeout_s:g}s")
                continue
            except aiohttp.ClientError as e:
                failures.append(f"{target.name}: {type(e).__name__}: {e}")
                continue
            if response.status >= 500:
                text = (await response.text())[:200]
                response.release()
                failures.append(f"{target.name}: HTTP {response.status}: {text}")
                continue
            if failures:
                log.info("fell back to %s after: %s", target.name, "; ".join(failures))
            return Answer(target, response, n)
        raise GatewayError.upstream(
            "every upstream failed: " + "; ".join(failures),
            timeout=timed_out and len(failures) == 1,
        )
