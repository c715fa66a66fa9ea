"""The interactions endpoints with authentication on: a viewer sees pending approvals but
cannot decide them, message a session or answer its question. Those endpoints act for the
principal the request names, so only holders of the whole account (admins, the console) may
call them: an operator acts through the CLI, as itself."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from shoal.aggregates.interactions import InteractionsService
from shoal.bus import Bus, ShoalSettings
from shoal.ops.connect import open_bus
from shoal.policy import Approvals
from tests.auth.test_operators import add, shoal
from tests.auth.test_principals import _url, denied, raw
from tests.policy.test_approvals import SOURCE, email_request

pytestmark = pytest.mark.timeout(90)


@asynccontextmanager
async def interactions(local: ShoalSettings) -> AsyncIterator[tuple[Bus, Approvals]]:
    """The endpoints served on an admin connection, and the approvals bucket."""
    async with open_bus(local) as bus:
        service = InteractionsService(bus)
        await service.start()
        try:
            yield bus, await Approvals.open(bus)
        finally:
            await service.stop()


async def test_a_viewer_cannot_grant_or_talk_and_an_operator_grants_only_as_itself(
    local: ShoalSettings,
) -> None:
    async with interactions(local) as (bus, approvals):
        state = await approvals.request(email_request("s1", "cfo@example.com"), source=SOURCE)
        vera = await add(local, "vera", "viewer")
        viewer = await raw(_url(local), vera)
        operator = await raw(_url(local), await add(local, "otto", "operator"))
        api = bus.subjects.api
        decide = {"approval": state.id, "grant": True, "by": "olga", "reason": "mine"}
        talk = {"iid": "s1", "text": "hi", "by": "olga"}

        assert await viewer.refused(api("interactions", "decide"), json.dumps(decide).encode())
        assert viewer.errors[-1] == denied(api("interactions", "decide"))
        for endpoint in ("send", "reply"):
            await viewer.refused(api("interactions", endpoint), json.dumps(talk).encode())
            assert viewer.errors[-1] == denied(api("interactions", endpoint))
        pending = await viewer.nc.request(api("interactions", "pending"), b"{}", timeout=5)
        assert [a["id"] for a in json.loads(pending.data)["approvals"]] == [state.id]
        assert (await approvals.get(state.id)).state == "pending"
        for command in ("send", "reply"):
            code, out, err = await shoal(local, "session", command, "s1", "hi", creds=vera)
            assert (code, out, err.strip()) == (
                2,
                "",
                f"error: session.{command} requires role operator; vera has role viewer",
            )

        assert await operator.refused(api("interactions", "decide"), json.dumps(decide).encode())
        assert operator.errors[-1] == denied(api("interactions", "decide"))
        assert (await approvals.get(state.id)).state == "pending"
        otto = await add(local, "otto2", "operator")
        code, out, err = await shoal(
            local, "approvals", "grant", state.id, "--reason", "mine", creds=otto
        )
        assert (code, out.strip()) == (0, f"{state.id} granted by otto2"), err
        assert (await approvals.get(state.id)).decided_by == "otto2"
        await viewer.nc.close()
        await operator.nc.close()


async def test_an_approval_whose_rule_names_admin_is_granted_by_an_admin_only(
    local: ShoalSettings,
) -> None:
    async with interactions(local) as (bus, approvals):
        asked = email_request("s2", "all@example.com").model_copy(update={"approver_role": "admin"})
        state = await approvals.request(asked, source=SOURCE)
        odile = await add(local, "odile", "operator")
        operator = await raw(_url(local), odile)
        decide = {"approval": state.id, "grant": True, "by": "odile", "reason": "mine"}
        subject = bus.subjects.api("interactions", "decide")
        assert await operator.refused(subject, json.dumps(decide).encode())
        assert operator.errors[-1] == denied(subject)
        await operator.nc.close()
        code, out, err = await shoal(local, "approvals", "grant", state.id, creds=odile)
        assert (code, out, err.strip()) == (
            2,
            "",
            "error: approvals.grant requires role admin; odile has role operator",
        )
        assert (await approvals.get(state.id)).state == "pending"

        code, out, err = await shoal(local, "approvals", "grant", state.id, "--reason", "ok")
        assert (code, out.strip()) == (0, f"{state.id} granted by root"), err
