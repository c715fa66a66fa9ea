"""The CLI's role check: refuse early in one line naming the missing role, and audit it."""

from __future__ import annotations

import asyncio
import logging

import nats

from shoal.auth.permissions import Role
from shoal.auth.roles import caller_of, missing_role
from shoal.errors import ShoalError
from shoal.ops.cli._common import Cli, fail
from shoal.ops.connect import open_bus
from shoal.ops.fleets import control_event
from shoal.schemas import ControlRefused

__all__ = ["require_role"]

log = logging.getLogger("shoal.cli")


def require_role(c: Cli, need: Role, command: str, target: str = "") -> None:
    """Return if the caller may run ``command``; else record ``control.refused`` (with the
    caller) on the control stream and exit 2 with one line."""
    caller = caller_of(c.settings)
    reason = missing_role(caller, need, command)
    if reason is None or caller is None:
        return
    data = ControlRefused(command=command, target=target, by=caller.principal, reason=reason)
    event = control_event(data, by=caller.principal)
    scope = command.split(".", 1)[0]

    async def _record() -> None:
        async with open_bus(c.settings, start=False, provision=False, name="shoal-refusal") as bus:
            subject = bus.subjects.control(scope, "refused", f"cli.{caller.principal}")
            await bus.publish(event, subject)

    try:
        asyncio.run(_record())
    except (ShoalError, OSError, TimeoutError, nats.errors.Error) as e:
        # The refusal itself is what the user must see; the audit gap goes to the log.
        log.warning("could not record the refused %s on the control stream: %s", command, e)
    raise fail(c, reason, 2, "unauthorized")
