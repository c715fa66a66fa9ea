"""Gateways on a real server: manifest, kill switches, budget, approval, redaction."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from shoal.agents import (
    Agent,
    AgentRuntime,
    ApprovalRequired,
    BudgetExhausted,
    CapabilityManifest,
    Killed,
    OfflineModelClient,
    PolicyDenied,
    TaskContext,
    ToolEnv,
    ToolFailed,
    ToolGrant,
    tool,
)
from shoal.agents.digest import arguments_digest
from shoal.agents.gateways import ModelGateway, ToolGateway, redact
from shoal.agents.killswitch import KillWatcher
from shoal.agents.policy import Policy
from shoal.agents.session import Emitter, Identity, Session
from shoal.bus import Bus, KillSwitch, kill_key
from shoal.schemas import (
    AgentStopped,
    ApprovalRequested,
    EventData,
    PolicyDecided,
    ToolCalled,
    new_id,
    utcnow,
)
from tests.agents.conftest import eventually, of_type, submit_task, wait_events

pytestmark = pytest.mark.timeout(30)

CALLS: list[str] = []


@tool("danger", side_effects=("deletes",))
async def danger(env: ToolEnv, target: str) -> str:
    CALLS.append(target)
    return "deleted"


@tool("lookup")
async def lookup(env: ToolEnv, user: str, token: str) -> str:
    return f"found {user}"


VAULT_TOKEN = "hvs.CAESIJ2-very-secret-token"


@tool("vault")
async def vault(env: ToolEnv, name: str) -> str:
    raise PermissionError(f"vault token {VAULT_TOKEN} expired reading {name}")


@tool("login")
async def login(env: ToolEnv, user: str, password: str) -> str:
    raise ValueError(f"user {user} rejected password {password}")


@dataclass
class Rig:
    """Gateways for one session, wired to the test's bus and a live kill watcher."""

    bus: Bus
    identity: Identity
    session: Session
    kills: KillWatcher
    model: ModelGateway
    tools: ToolGateway

    async def kill(self, key: str) -> None:
        kv = await self.bus.kv(self.bus.topology.kill.name)
        scope = key.partition(".")[0]
        switch = KillSwitch(scope=scope, name=key.partition(".")[2] or None, by="op", at=utcnow())
        await kv.put(key, switch.model_dump_json().encode())


@pytest.fixture
async def rig(bus: Bus, tmp_path: Path) -> AsyncIterator[Rig]:
    manifest = CapabilityManifest(
        models=("offline-small",),
        tools={
            "lookup": ToolGrant(sensitivity="internal", redact=("token",)),
            "send_email": ToolGrant(sensitivity="confidential"),
            "vault": ToolGrant(sensitivity="secret"),
            "vault_conf": ToolGrant(sensitivity="confidential"),
            "login": ToolGrant(sensitivity="internal", redact=("password",)),
            "login_plain": ToolGrant(sensitivity="internal"),
        },
        budget_usd=Decimal("0.00002"),
        requires_approval=("tool.send_email",),
    )
    identity = Identity("gw", "tester", new_id(), "1")
    kills = KillWatcher(bus)
    await kills.start()
    emitter = Emitter(bus, identity)
    policy = Policy(identity, manifest, kills, emitter)
    session = Session(iid=new_id(), gid=new_id(), principal="alice", budget_usd=manifest.budget_usd)
    env = ToolEnv(bus.settings, tmp_path)
    tools = {t.name: t for t in (danger, lookup, vault, login)}
    tools["vault_conf"], tools["login_plain"] = vault, login
    yield Rig(
        bus,
        identity,
        session,
        kills,
        ModelGateway(policy, emitter, [OfflineModelClient()], session),
        ToolGateway(policy, emitter, tools, env, session),
    )
    await kills.stop()


async def session_events(rig: Rig, n: int) -> list[EventData]:
    stored = await wait_events(
        rig.bus, rig.bus.subjects.session_events(rig.session.iid), lambda e: len(e) >= n
    )
    return [s.event.data for s in stored if s.event]


async def test_tool_not_in_manifest_is_denied_before_it_runs(rig: Rig) -> None:
    CALLS.clear()
    with pytest.raises(PolicyDenied) as raised:
        await rig.tools.call("danger", target="prod-db")
    assert CALLS == []
    assert (raised.value.rule, raised.value.target) == ("manifest.tool", "danger")
    [decided] = await session_events(rig, 1)
    assert decided == PolicyDecided(
        action="tool.call",
        target="danger",
        decision="deny",
        rule="manifest.tool",
        reason="tool 'danger' is not in the capability manifest of tester",
    )


