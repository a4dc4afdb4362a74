"""The database down: `/health` says which dependency without leaking where it is, and every
route answers 503 with Retry-After (the CRMs and client systems retry), never 500."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path
from typing import AsyncIterator

import httpx
import pytest
import yaml

from config import Settings
from connectors.base import attach_connectors
from core.clock import ManualClock
from core.runtime import build_runtime
from tests.harness import BASE_CONFIG, JANE, make_config
from webhooks.app import create_app

HUBSPOT_SECRET = "5b1d3c7e-hubspot-client-secret-for-tests"
EVENTS_SECRET = "salesforce-events-secret-for-the-tests-0123"
ORG = "00D5g000004ABCDEAA"
CONFIG = BASE_CONFIG + yaml.safe_dump({"crm": {
    "hubspot": {"client_secret": HUBSPOT_SECRET},
    "salesforce": {"instance_url": "https://example.my.salesforce.com", "organization_id": ORG,
                   "npi_fields": {"Contact": "NPI__c"}, "events_secret": EVENTS_SECRET},
}}, sort_keys=False)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, int]]:
    dead = socket.socket()  # bound, never listening, held for the test: connections to it are refused
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    settings = Settings(
        database_url=f"postgresql://postgres@127.0.0.1:{port}/trigger_email", redis_url=redis_url,
        smtp_url="smtp://127.0.0.1:1", secret_key="s" * 40,
    )
    rt = await build_runtime(settings, config=make_config(CONFIG), clock=ManualClock())
    attach_connectors(rt)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(rt)), base_url=rt.config.public_url) as c:
        yield c, port
    await rt.aclose()
    dead.close()


def assert_unavailable(response: httpx.Response, port: int) -> None:
    assert response.status_code == 503, (response.status_code, response.text)
    assert int(response.headers["retry-after"]) > 0
    for leak in ("127.0.0.1", str(port), "Error", "refused", "postgres"):
        assert leak not in response.text, leak


async def test_health_names_the_dependency_not_its_host(client: tuple[httpx.AsyncClient, int]) -> None:
    c, port = client
    response = await c.get("/health")
    assert_unavailable(response, port)
    assert response.json() == {"status": "degraded", "database": "unavailable", "redis": "ok"}


async def test_api_routes_answer_503_with_a_json_reason(client: tuple[httpx.AsyncClient, int]) -> None:
    c, port = client
    auth = {"Authorization": "Bearer te_some-key"}
    for method, url, body in (
        ("POST", "/v1/triggers", {"npi": JANE, "campaign_id": "asthma-launch"}), ("GET", "/v1/triggers/trg_1", None),
        ("GET", "/v1/campaigns", None), ("GET", "/v1/suppressions", None), ("POST", "/v1/outbox/retry", None),
    ):
        response = await c.request(method, url, json=body, headers=auth)
        assert_unavailable(response, port)
        assert response.json()["error"]


async def test_webhooks_answer_503_so_the_crm_retries(client: tuple[httpx.AsyncClient, int]) -> None:
    c, port = client
    body = b'[{"eventId": 1, "subscriptionId": 2, "portalId": 3, "occurredAt": 1700000000000, "objectId": 501,' \
           b' "subscriptionType": "contact.creation", "attemptNumber": 0}]'
    signature = hashlib.sha256(HUBSPOT_SECRET.encode() + body).hexdigest()
    hubspot = await c.post("/webhooks/hubspot", content=body, headers={
        "Content-Type": "application/json", "X-HubSpot-Signature": signature, "X-HubSpot-Signature-Version": "v1"})
    assert_unavailable(hubspot, port)
    assert hubspot.json()["error"]

    events = await c.post("/webhooks/salesforce/events", json={"object": "Contact", "id": "0035g00000ABCDEAAA",
                                                               "event": "record_change", "fields": {"NPI__c": JANE}},
                          headers={"Authorization": f"Bearer {EVENTS_SECRET}"})
    assert_unavailable(events, port)

    xml = (Path(__file__).parent / "fixtures" / "salesforce" / "outbound_contact.xml").read_bytes()
    outbound = await c.post("/webhooks/salesforce/outbound", content=xml,
                            headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'})
    assert_unavailable(outbound, port)
    assert "soapenv:Fault" in outbound.text and "soapenv:Server" in outbound.text
