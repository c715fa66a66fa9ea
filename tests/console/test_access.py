"""Sign-in over plain HTTP against the served console: tokens stored hashed, cookie flags,
CSRF on every state change, a revoked token ending its sign-ins on the next request."""

from __future__ import annotations

import hashlib
import re

import httpx
import pytest

from shoal.console import KVTokenStore, control
from shoal.schemas import ControlAccepted
from tests.console.conftest import Platform, served

pytestmark = pytest.mark.timeout(60)


async def sign_in(http: httpx.AsyncClient, token: str, **headers: str) -> httpx.Response:
    page = await http.get("/login", headers=headers)
    login_csrf = re.search(r'name="login_csrf" value="([^"]+)"', page.text)
    assert login_csrf is not None
    # Sent by hand: a client keeps a Secure cookie from plain http (the proxied case) to itself.
    cookie = f"shoal_console_login={page.cookies['shoal_console_login']}"
    return await http.post(
        "/login",
        data={"login_csrf": login_csrf.group(1), "token": token, "next": "/kills"},
        headers={**headers, "Cookie": cookie},
    )


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


async def test_token_is_stored_only_as_its_hash(platform: Platform) -> None:
    token = await platform.token("alice", "admin")
    kv = await platform.bus.kv(KVTokenStore.for_bus(platform.bus).spec.name)
    keys = await kv.keys()
    assert keys == [hashlib.sha256(token.encode()).hexdigest()]
    value = (await kv.get(keys[0])).value or b""
    assert token.encode() not in value and b'"role":"admin"' in value