async def test_tool_call_is_recorded_with_redacted_arguments(rig: Rig) -> None:
    assert await rig.tools.call("lookup", user="bob", token="s3cr3t") == "found bob"
    [called] = await session_events(rig, 1)
    assert isinstance(called, ToolCalled)
    assert (called.tool, called.result_class, called.sensitivity) == ("lookup", "ok", "internal")
    assert called.arguments == {"user": "bob", "token": "[redacted 6 chars]"}


def test_arguments_are_redacted_by_sensitivity() -> None:
    args = {"to": "ceo@example.com", "body": "quarterly numbers"}
    assert redact(args, ToolGrant(sensitivity="public")) == args
    assert redact(args, ToolGrant(sensitivity="confidential")) == {
        "to": "[redacted 15 chars]",
        "body": "[redacted 17 chars]",
    }
    assert redact(args, ToolGrant(sensitivity="secret")) == {"_redacted": ["body", "to"]}


async def test_action_needing_approval_is_not_run_and_asks_for_it(rig: Rig) -> None:
    with pytest.raises(ApprovalRequired):
        await rig.tools.call("send_email", to="x@example.com")
    decided, requested = await session_events(rig, 2)
    assert isinstance(decided, PolicyDecided)
    assert (decided.decision, decided.rule) == ("needs_approval", "manifest.approval")
    assert isinstance(requested, ApprovalRequested)
    assert (requested.action, requested.target) == ("tool.call", "send_email")


async def test_model_call_after_the_budget_is_spent_is_refused(rig: Rig) -> None:
    first = await rig.model.complete("Say hello to the operators of the platform." * 20)
    assert first.cost_usd is not None and first.cost_usd > rig.session.budget_usd  # type: ignore[operator]
    assert rig.session.spent_usd == first.cost_usd
    with pytest.raises(BudgetExhausted):
        await rig.model.complete("again")
    events = await session_events(rig, 2)
    assert [type(e).__name__ for e in events] == ["ModelCalled", "PolicyDecided"]
    assert isinstance(events[1], PolicyDecided) and events[1].rule == "budget.session"


async def test_model_not_in_manifest_is_refused(rig: Rig) -> None:
    with pytest.raises(PolicyDenied) as raised:
        await rig.model.complete("hi", model="offline-large")
    assert raised.value.rule == "manifest.model"


@pytest.mark.parametrize(
    ("scope", "name_of"),
    [
        ("instance", lambda r: r.identity.instance),
        ("session", lambda r: r.session.iid),
        ("goal", lambda r: r.session.gid),
        ("fleet", lambda r: r.identity.fleet),
        ("model", lambda r: "offline-small"),
        ("principal", lambda r: "alice"),
        ("all", lambda r: None),
    ],
)
async def test_kill_key_refuses_the_next_model_call(rig: Rig, scope: str, name_of: object) -> None:
    await rig.model.complete("first call goes through")
    key = kill_key(scope, name_of(rig))  # type: ignore[arg-type,operator]
    await rig.kill(key)
    await eventually(lambda: rig.kills.match([key]) is not None)
    with pytest.raises(Killed) as raised:
        await rig.model.complete("second call is refused")
    assert (raised.value.key, raised.value.rule) == (key, f"kill.{scope}")
    events = await session_events(rig, 2)
    assert isinstance(events[1], PolicyDecided)
    assert (events[1].action, events[1].decision, events[1].rule) == (
        "model.call",
        "deny",
        f"kill.{scope}",
    )
    kv = await rig.bus.kv(rig.bus.topology.kill.name)
    await kv.delete(key)  # lifted: calls go through again
    await eventually(lambda: rig.kills.match([key]) is None)
    await rig.model.complete("third call goes through")


async def test_kill_key_for_a_tool_refuses_only_that_tool(rig: Rig) -> None:
    await rig.kill(kill_key("tool", "lookup"))
    await eventually(lambda: rig.kills.match([kill_key("tool", "lookup")]) is not None)
    with pytest.raises(Killed):
        await rig.tools.call("lookup", user="bob", token="t")
    await rig.model.complete("models still work")


