"""The gateways: the network choke points every agent's model and tool calls pass through.

``shoal gateway`` serves an OpenAI-compatible model gateway (:mod:`shoal.gateway.model`) and
a Streamable HTTP MCP gateway (:mod:`shoal.gateway.mcp`), checking kill switches, the key's
manifest, rate limits and budget reservations before a call and recording it after.
Dependency order: ``schemas`` ← ``bus`` ← (``aggregates``, ``agents``) ← ``gateway``.
"""

from shoal.gateway.config import GatewayConfig
from shoal.gateway.keys import KeyStore, VirtualKey
from shoal.gateway.service import RunningGateway, run_gateway

__all__ = ["GatewayConfig", "KeyStore", "RunningGateway", "VirtualKey", "run_gateway"]
