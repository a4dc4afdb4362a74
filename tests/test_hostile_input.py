"""Hostile input is refused at the door: every JSON route answers 4xx with a JSON reason (the
SOAP route a SOAP fault) and stores nothing; no input makes the service answer 500."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select

from core.db import inbound_events, outbox, suppressions, triggers
from tests.harness import BASE_CONFIG, JANE, Harness

HUBSPOT_SECRET = "5b1d3c7e-hubspot-client-secret-for-tests"
EVENTS_SECRET = "salesforce-events-secret-for-the-tests-0123"

DEEP = b"[" * 30_000 + b"]" * 30_000
DEEP_OBJECT = ('{"a":' * 40 + "1" + "}" * 40).encode()


@pytest.fixture
def config_text() -> str:
    crm = {
        "hubspot": {"client_secret": HUBSPOT_SECRET},
        "salesforce": {
            "instance_url": "https://example.my.salesforce.com", "organization_id": "00D000000000001AAA",
            "npi_fields": {"Contact": "NPI__c"}, "events_secret": EVENTS_SECRET,
        },
    }
    return BASE_CONFIG + yaml.safe_dump({"crm": crm}, sort_keys=False)


def hostile_bodies(valid: dict[str, Any], string_field: tuple[str, ...]) -> dict[str, bytes]:
    """`valid` spoiled in each way; `string_field` is where a string value sits in it."""

    def with_value(raw_value: str) -> bytes:
        text = json.dumps(valid)
        marker = json.dumps(_get(valid, string_field))
        assert marker in text
        return text.replace(marker, raw_value, 1).encode()

    return {
        "deep array": DEEP,
        "deep object": DEEP_OBJECT,
        "NaN": with_value("NaN"),
        "Infinity": with_value("-Infinity"),
        "lone surrogate": with_value('"\\ud800x"'),
        "NUL": with_value('"a\\u0000b"'),
        "NUL in a key": json.dumps({**valid, "x\u0000": 1}).encode(),
        "not UTF-8": with_value('"\xff\xfe"').replace("ÿþ".encode(), b"\xff\xfe"),
    }


def _get(value: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        value = value[part]
    return value


async def count(h: Harness, table: Any) -> int:
    async with h.rt.db.connect() as connection:
        return (await connection.execute(select(func.count()).select_from(table))).scalar_one()


def assert_refused(response: Any, status: int | tuple[int, ...] = (400, 422)) -> None:
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]


TRIGGER = {"npi": JANE, "campaign_id": "asthma-launch", "data": {"note": "hello"}}


@pytest.mark.parametrize("kind", list(hostile_bodies(TRIGGER, ("data", "note"))))
async def test_hostile_trigger_bodies_are_refused(harness: Harness, kind: str) -> None:
    body = hostile_bodies(TRIGGER, ("data", "note"))[kind]
    response = await harness.client.post(
        "/v1/triggers", content=body, headers={**harness.auth, "Content-Type": "application/json"}
    )
    assert_refused(response, 422)
    assert await count(harness, triggers) == 0


@pytest.mark.parametrize(
    "npi", ["123456789²", "١٢٣٤٥٦٧٨٩٣", "１２３４５６７８９３", "12345678 3", "1" * 10_000, 1234567893, None, ["1234567893"]],
)
async def test_npis_other_than_ten_ascii_digits_are_refused(harness: Harness, npi: Any) -> None:
    response = await harness.client.post(
        "/v1/triggers", json={"npi": npi, "campaign_id": "asthma-launch"}, headers=harness.auth
    )
    assert_refused(response, 422)
    assert response.json()["field"] == "npi"
    suppression = await harness.client.post("/v1/suppressions", json={"npi": npi}, headers=harness.auth)
    assert_refused(suppression, 422)
    assert await count(harness, triggers) == 0 and await count(harness, suppressions) == 0


async def test_over_long_strings_are_refused(harness: Harness) -> None:
    long_campaign = await harness.client.post(
        "/v1/triggers", json={"npi": JANE, "campaign_id": "c" * 20_000}, headers=harness.auth
    )
    assert_refused(long_campaign, 422)
    assert len(long_campaign.text) < 1000
    long_key = await harness.client.post(
        "/v1/triggers", json=TRIGGER, headers={**harness.auth, "Idempotency-Key": "k" * 201}
    )
    assert_refused(long_key, 422)
    long_data = await harness.client.post(
        "/v1/triggers", json={**TRIGGER, "data": {"note": "n" * 20_000}}, headers=harness.auth
    )
    assert_refused(long_data, 422)
    assert long_data.json()["field"] == "data.note" and "longer than 10000 characters" in long_data.json()["error"]
    long_reason = await harness.client.post(
        "/v1/suppressions", json={"npi": JANE, "reason": "r" * 33}, headers=harness.auth
    )
    assert_refused(long_reason, 422)
    assert await count(harness, triggers) == 0 and await count(harness, suppressions) == 0


SUPPRESSION = {"npi": JANE, "reason": "manual", "detail": "asked by phone"}


@pytest.mark.parametrize("kind", list(hostile_bodies(SUPPRESSION, ("detail",))))
async def test_hostile_suppression_bodies_are_refused(harness: Harness, kind: str) -> None:
    body = hostile_bodies(SUPPRESSION, ("detail",))[kind]
    for method in ("POST", "DELETE"):
        response = await harness.client.request(
            method, "/v1/suppressions", content=body, headers={**harness.auth, "Content-Type": "application/json"}
        )
        assert_refused(response, 422)
    assert await count(harness, suppressions) == 0


RETRY = {"ids": [1, 2], "note": "x"}


@pytest.mark.parametrize("kind", list(hostile_bodies(RETRY, ("note",))))
async def test_hostile_outbox_retry_bodies_are_refused(harness: Harness, kind: str) -> None:
    body = hostile_bodies(RETRY, ("note",))[kind]
    response = await harness.client.post(
        "/v1/outbox/retry", content=body, headers={**harness.auth, "Content-Type": "application/json"}
    )
    assert_refused(response, 422)
    assert await count(harness, outbox) == 0


@pytest.mark.parametrize("body", [b" ", b"\r\n\t ", b"\x0b"])
async def test_a_body_of_whitespace_is_not_an_empty_body(harness: Harness, body: bytes) -> None:
    """No body retries every dead letter; whitespace is not JSON, so it must not do the same."""
    response = await harness.client.post(
        "/v1/outbox/retry", content=body, headers={**harness.auth, "Content-Type": "application/json"}
    )
    assert_refused(response, 422)


HUBSPOT_EVENT = [{
    "eventId": 1001, "subscriptionId": 7, "portalId": 62515, "occurredAt": 1700000000000,
    "subscriptionType": "contact.propertyChange", "attemptNumber": 0, "objectId": 501,
    "propertyName": "interest", "propertyValue": "Asthma", "changeSource": "CRM_UI",
}]


def hubspot_headers(body: bytes) -> dict[str, str]:
    signature = hashlib.sha256(HUBSPOT_SECRET.encode() + body).hexdigest()
    return {"Content-Type": "application/json", "X-HubSpot-Signature": signature, "X-HubSpot-Signature-Version": "v1"}


@pytest.mark.parametrize("kind", list(hostile_bodies(HUBSPOT_EVENT[0], ("propertyValue",))))
async def test_hostile_signed_hubspot_bodies_are_400(harness: Harness, kind: str) -> None:
    body = hostile_bodies(HUBSPOT_EVENT[0], ("propertyValue",))[kind]
    if body.startswith(b"{"):
        body = b"[" + body + b"]"
    response = await harness.client.post("/webhooks/hubspot", content=body, headers=hubspot_headers(body))
    assert_refused(response, 400)
    assert await count(harness, inbound_events) == 0


SALESFORCE_EVENT = {"object": "Contact", "id": "0035g00000ABCDEAAA", "event": "record_change",
                    "changed": {"Interest__c": "Asthma"}}


@pytest.mark.parametrize("kind", list(hostile_bodies(SALESFORCE_EVENT, ("changed", "Interest__c"))))
async def test_hostile_salesforce_event_bodies_are_400_not_a_retry(harness: Harness, kind: str) -> None:
    body = hostile_bodies(SALESFORCE_EVENT, ("changed", "Interest__c"))[kind]
    response = await harness.client.post(
        "/webhooks/salesforce/events", content=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {EVENTS_SECRET}"},
    )
    assert_refused(response, 400)
    assert "retry-after" not in response.headers
    assert await count(harness, inbound_events) == 0


@pytest.mark.parametrize(
    "url",
    [
        "/v1/triggers/trg_%00", "/v1/triggers/%00", "/v1/triggers/" + "x" * 5000, "/v1/campaigns/%00/stats",
        "/v1/campaigns/%00/pause", "/v1/suppressions?npi=%00", "/v1/suppressions?email=a%00@b.example",
        "/v1/outbox?status=%00", "/v1/outbox?limit=%C2%B2", "/v1/outbox?limit=%D9%A1", "/t/o/%00", "/u/%00",
        "/v1/triggers/%ff%fe",
    ],
)
async def test_nul_and_malformed_values_in_paths_and_queries_are_4xx(harness: Harness, url: str) -> None:
    for method in ("GET", "POST"):
        response = await harness.client.request(method, url, headers=harness.auth)
        assert 400 <= response.status_code < 500, (method, url, response.status_code, response.text)
        if response.status_code != 405:
            assert response.json()["error"]
    assert await count(harness, triggers) == 0 and await count(harness, suppressions) == 0


async def test_signed_tokens_with_malformed_payloads_are_404(harness: Harness) -> None:
    from core.compose import tokens_for

    serializer = tokens_for(harness.rt)._serializer  # noqa: SLF001 - signing what an attacker with a leaked format would
    payloads = [
        ["o"], ["o", 123], ["o", None], ["o", "msg_x", "extra"], ["o", {"a": 1}], ["o", "msg_\u0000"], ["o", "m" * 500],
        ["c", "msg_abc"], ["c", "msg_abc", "0"], ["c", "msg_abc", True], ["c", "msg_abc", -1], ["c", "msg_abc", 10**30],
        ["c", 5, 0], ["u"], ["u", 7], ["u", ["msg_abc"]], "u", {"u": 1}, None, 12,
    ]
    for payload in payloads:
        token = serializer.dumps(payload)
        for path in (f"/t/o/{token}", f"/t/c/{token}", f"/u/{token}"):
            for method in ("GET", "HEAD", "POST"):
                response = await harness.client.request(method, path)
                assert response.status_code in (404, 405), (payload, path, method, response.status_code)
    assert await count(harness, suppressions) == 0


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--npi", "١٢٣٤٥٦٧٨٩٣"], "--npi: npi must be 10 digits"),
        (["--npi", "123456789²"], "--npi: npi must be 10 digits"),
        (["--npi", JANE, "--data", '{"x": NaN}'], "--data: the value is not valid JSON: NaN is not a JSON number"),
        (["--npi", JANE, "--data", '{"x": "\\ud800"}'], "--data: lone UTF-16 surrogates are not allowed"),
        (["--npi", JANE, "--data", '{"x": "a\\u0000"}'], "--data: NUL characters are not allowed"),
        (["--npi", JANE, "--data", "[" * 100 + "]" * 100], "--data: the value is nested deeper than 32 levels"),
    ],
)
async def test_the_cli_trigger_refuses_what_the_api_refuses(harness: Harness, tmp_path: Any, args: list[str], reason: str) -> None:
    import asyncio

    from typer.testing import CliRunner

    from trigger_email.cli import app

    config = tmp_path / "trigger-email.yaml"
    config.write_text(BASE_CONFIG)
    settings = harness.rt.settings
    env = {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url, "SECRET_KEY": settings.secret_key,
           "TRIGGER_EMAIL_CONFIG": str(config), "COLUMNS": "200"}
    result = await asyncio.to_thread(CliRunner().invoke, app, ["trigger", *args, "--campaign", "asthma-launch"], env=env)
    assert result.exit_code == 2 and reason in result.output, result.output
    assert await count(harness, triggers) == 0