async def test_instance_kill_stops_the_running_instance(fbus: Bus) -> None:
    agent = Agent("victim", fleet="kills", manifest=CapabilityManifest(models=("offline-small",)))
    seen: list[str] = []

    @agent.handler("chat")
    async def chat(ctx: TaskContext, task: dict[str, str]) -> dict[str, str]:
        seen.append(ctx.iid)
        answer = await ctx.model.complete(task["text"])
        return {"answer": answer.text}

    runtime = AgentRuntime(fbus, agent, instance="victim1")
    async with runtime.running():
        kv = await fbus.kv(fbus.topology.kill.name)
        switch = KillSwitch(scope="instance", name="victim1", by="op", reason="test", at=utcnow())
        await kv.put(kill_key("instance", "victim1"), switch.model_dump_json().encode())
        await asyncio.wait_for(runtime.killed.wait(), 5)
        task = await submit_task(fbus, "kills", "chat", {"text": "hello"})
        await asyncio.sleep(0.3)
    assert seen == []  # paused: the killed instance took no new task
    assert runtime.stop_reason == "killed by op: test"
    stopped = await wait_events(
        fbus, fbus.subjects.session_events("victim1"), lambda e: len(of_type(e, "agent.stopped"))
    )
    [stop] = of_type(stopped, "agent.stopped")
    assert isinstance(stop.data, AgentStopped) and stop.data.reason == "killed by op: test"
    info = await fbus.js.consumer_info(fbus.topology.tasks.name, "kills_chat")
    assert info.num_pending == 1 and task.iid  # the task waits for a live instance


async def test_a_secret_tools_error_is_recorded_and_raised_without_its_text(rig: Rig) -> None:
    with pytest.raises(ToolFailed) as raised:
        await rig.tools.call("vault", name="db")
    failed = raised.value
    assert (str(failed), failed.error_type, failed.tool) == (
        "tool vault failed: PermissionError: [redacted]",
        "PermissionError",
        "vault",
    )
    assert failed.__cause__ is None and failed.__context__ is None
    [called] = await session_events(rig, 1)
    assert isinstance(called, ToolCalled)
    assert (called.result_class, called.error) == ("error", "PermissionError: [redacted]")


async def test_a_confidential_tools_error_keeps_only_its_length(rig: Rig) -> None:
    text = f"vault token {VAULT_TOKEN} expired reading db"
    with pytest.raises(ToolFailed) as raised:
        await rig.tools.call("vault_conf", name="db")
    assert (
        str(raised.value)
        == f"tool vault_conf failed: PermissionError: [redacted {len(text)} chars]"
    )
    [called] = await session_events(rig, 1)
    assert isinstance(called, ToolCalled)
    assert called.error == f"PermissionError: [redacted {len(text)} chars]"


async def test_an_internal_tools_error_loses_only_the_redacted_arguments(rig: Rig) -> None:
    with pytest.raises(ToolFailed) as raised:
        await rig.tools.call("login", user="bob", password="hunter2")
    assert str(raised.value) == (
        "tool login failed: ValueError: user bob rejected password [redacted password]"
    )
    with pytest.raises(ValueError, match="user bob rejected password hunter2"):
        await rig.tools.call("login_plain", user="bob", password="hunter2")  # nothing redacted
    first, second = await session_events(rig, 2)
    assert isinstance(first, ToolCalled) and isinstance(second, ToolCalled)
    assert first.error == "ValueError: user bob rejected password [redacted password]"
    assert second.error == "ValueError: user bob rejected password hunter2"


async def test_tool_called_carries_a_keyed_digest_of_the_real_arguments(rig: Rig) -> None:
    for user in ("bob", "bob", "eve"):
        await rig.tools.call("lookup", user=user, token="same-token")
    await rig.tools.call("lookup", user="bob", token="some-token")
    calls = [e for e in await session_events(rig, 4) if isinstance(e, ToolCalled)]
    digests = [c.arguments_digest for c in calls]
    assert calls[0].arguments == calls[3].arguments  # redaction hides the token...
    assert digests[0] == digests[1] and len(set(digests)) == 3  # ...the digest does not
    assert all(d is not None and len(d) == 32 for d in digests)
    other_key = ToolEnv(rig.bus.settings, rig.tools.env.workspace)
    assert (
        arguments_digest(
            other_key.digest_key, rig.session.iid, "lookup", {"user": "bob", "token": "same-token"}
        )
        != digests[0]
    )
    assert (
        arguments_digest(
            rig.tools.env.digest_key,
            rig.session.iid,
            "lookup",
            {"token": "same-token", "user": "bob"},
        )
        == digests[0]
    )
    assert (
        arguments_digest(
            rig.tools.env.digest_key, new_id(), "lookup", {"user": "bob", "token": "same-token"}
        )
        != digests[0]
    )  # another session: another key
