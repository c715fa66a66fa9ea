"""``fleet upgrade --canary``: follow the canary slots until they run the new version.

The rest of the rollout is the core's business (:mod:`shoal.ops.canary`): the CLI returns
once the canary runs, saying how it will be judged; ``fleet history`` shows the verdict.
"""

from __future__ import annotations

import asyncio
import time

from shoal.bus import Bus
from shoal.ops.fleets import RolloutResult, describe_agent

__all__ = ["wait_canary"]


async def wait_canary(
    bus: Bus,
    name: str,
    agent: str,
    version: str,
    slots: int,
    *,
    timeout: float,
    poll_s: float = 0.5,
) -> RolloutResult:
    """Wait until ``slots`` instances of ``agent`` run ``version`` (or one fails to start)."""
    deadline = time.monotonic() + timeout
    while True:
        view, a = await describe_agent(bus, name, agent)
        if a.canary is None or a.canary.version != version:
            settled = f"the canary of {version} is settled already: 'shoal fleet history {name}'"
            return RolloutResult(a.version == version, settled, view)
        s = a.failing(version)
        if s is not None:
            return RolloutResult(
                False,
                f"canary stopped: slot {s.slot} on {s.host} ({s.state}) at version {version}: "
                f"{s.message or 'no heartbeat'} — 'shoal fleet rollback {name} {agent}' ends it",
                view,
            )
        if a.versions.get(version, 0) >= slots:
            return RolloutResult(
                True,
                f"canary: {slots} of {a.desired} instance(s) of {agent} run {version}; the core "
                f"promotes it when {a.canary.min_samples} sessions of each version show it is "
                f"not worse, or rolls it back (shoal fleet history {name})",
                view,
            )
        if time.monotonic() > deadline:
            return RolloutResult(
                False, f"canary not running after {timeout:.0f}s: {a.versions}", view
            )
        await asyncio.sleep(poll_s)