async def test_sign_in_cookie_is_httponly_strict_and_secure_over_https(platform: Platform) -> None:
    token = await platform.token("alice", "operator")
    async with httpx.AsyncClient(base_url=platform.url) as http:
        plain = await sign_in(http, token)
    async with httpx.AsyncClient(base_url=platform.url) as http:
        proxied = await sign_in(http, token, **{"X-Forwarded-Proto": "https"})
    assert (plain.status_code, plain.headers["location"]) == (303, "/kills")
    cookie = plain.headers["set-cookie"]
    assert cookie.startswith("shoal_console=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie
    assert "Secure" in proxied.headers["set-cookie"]
    assert plain.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in plain.headers["content-security-policy"]


async def test_wrong_token_is_refused_without_a_cookie(platform: Platform) -> None:
    await platform.token("alice", "operator")
    async with httpx.AsyncClient(base_url=platform.url) as http:
        answer = await sign_in(http, "shoal_not-a-token")
        page = await http.get("/kills")
    assert answer.status_code == 401 and "that token is not valid" in answer.text
    assert "shoal_console=" not in answer.headers.get("set-cookie", "")
    assert (page.status_code, page.headers["location"]) == (303, "/login?next=/kills")


async def test_operator_post_without_the_csrf_token_is_refused(platform: Platform) -> None:
    token = await platform.token("alice", "operator")
    async with httpx.AsyncClient(base_url=platform.url) as http:
        await sign_in(http, token)
        page = await http.get("/kills")
        form = {"scope": "tool", "name": "read_file", "reason": "r", "confirmed": "yes"}
        forged = await http.post("/kills", data=form)
        wrong = await http.post("/kills", data={**form, "csrf": "not-it"})
        real = await http.post("/kills", data={**form, "csrf": csrf_of(page.text)})
    assert (forged.status_code, wrong.status_code) == (403, 403)
    assert (real.status_code, real.headers["location"]) == (
        303,
        "/kills?done=kill+switch+tool.read_file+set",
    )
    kv = await platform.bus.kv(platform.bus.topology.kill.name)
    assert await kv.keys() == ["tool.read_file"]


async def test_a_kill_is_confirmed_before_it_is_set(platform: Platform) -> None:
    token = await platform.token("alice", "operator")
    async with httpx.AsyncClient(base_url=platform.url) as http:
        await sign_in(http, token)
        csrf = csrf_of((await http.get("/kills")).text)
        form = {"scope": "fleet", "name": "demo", "reason": "incident 7", "csrf": csrf}
        confirm = await http.post("/kills", data=form)
    assert confirm.status_code == 200
    assert (
        "Kill fleet demo?" in confirm.text
        and "Recorded as alice, reason: incident 7." in confirm.text
    )
    kv = await platform.bus.kv(platform.bus.topology.kill.name)
    with pytest.raises(Exception, match="no keys found"):
        await kv.keys()


async def test_revoked_token_ends_its_sign_in_at_the_next_request(platform: Platform) -> None:
    token = await platform.token("alice", "operator")
    async with httpx.AsyncClient(base_url=platform.url) as http:
        await sign_in(http, token)
        before = await http.get("/kills")
        assert await KVTokenStore.for_bus(platform.bus).revoke_principal("alice") == 1
        after = await http.get("/kills")
    assert before.status_code == 200
    assert (after.status_code, after.headers["location"]) == (303, "/login?next=/kills")


async def test_sign_out_needs_the_csrf_token_and_ends_the_sign_in(platform: Platform) -> None:
    token = await platform.token("vera", "viewer")
    async with httpx.AsyncClient(base_url=platform.url) as http:
        await sign_in(http, token)
        page = await http.get("/kills")
        forged = await http.post("/logout")
        out = await http.post("/logout", data={"csrf": csrf_of(page.text)})
        after = await http.get("/kills")
    assert forged.status_code == 403
    assert (out.status_code, out.headers["location"]) == (303, "/login")
    assert after.status_code == 303


async def test_a_kill_without_a_name_is_refused_naming_the_field(platform: Platform) -> None:
    token = await platform.token("alice", "operator")
    async with httpx.AsyncClient(base_url=platform.url) as http:
        await sign_in(http, token)
        csrf = csrf_of((await http.get("/kills")).text)
        form = {"scope": "session", "name": " ", "reason": "r", "csrf": csrf, "confirmed": "yes"}
        answer = await http.post("/kills", data=form)
        page = await http.get(answer.headers["location"])
    assert answer.status_code == 303
    assert "name the session to kill (or choose the scope all)" in page.text
    kv = await platform.bus.kv(platform.bus.topology.kill.name)
    with pytest.raises(Exception, match="no keys found"):
        await kv.keys()


async def test_a_sign_in_made_on_one_replica_works_on_another(platform: Platform) -> None:
    async with served(platform.bus) as second:
        token = await platform.token("alice", "operator")
        async with httpx.AsyncClient(base_url=platform.url) as http:
            await sign_in(http, token)
            cookie = http.cookies["shoal_console"]
            csrf = csrf_of((await http.get("/kills")).text)
        async with httpx.AsyncClient(base_url=second, cookies={"shoal_console": cookie}) as http:
            page = await http.get("/kills")
            form = {"scope": "tool", "name": "fetch_url", "reason": "r", "confirmed": "yes"}
            acted = await http.post("/kills", data={**form, "csrf": csrf})
    assert second != platform.url
    assert page.status_code == 200 and 'data-role="operator"' in page.text
    assert acted.status_code == 303
    kv = await platform.bus.kv(platform.bus.topology.kill.name)
    assert await kv.keys() == ["tool.fetch_url"]


async def test_a_lift_from_the_page_deletes_the_key_and_is_audited_as_the_principal(
    platform: Platform,
) -> None:
    bus = platform.bus
    await control.kill(bus, "model", "gpt-4o", by="oncall", reason="runaway spend")
    token = await platform.token("alice", "operator")
    async with httpx.AsyncClient(base_url=platform.url) as http:
        await sign_in(http, token)
        page = await http.get("/kills")
        form = {"scope": "model", "name": "gpt-4o", "reason": "fixed", "csrf": csrf_of(page.text)}
        confirm = await http.post("/kills/lift", data=form)
        lifted = await http.post("/kills/lift", data={**form, "confirmed": "yes"})
    assert 'data-key="model.gpt-4o"' in page.text and "runaway spend" in page.text
    assert "Lift the kill on model gpt-4o?" in confirm.text
    assert lifted.headers["location"] == "/kills?done=kill+switch+on+model+gpt-4o+lifted"
    kv = await bus.kv(bus.topology.kill.name)
    with pytest.raises(Exception, match="no keys found"):
        await kv.keys()
    stored = await bus.read(bus.subjects.all_control, stream=bus.topology.control.name)
    audit = [s.event.data for s in stored if s.event and isinstance(s.event.data, ControlAccepted)]
    assert [(a.command, a.by, a.reason) for a in audit] == [
        ("kill.model", "oncall", "runaway spend"),
        ("unkill.model", "alice", "fixed"),
    ]
