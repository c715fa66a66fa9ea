"""A2A agent cards: over NATS from the registry service, over HTTP from the console, and
read back by the A2A SDK's own card resolver."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from a2a.client.card_resolver import A2ACardResolver, parse_agent_card

from shoal.aggregates.definitions import RegistryApplication
from shoal.aggregates.registry_service import RegistryService, open_registry
from shoal.bus import ShoalSettings
from shoal.schemas.registry import parse_registration
from tests.console.conftest import Platform
from tests.console.test_access import sign_in

pytestmark = pytest.mark.timeout(120)

FILE = """
agents:
  - name: summarizer
    version: "1.0"
    purpose: Summarise documents for the docs team.
    owner: docs-team
    capabilities: [{name: summarize, description: One paragraph from a file.}]
  - name: planner
    version: "2"
    purpose: Plan goals.
    capabilities: [{name: goals}]
  - name: old
    version: "1"
tools:
  - {name: read_file, version: "1"}
"""


@pytest.fixture
async def registry(
    platform: Platform, settings: ShoalSettings
) -> AsyncIterator[RegistryApplication]:
    app = open_registry(settings)
    doc = parse_registration(FILE)
    for tool in doc.tools:
        app.register(tool, "alice")
    for agent in doc.agents:
        app.register(agent, "alice")
    app.transition("summarizer", "1.0", "certify", "carol", "evals passed")
    app.transition("old", "1", "retire", "carol", "unused")
    service = RegistryService(platform.bus, app)
    await service.start()
    yield app
    await service.stop()
    app.close()


async def test_the_a2a_card_resolver_reads_a_card_from_the_console(
    platform: Platform, registry: RegistryApplication
) -> None:
    token = await platform.token("ada", "viewer")
    async with httpx.AsyncClient(timeout=10) as http:
        resolver = A2ACardResolver(http, f"{platform.url}/agents/summarizer")
        card = await resolver.get_agent_card(
            http_kwargs={"headers": {"Authorization": f"Bearer {token}"}}
        )
        assert (card.name, card.version, card.description) == (
            "summarizer",
            "1.0",
            "Summarise documents for the docs team.",
        )
        assert (card.provider.organization, card.provider.url) == ("docs-team", platform.url)
        assert [(s.id, s.description) for s in card.skills] == [
            ("summarize", "One paragraph from a file.")
        ]

        listed = await http.get(
            f"{platform.url}/.well-known/agent-cards.json",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert listed.status_code == 200
        cards = [parse_agent_card(c) for c in listed.json()["cards"]]
        assert [(c.name, c.version) for c in cards] == [("planner", "2"), ("summarizer", "1.0")]


async def test_cards_need_a_signed_in_caller_and_an_unknown_agent_is_404(
    platform: Platform, registry: RegistryApplication
) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        url = f"{platform.url}/agents/summarizer/.well-known/agent-card.json"
        anonymous = await http.get(url)
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"] == 'Bearer realm="shoal"'
        wrong = await http.get(url, headers={"Authorization": "Bearer not-a-token"})
        assert wrong.status_code == 401
        token = await platform.token("ada", "viewer")
        missing = await http.get(
            f"{platform.url}/agents/nobody/.well-known/agent-card.json",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert (missing.status_code, missing.json()) == (
            404,
            {"error": "no agent named 'nobody' in the registry"},
        )


async def test_the_registry_service_answers_over_nats(
    platform: Platform, registry: RegistryApplication
) -> None:
    bus = platform.bus
    msg = await bus.nc.request(
        bus.subjects.api("registry", "card"), b'{"name": "planner"}', timeout=10
    )
    card = parse_agent_card(json.loads(msg.data))
    assert (card.name, card.version, [s.id for s in card.skills]) == ("planner", "2", ["goals"])
    msg = await bus.nc.request(
        bus.subjects.api("registry", "ls"), b'{"state": "certified"}', timeout=10
    )
    assert [(r["name"], r["version"], r["by"]) for r in json.loads(msg.data)["rows"]] == [
        ("summarizer", "1.0", "carol")
    ]
    msg = await bus.nc.request(bus.subjects.api("registry", "ls"), b'{"colour": 1}', timeout=10)
    assert (msg.headers or {}).get("Nats-Service-Error-Code") == "400"


async def test_the_registry_page_lists_versions_with_their_state_and_card_links(
    platform: Platform, registry: RegistryApplication
) -> None:
    token = await platform.token("ada", "viewer")
    async with httpx.AsyncClient(base_url=platform.url, timeout=10) as http:
        assert (await http.get("/registry")).status_code == 303  # sign in first
        signed = await sign_in(http, token)
        assert signed.status_code == 303
        page = await http.get("/registry", params={"state": "certified"})
        assert page.status_code == 200
        rows = re.findall(r'<tr data-name="([^"]+)" data-version="([^"]+)">', page.text)
        assert rows == [("summarizer", "1.0")]
        assert 'href="/agents/summarizer/.well-known/agent-card.json?version=1.0"' in page.text
        every = await http.get("/registry")
        rows = re.findall(r'<tr data-name="([^"]+)" data-version="([^"]+)">', every.text)
        assert rows == [("old", "1"), ("planner", "2"), ("summarizer", "1.0"), ("read_file", "1")]
        # Signed in, the card needs no bearer token.
        card = await http.get("/agents/planner/.well-known/agent-card.json")
        assert (card.status_code, card.json()["version"]) == (200, "2")
