"""The canary controller: the core's verdict on a canary becomes a fleet command.

``fleet upgrade --canary`` leaves the Fleet aggregate with a canary in progress: a few slots
run the new version, the rest hold the old one (docs/canary.md). The core counts both
cohorts' outcomes and, once it can tell, records ``evaluation.passed`` or
``evaluation.regressed``. This controller runs inside the core process and, before that
batch is written, turns the verdict into ``promote`` (every slot to the new version) or
``abort_canary`` (the canary slots back to the old one), recorded in ``fleet history`` by
``core`` with the figures. It survives the CLI exiting: nothing waits on the operator.

A verdict can come twice (a crash between the command and the batch's write): the Fleet
aggregate then has no canary of that version any more and refuses; the controller takes
that as done and re-writes the aggregate's desired state, in case the first attempt died
between saving the aggregate and writing the bucket.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from shoal.aggregates.cohorts import Verdict
from shoal.aggregates.effects import VerdictHandler
from shoal.aggregates.fleet import FleetApplication
from shoal.bus import Bus
from shoal.errors import NotFound, Refused
from shoal.ops.fleets import fleet_command, open_fleet_app, write_desired

__all__ = ["CORE_PRINCIPAL", "CanaryController", "canary_controller", "describe_verdict"]

log = logging.getLogger("shoal.canary")

CORE_PRINCIPAL = "core"
"""Who the fleet history shows for the core's promotions and roll-backs."""


def _pct(rate: Any) -> str:
    return "-" if rate is None else f"{rate:.0%}"


def describe_verdict(v: Verdict) -> str:
    """One line with the figures: versions, successes / sessions, rates, p."""
    e = v.evidence
    p = "n/a" if e["p_value"] is None else f"{e['p_value']:.2g}"
    return (
        f"{e['to_version']} {e['successes_b']}/{e['n_b']} ({_pct(e['rate_b'])}) against "
        f"{e['from_version']} {e['successes_a']}/{e['n_a']} ({_pct(e['rate_a'])}), p={p}"
    )


class CanaryController:
    """Promotes a canary that passed, rolls back one that regressed."""

    def __init__(self, bus: Bus, fleets: FleetApplication) -> None:
        self.bus = bus
        self.fleets = fleets

    async def __call__(self, verdicts: list[Verdict]) -> None:
        for v in verdicts:
            if v.evidence.get("canary"):
                await self.act(v)

    async def act(self, v: Verdict) -> None:
        """Run the verdict's command; a refusal means it was run already."""
        if v.verdict == "passed":
            verb, reason = "promote", f"canary not worse: {describe_verdict(v)}"
        else:
            verb, reason = "abort_canary", f"canary regressed: {describe_verdict(v)}"
        version = v.evidence["to_version"]
        try:
            await fleet_command(
                self.bus,
                self.fleets,
                v.fleet,
                verb,
                by=CORE_PRINCIPAL,
                reason=reason,
                agent=v.agent,
                version=version,
                evidence=v.evidence,
            )
        except (Refused, NotFound) as e:
            log.info("canary %s/%s %s: already settled (%s)", v.fleet, v.agent, version, e)
            try:
                fleet = await asyncio.to_thread(self.fleets.get_fleet, v.fleet)
            except NotFound:
                return  # the fleet is gone: nothing to hold or roll back
            await write_desired(self.bus, fleet.desired())
            return
        log.warning("canary %s/%s %s: %s", v.fleet, v.agent, version, reason)


def canary_controller(bus: Bus) -> VerdictHandler:
    """The controller on this machine's fleets store (what ``shoal core`` runs)."""
    return CanaryController(bus, open_fleet_app(bus.settings))
