"""Sign-in with operator credentials on the embedded server with JWT auth on (as ``shoal up``
runs it): the server verifies them, the role is the one ``shoal auth add`` gave, actions are
recorded as that principal, a revocation ends the sign-in, and forged or foreign credentials
sign no one in."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from shoal.auth import KeyStore, local_creds
from shoal.auth.jwt import creds_file, new_key, sign, user_claims
from shoal.bus import ShoalSettings
from shoal.ops.auth import add_operator, revoke
from shoal.ops.connect import open_bus
from shoal.schemas import ControlAccepted
from tests.auth.conftest import local, secured, secured_dir  # noqa: F401 (fixtures)
from tests.console.conftest import Platform, served
from tests.console.test_access import csrf_of

pytestmark = pytest.mark.timeout(90)


@dataclass
class Secured:
    url: str
    settings: ShoalSettings


@pytest.fixture
async def console(local: ShoalSettings) -> AsyncIterator[Secured]:  # noqa: F811
    """The console with its own service credentials, as ``shoal up`` starts it."""
    as_console = local.model_copy(update={"creds": local_creds(local, "console")})
    async with open_bus(as_console, start=False, name="shoal-console") as bus, served(bus) as url:
        yield Secured(url, local)


async def sign_in_with(http: httpx.AsyncClient, creds: str) -> httpx.Response:
    page = await http.get("/login")
    found = re.search(r'name="login_csrf" value="([^"]+)"', page.text)
    assert found is not None
    return await http.post(
        "/login", data={"login_csrf": found.group(1), "creds": creds, "next": "/kills"}
    )


def operator(settings: ShoalSettings, name: str, role: str) -> str:
    cred = add_operator(settings, name, role, None)  # type: ignore[arg-type]
    return Path(cred.path).read_text()


async def test_operator_credentials_sign_in_with_their_role_and_act_as_their_principal(
    console: Secured,
) -> None:
    creds = operator(console.settings, "otto", "operator")
    async with httpx.AsyncClient(base_url=console.url) as http:
        answer = await sign_in_with(http, creds)
        page = await http.get("/kills")
        form = {"scope": "tool", "name": "fetch_url", "reason": "incident 9", "confirmed": "yes"}
        acted = await http.post("/kills", data={**form, "csrf": csrf_of(page.text)})
    assert (answer.status_code, answer.headers["location"]) == (303, "/kills")
    assert 'data-role="operator"' in page.text and '<span title="signed in">otto</span>' in (
        page.text
    )
    assert acted.headers["location"] == "/kills?done=kill+switch+tool.fetch_url+set"
    assert creds.split("SEED-----\n")[1].split("\n")[0] not in answer.headers["set-cookie"]
    async with open_bus(console.settings, start=False) as bus:
        kv = await bus.kv(bus.topology.kill.name)
        switch = (await kv.get("tool.fetch_url")).value or b""
        stored = await bus.read(bus.subjects.all_control, stream=bus.topology.control.name)
    audit = [s.event.data for s in stored if s.event and isinstance(s.event.data, ControlAccepted)]
    assert [(a.command, a.target, a.by, a.reason) for a in audit] == [
        ("kill.tool", "fetch_url", "otto", "incident 9")
    ]
    assert b'"by":"otto"' in switch


async def test_viewer_credentials_see_and_their_forged_post_is_refused(console: Secured) -> None:
    creds = operator(console.settings, "vic", "viewer")
    async with httpx.AsyncClient(base_url=console.url) as http:
        await sign_in_with(http, creds)
        page = await http.get("/kills")
        form = {"scope": "all", "reason": "forged", "confirmed": "yes", "csrf": csrf_of(page.text)}
        forged = await http.post("/kills", data=form)
    assert 'data-role="viewer"' in page.text and 'id="kill-form"' not in page.text
    assert forged.status_code == 403 and "vic is a viewer" in forged.text


async def test_revoked_credentials_end_the_sign_in_at_the_next_request(console: Secured) -> None:
    creds = operator(console.settings, "rita", "operator")
    async with httpx.AsyncClient(base_url=console.url) as http:
        await sign_in_with(http, creds)
        before = await http.get("/kills")
        await revoke(console.settings, "rita")
        after = await http.get("/kills")
        again = await sign_in_with(http, creds)
    assert before.status_code == 200
    assert (after.status_code, after.headers["location"]) == (303, "/login?next=/kills")
    assert again.status_code == 401 and "those credentials are not valid" in again.text


async def test_self_signed_or_foreign_credentials_sign_no_one_in(console: Secured) -> None:
    store = KeyStore.for_data_dir(console.settings.data_dir)
    # An admin's tags, signed by a key of the attacker's own (not the account's signer).
    user, rogue = new_key("user"), new_key("account")
    claims = user_claims(
        user.public,
        "mallory",
        account=store.account_public("SHOAL"),
        permissions=None,
        tags=("role:admin", "principal:mallory"),
    )
    forged = creds_file(sign(claims, rogue), user.seed)
    # A service's own credentials carry no role: not a way into the console either.
    service = (store.home / "creds" / "core.creds").read_text()
    async with httpx.AsyncClient(base_url=console.url) as http:
        answers = [
            await sign_in_with(http, text)
            for text in (forged, service, "-----BEGIN NATS USER JWT-----\nnot.a.jwt\n")
        ]
        page = await http.get("/kills")
    assert [a.status_code for a in answers] == [401, 401, 401]
    assert all("those credentials are not valid" in a.text for a in answers)
    assert "shoal_console=" not in "".join(a.headers.get("set-cookie", "") for a in answers)
    assert page.status_code == 303


async def test_on_a_server_without_jwt_auth_no_credentials_sign_in(platform: Platform) -> None:
    # The server accepts any connection there, so a connection proves nothing: the console
    # must not take the tags of a JWT anyone can write.
    user, rogue = new_key("user"), new_key("account")
    claims = user_claims(
        user.public,
        "mallory",
        account=rogue.public,
        permissions=None,
        tags=("role:admin", "principal:mallory"),
    )
    async with httpx.AsyncClient(base_url=platform.url) as http:
        answer = await sign_in_with(http, creds_file(sign(claims, rogue), user.seed))
    assert answer.status_code == 401 and "those credentials are not valid" in answer.text
