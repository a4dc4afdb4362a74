"""The HubSpot connector against HubSpot's documented contract: signed webhooks (v1/v2/v3)
checked on a ManualClock, every fixture payload parsed, contacts fetched through the real
SDK from a fake HubSpot on a socket, and activities pushed in batches with 429 / 5xx /
per-item failures."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from config import Config, Settings, parse_config
from connectors.base import InboundRequest, WebhookRejected, build_connectors
from connectors.hubspot import HubSpotApiError, HubSpotConnector
from connectors.hubspot.activities import reference
from core.activities import Activity, InboundEvent
from core.clock import ManualClock
from tests.fakes.fake_hubspot import FakeHubSpot

FIXTURES = Path(__file__).parent / "fixtures" / "hubspot"
SECRET = "9f4c2b1e-client-secret"
TOKEN = "pat-na1-test-token"
URL = "https://trigger.pharma.example/webhooks/hubspot"
EMAILS = "/crm/v3/objects/emails/batch/create"
NOTES = "/crm/v3/objects/notes/batch/create"


def make_config(**hubspot: Any) -> Config:
    settings = {"access_token": TOKEN, "client_secret": SECRET, **hubspot}
    text = yaml.safe_dump({
        "public_url": "https://trigger.pharma.example",
        "sender": {"from": "Medical Information <medinfo@pharma.example>"},
        "crm": {"hubspot": settings},
    })
    return parse_config(text, base=Path("."), env={})


def make_connector(clock: ManualClock, **hubspot: Any) -> HubSpotConnector:
    return HubSpotConnector(make_config(**hubspot), Settings(), clock)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def connector(clock: ManualClock) -> HubSpotConnector:
    return make_connector(clock)


@pytest.fixture(scope="module")
def hubspot_server() -> Iterator[FakeHubSpot]:
    with FakeHubSpot(token=TOKEN) as server:
        yield server


@pytest.fixture
def fake(hubspot_server: FakeHubSpot) -> FakeHubSpot:
    hubspot_server.reset()
    return hubspot_server


@pytest.fixture
async def live(fake: FakeHubSpot, clock: ManualClock) -> Any:
    connector = make_connector(clock, base_url=fake.url)
    yield connector
    await connector.aclose()


# signing, written from HubSpot's "Validating requests" guide rather than the SDK


def millis(moment: datetime) -> str:
    return str(int(moment.timestamp() * 1000))


def signed_v3(body: bytes, now: datetime, *, secret: str = SECRET, uri: str = URL) -> dict[str, str]:
    timestamp = millis(now)
    message = b"POST" + uri.encode() + body + timestamp.encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return {"x-hubspot-signature-v3": base64.b64encode(digest).decode(), "x-hubspot-request-timestamp": timestamp}


def signed_v2(body: bytes, *, secret: str = SECRET) -> dict[str, str]:
    digest = hashlib.sha256(secret.encode() + b"POST" + URL.encode() + body).hexdigest()
    return {"x-hubspot-signature": digest, "x-hubspot-signature-version": "v2"}


def signed_v1(body: bytes, *, secret: str = SECRET) -> dict[str, str]:
    return {"x-hubspot-signature": hashlib.sha256(secret.encode() + body).hexdigest(), "x-hubspot-signature-version": "v1"}


def inbound(body: bytes, headers: dict[str, str] | None = None, *, url: str = URL) -> InboundRequest:
    return InboundRequest("POST", url, {"content-type": "application/json", **(headers or {})}, body)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def rejected(call: Any, *args: Any) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as info:
        call(*args)
    return info.value


# registration


def test_importing_the_package_registers_the_connector(clock: ManualClock) -> None:
    built = build_connectors(make_config(), Settings(), clock)
    assert isinstance(built["hubspot"], HubSpotConnector)
    assert (HubSpotConnector.name, HubSpotConnector.batch_size) == ("hubspot", 100)


# signatures


def test_v3_signature_is_accepted(connector: HubSpotConnector, clock: ManualClock) -> None:
    body = fixture("webhooks_batch.json")
    connector.verify(inbound(body, signed_v3(body, clock.now())))


def test_v2_and_v1_signatures_are_accepted(connector: HubSpotConnector) -> None:
    body = fixture("workflow_legacy_contact.json")
    connector.verify(inbound(body, signed_v2(body)))
    connector.verify(inbound(body, signed_v1(body)))


def test_v3_uri_is_checked_with_hubspot_decoded_characters(connector: HubSpotConnector, clock: ManualClock) -> None:
    body = b"[]"
    encoded = URL + "?next=https%3A%2F%2Fpharma.example%2Fa"
    headers = signed_v3(body, clock.now(), uri=URL + "?next=https://pharma.example/a")
    connector.verify(inbound(body, headers, url=encoded))


@pytest.mark.parametrize("sign", ["v1", "v2", "v3"])
def test_altered_body_is_rejected(connector: HubSpotConnector, clock: ManualClock, sign: str) -> None:
    body = fixture("contact_property_change.json")
    headers = {"v1": signed_v1(body), "v2": signed_v2(body), "v3": signed_v3(body, clock.now())}[sign]
    tampered = body.replace(b"1234567893", b"1234567894")
    assert rejected(connector.verify, inbound(tampered, headers)).status == 401


@pytest.mark.parametrize("sign", ["v1", "v2", "v3"])
def test_wrong_secret_is_rejected(connector: HubSpotConnector, clock: ManualClock, sign: str) -> None:
    body = fixture("contact_creation.json")
    headers = {
        "v1": signed_v1(body, secret="other"),
        "v2": signed_v2(body, secret="other"),
        "v3": signed_v3(body, clock.now(), secret="other"),
    }[sign]
    assert rejected(connector.verify, inbound(body, headers)).status == 401


def test_v3_older_than_five_minutes_is_rejected(connector: HubSpotConnector, clock: ManualClock) -> None:
    body = fixture("contact_creation.json")
    headers = signed_v3(body, clock.now())
    clock.advance(timedelta(minutes=4, seconds=59))
    connector.verify(inbound(body, headers))
    clock.advance(timedelta(seconds=2))
    error = rejected(connector.verify, inbound(body, headers))
    assert (error.status, "older than 5 minutes" in error.reason) == (401, True)


def test_missing_signature_or_timestamp_is_rejected(connector: HubSpotConnector, clock: ManualClock) -> None:
    body = fixture("contact_creation.json")
    assert rejected(connector.verify, inbound(body)).status == 401
    headers = signed_v3(body, clock.now())
    del headers["x-hubspot-request-timestamp"]
    assert rejected(connector.verify, inbound(body, headers)).status == 401


def test_without_client_secret_nothing_is_accepted(clock: ManualClock) -> None:
    connector = make_connector(clock, client_secret=None)
    body = fixture("contact_creation.json")
    assert rejected(connector.verify, inbound(body, signed_v1(body))).status == 401


def test_event_from_another_portal_is_forbidden(clock: ManualClock) -> None:
    body = fixture("webhooks_batch.json")
    request = inbound(body, signed_v3(body, clock.now()))
    make_connector(clock, portal_id=62515).verify(request)
    other = make_connector(clock, portal_id=99999)
    assert rejected(other.verify, request).status == 403
    assert rejected(other.parse, request).status == 403


def test_legacy_workflow_body_from_another_portal_is_forbidden(clock: ManualClock) -> None:
    body = fixture("workflow_legacy_contact.json")
    assert rejected(make_connector(clock, portal_id=1).verify, inbound(body, signed_v1(body))).status == 403


# parsing: one helper, a few lines per fixture


def parse(connector: HubSpotConnector, name: str) -> list[InboundEvent]:
    events = connector.parse(inbound(fixture(name)))
    assert all(e.source == "hubspot" and e.object_type == "contact" for e in events)
    assert all(e.occurred_at is not None and e.occurred_at.tzinfo is not None for e in events)
    return events


def one(connector: HubSpotConnector, name: str) -> InboundEvent:
    events = parse(connector, name)
    assert len(events) == 1
    return events[0]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def test_contact_property_change(connector: HubSpotConnector) -> None:
    e = one(connector, "contact_property_change.json")
    assert (e.event, e.event_key, e.object_id, e.changed) == ("record_change", "62515:2141541:3816279340", "1246965", {"npi": "1234567893"})
    assert e.fields == {"npi": "1234567893"} and e.occurred_at == at("2026-01-05T08:59:00") and e.payload["changeSource"] == "CRM_UI"


def test_contact_creation(connector: HubSpotConnector) -> None:
    e = one(connector, "contact_creation.json")
    assert (e.event, e.event_key, e.object_id, e.changed) == ("created", "62515:234567:567890123", "65059681032", {})


def test_contact_deletion(connector: HubSpotConnector) -> None:
    e = one(connector, "contact_deletion.json")
    assert (e.event, e.event_key, e.object_id) == ("deleted", "62515:234568:1725358293", "1246977")


def test_contact_merge(connector: HubSpotConnector) -> None:
    e = one(connector, "contact_merge.json")
    assert (e.event, e.object_id, e.payload["mergedObjectIds"]) == ("merged", "1246965", [1246978])


def test_webhooks_batch_keeps_contact_events_only(connector: HubSpotConnector) -> None:
    events = parse(connector, "webhooks_batch.json")
    assert [(e.event_key, e.event) for e in events] == [
        ("62515:2141541:3816279341", "record_change"), ("62515:2141542:3816279342", "record_change"),
        ("62515:234567:3816279343", "created"), ("62515:234572:3816279346", "record_change"),
    ]
    assert events[1].changed == {"interest": "Asthma"} and events[3].changed == {"specialty": "Pulmonary Disease"}


def test_workflow_default_body(connector: HubSpotConnector, clock: ManualClock) -> None:
    e = one(connector, "workflow_default.json")
    assert (e.event, e.object_id, e.fields["npi"], e.fields["interest"]) == ("record_change", "1246965", "1234567893", "Asthma")
    assert e.changed == e.fields and e.event_key == hashlib.sha256(fixture("workflow_default.json")).hexdigest()


def test_workflow_legacy_contact_is_its_latest_form_submission(connector: HubSpotConnector) -> None:
    e = one(connector, "workflow_legacy_contact.json")
    assert (e.event, e.object_id, e.form_id) == ("form_submission", "1246965", "5f2c1a9e-3b7d-4c61-9a51-2f0d8e6b7c43")
    assert (e.url, e.fields["npi"], e.occurred_at) == ("https://pharma.example/asthma/register", "1234567893", at("2026-01-05T08:59:00"))


def test_workflow_custom_body_with_form(connector: HubSpotConnector, clock: ManualClock) -> None:
    e = one(connector, "workflow_custom.json")
    assert (e.event, e.object_id, e.form_id, e.url) == ("form_submission", "1246965", "5f2c1a9e-3b7d-4c61-9a51-2f0d8e6b7c43", "https://pharma.example/asthma/register")
    assert e.fields["npi"] == "1234567893" and e.occurred_at == clock.now()


def test_workflow_custom_body_with_url_only_is_a_page_view(connector: HubSpotConnector) -> None:
    e = one(connector, "workflow_custom_page_view.json")
    assert (e.event, e.object_id, e.form_id, e.url) == ("page_view", "1246965", None, "https://pharma.example/asthma/dosing")


def test_workflow_crm_object_body(connector: HubSpotConnector) -> None:
    e = one(connector, "workflow_crm_object.json")
    assert (e.event, e.object_id, e.fields["interest"], "npi" in e.fields) == ("record_change", "1246965", "Asthma", False)


def test_workflow_custom_event_name_is_honoured(connector: HubSpotConnector) -> None:
    body = json.dumps({"vid": 7, "event": "created", "npi": "1234567893"}).encode()
    assert connector.parse(inbound(body))[0].event == "created"
    assert rejected(connector.parse, inbound(json.dumps({"vid": 7, "event": "exploded"}).encode())).status == 400


def test_same_workflow_body_gives_same_key(connector: HubSpotConnector) -> None:
    first, again = (one(connector, "workflow_custom.json") for _ in range(2))
    assert first.event_key == again.event_key


def test_the_same_event_id_from_another_subscription_or_portal_is_another_event(connector: HubSpotConnector) -> None:
    [event] = json.loads(fixture("contact_creation.json"))
    twins = [event, {**event, "subscriptionId": 999}, {**event, "portalId": 77}, {**event, "attemptNumber": 3}]
    keys = [e.event_key for e in connector.parse(inbound(json.dumps(twins).encode()))]
    assert keys == ["62515:234567:567890123", "62515:999:567890123", "77:234567:567890123", "62515:234567:567890123"]


def test_an_event_without_its_ids_is_keyed_by_its_content_less_the_attempt(connector: HubSpotConnector) -> None:
    [event] = json.loads(fixture("contact_creation.json"))
    bare = {key: value for key, value in event.items() if key not in ("eventId", "subscriptionId")}
    first, retry, other = connector.parse(inbound(json.dumps(
        [bare, {**bare, "attemptNumber": 2}, {**bare, "objectId": 1}]
    ).encode()))
    assert first.event_key.startswith("sha256:") and first.event_key == retry.event_key != other.event_key


def test_more_than_100_events_is_a_bad_request(connector: HubSpotConnector) -> None:
    event = json.loads(fixture("contact_creation.json"))[0]
    body = json.dumps([{**event, "eventId": n} for n in range(101)]).encode()
    assert rejected(connector.parse, inbound(body)).status == 400
    assert len(connector.parse(inbound(json.dumps([{**event, "eventId": n} for n in range(100)]).encode()))) == 100


@pytest.mark.parametrize("body", [
    b"{not json", b"\xff\xfe", b'"a string"', b"[1, 2]", b'[{"eventId": 1, "objectId": 2}]',
    b'{"properties": {"npi": "1234567893"}}', b'{"vid": 1, "properties": []}',
    b'[{"eventId": 1, "subscriptionType": "contact.propertyChange", "objectId": 2}]',
])
def test_malformed_bodies_are_bad_requests(connector: HubSpotConnector, body: bytes) -> None:
    assert rejected(connector.parse, inbound(body)).status == 400


# contacts through the real SDK against the fake


async def test_contact_npi_from_the_payload_needs_no_fetch(live: HubSpotConnector, fake: FakeHubSpot) -> None:
    info = await live.contact_for(one(live, "workflow_default.json"))
    assert (info.npi, info.email, info.fields["firstname"]) == ("1234567893", None, "Jane")
    assert fake.requests == []


async def test_contact_fetch_then_cache(live: HubSpotConnector, fake: FakeHubSpot, clock: ManualClock) -> None:
    fake.contacts["1246965"] = {"npi": " 1234567893 ", "email": "jane.doe@clinic.example", "firstname": "Jane", "secret_note": "x"}
    event = one(live, "workflow_crm_object.json")
    info = await live.contact_for(event)
    assert (info.npi, info.email, info.fields["interest"], "secret_note" in info.fields) == ("1234567893", None, "Asthma", False)
    [request] = fake.requests
    assert request.path == "/crm/v3/objects/contacts/1246965"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert sorted(value for key, value in request.query if key == "properties") == ["email", "firstname", "lastname", "npi"]
    clock.advance(59)
    assert (await live.contact_for(event)).npi == "1234567893" and len(fake.requests) == 1
    clock.advance(2)
    await live.contact_for(event)
    assert len(fake.requests) == 2


async def test_contact_email_when_configured(fake: FakeHubSpot, clock: ManualClock) -> None:
    fake.contacts["1246965"] = {"npi": "1234567893", "email": "jane.doe@clinic.example"}
    connector = make_connector(clock, base_url=fake.url, use_contact_email=True)
    info = await connector.contact_for(one(connector, "contact_property_change.json"))
    assert (info.npi, info.email, len(fake.requests)) == ("1234567893", "jane.doe@clinic.example", 1)
    await connector.aclose()


async def test_unknown_contact_has_no_npi(live: HubSpotConnector, fake: FakeHubSpot) -> None:
    info = await live.contact_for(one(live, "contact_creation.json"))
    assert (info.npi, fake.requests[0].status) == (None, 404)


async def test_contact_fetch_waits_out_a_rate_limit_on_the_clock(live: HubSpotConnector, fake: FakeHubSpot, clock: ManualClock) -> None:
    fake.contacts["65059681032"] = {"npi": "1234567893"}
    started = clock.now()
    fake.rate_limit(1, retry_after="3")
    assert (await live.contact_for(one(live, "contact_creation.json"))).npi == "1234567893"
    assert ([r.status for r in fake.requests], clock.now() - started) == ([429, 200], timedelta(seconds=3))


async def test_contact_fetch_retries_a_server_error(live: HubSpotConnector, fake: FakeHubSpot) -> None:
    fake.contacts["65059681032"] = {"npi": "1234567893"}
    fake.fail_next(1, status=503)
    assert (await live.contact_for(one(live, "contact_creation.json"))).npi == "1234567893"
    assert [r.status for r in fake.requests] == [503, 200]


async def test_contact_fetch_errors_are_raised_with_status(live: HubSpotConnector, fake: FakeHubSpot, clock: ManualClock) -> None:
    started = clock.now()
    fake.rate_limit(3, retry_after="3")
    with pytest.raises(HubSpotApiError) as info:
        await live.contact_for(one(live, "contact_creation.json"))
    assert (info.value.status, info.value.retry_after) == (429, 3.0)
    assert (len(fake.requests), clock.now() - started) == (3, timedelta(seconds=6))
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize("status, retry_after", [(429, "3600"), (401, None), (403, None)])
async def test_contact_fetch_gives_up_at_once_when_waiting_cannot_help(
    live: HubSpotConnector, fake: FakeHubSpot, status: int, retry_after: str | None
) -> None:
    if status == 429:
        fake.rate_limit(1, retry_after=retry_after)
    else:
        fake.fail_next(1, status=status)
    with pytest.raises(HubSpotApiError) as info:
        await live.contact_for(one(live, "contact_creation.json"))
    assert (info.value.status, len(fake.requests)) == (status, 1)


# pushing activities


def activity(n: int, kind: str = "sent", **details: Any) -> Activity:
    return Activity(
        id=n, crm="hubspot", kind=kind, npi="1234567893", campaign_id="asthma-launch",  # type: ignore[arg-type]
        subject="New asthma data for Pulmonary Disease practices", message_id=f"<{n}@pharma.example>",
        occurred_at=datetime(2026, 1, 5, 9, 30, tzinfo=timezone.utc), object_type="contact", object_id=str(1000 + n),
        details={"to": "jane.doe@clinic.example", **details},
    )


def inputs(fake: FakeHubSpot, path: str) -> list[dict[str, Any]]:
    return [item for call in fake.calls(path) for item in call.json["inputs"]]


async def test_150_sent_emails_take_two_calls(live: HubSpotConnector, fake: FakeHubSpot) -> None:
    results = await live.push_activities([activity(n) for n in range(150)])
    assert all(r.ok for r in results) and [r.activity_id for r in results] == list(range(150))
    assert [len(call.json["inputs"]) for call in fake.calls(EMAILS)] == [100, 50] and fake.calls(NOTES) == []


async def test_email_engagement_shape(live: HubSpotConnector, fake: FakeHubSpot) -> None:
    await live.push_activities([activity(7)])
    [item] = inputs(fake, EMAILS)
    props = item["properties"]
    assert (props["hs_email_direction"], props["hs_email_status"], props["hs_timestamp"]) == ("EMAIL", "SENT", "2026-01-05T09:30:00.000Z")
    assert props["hs_email_subject"] == "New asthma data for Pulmonary Disease practices"
    assert json.loads(props["hs_email_headers"])["to"] == [{"email": "jane.doe@clinic.example"}]
    assert item["objectWriteTraceId"] == "7"
    assert item["associations"] == [{"to": {"id": "1007"}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 198}]}]


async def test_engagement_kinds_become_readable_notes(live: HubSpotConnector, fake: FakeHubSpot) -> None:
    batch = [
        activity(1), activity(2, "opened", open_count=2), activity(3, "clicked", link="https://pharma.example/asthma?a=1&b=2"),
        activity(4, "bounced", reason="550 5.1.1 user unknown"), activity(5, "unsubscribed"),
    ]
    assert all(r.ok for r in await live.push_activities(batch))
    assert (len(fake.calls(EMAILS)), len(fake.calls(NOTES))) == (1, 1)
    bodies = [item["properties"]["hs_note_body"] for item in inputs(fake, NOTES)]
    subject = "'New asthma data for Pulmonary Disease practices'"
    refs = [reference(a) for a in batch[1:]]
    assert bodies == [
        f"Opened {subject} — 2 times (campaign asthma-launch, ref {refs[0]})",
        f"Clicked https://pharma.example/asthma?a=1&amp;b=2 in {subject} (campaign asthma-launch, ref {refs[1]})",
        f"Bounced {subject} to jane.doe@clinic.example — 550 5.1.1 user unknown (campaign asthma-launch, ref {refs[2]})",
        f"Unsubscribed via {subject} (campaign asthma-launch, ref {refs[3]})",
    ]
    assert len(set(refs)) == 4 and all(len(ref) == 16 for ref in refs)
    assert {t["associationTypeId"] for item in inputs(fake, NOTES) for a in item["associations"] for t in a["types"]} == {202}


async def test_activity_without_contact_fails_for_good(live: HubSpotConnector, fake: FakeHubSpot) -> None:
    orphan = activity(2)
    orphan.object_id = None
    results = await live.push_activities([activity(1), orphan])
    assert [(r.ok, r.permanent) for r in results] == [(True, False), (False, True)]
    assert len(inputs(fake, EMAILS)) == 1


@pytest.mark.parametrize("header, wait", [("7", 7.0), (None, 10.0)])
async def test_rate_limit_defers_the_whole_batch(live: HubSpotConnector, fake: FakeHubSpot, header: str | None, wait: float) -> None:
    fake.rate_limit(1, retry_after=header)
    results = await live.push_activities([activity(1), activity(2, "opened")])
    assert [(r.ok, r.permanent, r.retry_after) for r in results] == [(False, False, wait)] * 2
    assert (len(fake.calls(EMAILS)), len(fake.calls(NOTES))) == (1, 0)


async def test_server_error_is_transient(live: HubSpotConnector, fake: FakeHubSpot) -> None:
    fake.fail_next(1, status=502)
    results = await live.push_activities([activity(1), activity(2, "opened")])
    assert [(r.ok, r.permanent, r.retry_after) for r in results] == [(False, False, None), (True, False, None)]


async def test_per_item_error_fails_only_that_item(live: HubSpotConnector, fake: FakeHubSpot) -> None:
    fake.fail_input("3", "Property values were not valid: hs_email_subject")
    results = await live.push_activities([activity(n) for n in range(1, 6)])
    assert [(r.activity_id, r.ok, r.permanent) for r in results] == [
        (1, True, False), (2, True, False), (3, False, True), (4, True, False), (5, True, False),
    ]
    assert "hs_email_subject" in (results[2].error or "") and fake.calls(EMAILS)[0].status == 207


async def test_wrong_token_is_not_dead_lettered(fake: FakeHubSpot, clock: ManualClock) -> None:
    connector = make_connector(clock, base_url=fake.url, access_token="revoked")
    [result] = await connector.push_activities([activity(1)])
    assert (result.ok, result.permanent, fake.calls(EMAILS)[0].status) == (False, False, 401)
    assert "revoked" not in (result.error or "")
    await connector.aclose()


# the fake validates what HubSpot validates


async def test_fake_refuses_unknown_properties_and_enum_values_as_hubspot_does(fake: FakeHubSpot) -> None:
    import httpx

    good = {"hs_timestamp": "2026-01-05T09:30:00.000Z", "hs_email_direction": "EMAIL", "hs_email_status": "SENT"}
    bad = [
        ({**good, "hs_email_status": "DELIVERED"}, "INVALID_OPTION", "hs_email_status"),
        ({**good, "hs_email_direction": "OUTGOING"}, "INVALID_OPTION", "hs_email_direction"),
        ({**good, "hs_email_opened": "true"}, "PROPERTY_DOESNT_EXIST", "hs_email_opened"),
        ({**good, "hs_timestamp": "yesterday"}, "INVALID_DATE", "hs_timestamp"),
        ({"hs_email_status": "SENT"}, "REQUIRED_PROPERTY", "hs_timestamp"),
    ]
    association = [{"to": {"id": "1"}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 198}]}]
    inputs_ = [{"properties": good, "associations": association, "objectWriteTraceId": "ok"}] + [
        {"properties": props, "associations": association, "objectWriteTraceId": str(n)} for n, (props, _, _) in enumerate(bad)
    ]
    response = httpx.post(f"{fake.url}{EMAILS}", json={"inputs": inputs_}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 207
    answer = response.json()
    assert [item["objectWriteTraceId"] for item in answer["results"]] == ["ok"]
    for error in answer["errors"]:
        assert error["category"] == "VALIDATION_ERROR" and error["message"].startswith("Property values were not valid: [")
        [detail] = json.loads(error["message"].removeprefix("Property values were not valid: "))
        _, code, name = bad[int(error["context"]["objectWriteTraceId"][0])]
        assert (detail["isValid"], detail["error"], detail["name"]) == (False, code, name)

    wrong_type = [{"to": {"id": "1"}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 202}]}]
    note = {"properties": {"hs_timestamp": "1767605400000", "hs_note_body": "x" * 65_537}, "associations": wrong_type}
    response = httpx.post(f"{fake.url}{NOTES}", json={"inputs": [note]}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 400 and "hs_note_body" in response.json()["message"]
    assert [item["objectWriteTraceId"] for item in fake.timeline()] == ["ok"]


async def test_what_the_connector_writes_passes_the_fakes_validation(live: HubSpotConnector, fake: FakeHubSpot) -> None:
    batch = [activity(1, text="plain", html="<p>x</p>"), activity(2, "opened", open_count=3), activity(3, "clicked", link="https://x.example"),
             activity(4, "bounced", reason="550"), activity(5, "unsubscribed")]
    results = await live.push_activities(batch)
    assert [(r.ok, r.error) for r in results] == [(True, None)] * 5
    assert {call.status for call in fake.calls(EMAILS) + fake.calls(NOTES)} == {201}


async def test_an_activity_id_property_must_exist_on_hubspot(fake: FakeHubSpot, clock: ManualClock) -> None:
    connector = make_connector(clock, base_url=fake.url, activity_id_property="te_activity_ref")
    [missing] = await connector.push_activities([activity(1)])
    assert (missing.ok, missing.permanent) == (False, True) and "PROPERTY_DOESNT_EXIST" in (missing.error or "")
    fake.custom_properties["emails"].add("te_activity_ref")
    [written] = await connector.push_activities([activity(1)])
    assert written.ok and fake.timeline()[0]["properties"]["te_activity_ref"] == reference(activity(1))
    await connector.aclose()


# one bad input never takes good ones down with it


def with_contacts(fake: FakeHubSpot, *ids: int) -> None:
    for n in ids:
        fake.contacts[str(1000 + n)] = {"npi": "1234567893"}


async def test_a_207_fails_only_the_input_hubspot_refused(live: HubSpotConnector, fake: FakeHubSpot) -> None:
    with_contacts(fake, 1, 2, 4, 5)  # contact 1003 does not exist: its association is refused
    results = await live.push_activities([activity(n) for n in range(1, 6)])
    assert [(r.activity_id, r.ok, r.permanent) for r in results] == [
        (1, True, False), (2, True, False), (3, False, True), (4, True, False), (5, True, False),
    ]
    assert [call.status for call in fake.calls(EMAILS)] == [207] and "1003" in (results[2].error or "")
    assert len(fake.timeline()) == 4


@pytest.mark.parametrize("bad", [[3], [1, 5], [2, 3, 4]])
async def test_a_batch_refused_whole_with_400_is_split_until_the_bad_input_is_alone(
    live: HubSpotConnector, fake: FakeHubSpot, bad: list[int]
) -> None:
    fake.whole_batch_errors = True
    with_contacts(fake, *(n for n in range(1, 9) if n not in bad))
    results = await live.push_activities([activity(n) for n in range(1, 9)])
    assert {r.activity_id for r in results if r.ok} == set(range(1, 9)) - set(bad)
    assert all(r.permanent and "does not exist" in (r.error or "") for r in results if not r.ok)
    assert sorted(int(item["objectWriteTraceId"]) for item in fake.timeline()) == sorted(set(range(1, 9)) - set(bad))
    assert fake.calls(EMAILS)[0].status == 400 and len(fake.calls(EMAILS)) <= 2 * 8 - 1


async def test_a_429_while_splitting_defers_the_rest(live: HubSpotConnector, fake: FakeHubSpot) -> None:
    fake.whole_batch_errors = True
    with_contacts(fake, 1, 2, 4)
    fake.rate_limit(0)
    original = fake._input_problem

    def problem_then_throttle(object_type: str, item: Any) -> str | None:
        fake.rate_limit(5, retry_after="9")  # every call after the first 400 is throttled
        return original(object_type, item)

    fake._input_problem = problem_then_throttle  # type: ignore[method-assign]
    try:
        results = await live.push_activities([activity(n) for n in range(1, 5)])
    finally:
        fake._input_problem = original  # type: ignore[method-assign]
    assert [(r.ok, r.permanent, r.retry_after) for r in results] == [(False, False, 9.0)] * 4
    assert [call.status for call in fake.calls(EMAILS)] == [400, 429]


# retries never write a second timeline entry


@pytest.mark.parametrize("id_property", [None, "te_activity_ref"])
async def test_a_retry_after_a_lost_reply_finds_what_was_written(fake: FakeHubSpot, clock: ManualClock, id_property: str | None) -> None:
    if id_property:
        fake.custom_properties["emails"].add(id_property)
        fake.custom_properties["notes"].add(id_property)
    connector = make_connector(clock, base_url=fake.url, activity_id_property=id_property)
    batch = [activity(1), activity(2), activity(3, "opened"), activity(4, "clicked", link="https://x.example/a")]
    fake.lose_replies(2)
    lost = await connector.push_activities(batch)
    assert [(r.ok, r.permanent) for r in lost] == [(False, False)] * 4
    assert len(fake.timeline()) == 4, "HubSpot wrote them; we never heard"

    for item in batch:
        item.verify = True
    retried = await connector.push_activities(batch + [activity(5, "opened")])
    assert [r.ok for r in retried] == [True] * 5
    assert sorted(int(item["objectWriteTraceId"]) for item in fake.timeline()) == [1, 2, 3, 4, 5]
    [create] = fake.calls(NOTES)[1:]
    assert [item["objectWriteTraceId"] for item in create.json["inputs"]] == ["5"], "only the new one is created"
    await connector.aclose()


async def test_a_retry_creates_what_the_lost_call_did_not_write(live: HubSpotConnector, fake: FakeHubSpot) -> None:
    fake.fail_next(1, status=502)
    [failed] = await live.push_activities([activity(1)])
    assert not failed.ok and fake.timeline() == []
    again = activity(1)
    again.verify = True
    [written] = await live.push_activities([again])
    assert written.ok and len(fake.timeline()) == 1


async def test_same_moment_same_contact_activities_are_told_apart(live: HubSpotConnector, fake: FakeHubSpot) -> None:
    first = activity(3, "clicked", link="https://x.example/a")
    await live.push_activities([first])
    second = activity(3, "clicked", link="https://x.example/b")
    second.id, second.key, second.verify = 4, "m:clicked:b", True
    [result] = await live.push_activities([second])
    assert result.ok and len(fake.timeline()) == 2, "another activity at the same moment is not mistaken for it"


async def test_a_search_that_fails_creates_nothing_blind(live: HubSpotConnector, fake: FakeHubSpot) -> None:
    doubtful = activity(1)
    doubtful.verify = True
    fake.fail_next(1, status=503)
    [result] = await live.push_activities([doubtful])
    assert (result.ok, result.permanent) == (False, False) and "earlier write" in (result.error or "")
    assert fake.calls(EMAILS) == [] and fake.timeline() == []
