"""`POST /webhooks/hubspot` end to end: a signed HubSpot delivery in, what a user sees out.

Each fixture payload (HubSpot's documented shapes, under tests/fixtures/hubspot/) goes
through the real app, the real arq worker, the real SDK against a fake HubSpot on a socket,
and a real SMTP server. What is checked is what a marketing-ops admin or a sales rep sees:
the trigger outcome from `GET /v1/triggers/{id}`, the emails that arrived, the outbox from
`GET /v1/outbox`, and the engagements HubSpot received.

Signatures are computed here from HubSpot's "Validating requests" guide, not with the SDK
the server uses, so a shared mistake cannot hide.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml
from sqlalchemy import func, select

from core.db import inbound_events, triggers
from core.outbox import push_outbox
from tests.fakes.fake_hubspot import FakeHubSpot
from tests.harness import BASE_CONFIG, JANE, MEI, OMAR, Harness, drain
from webhooks.app import create_app

FIXTURES = Path(__file__).parent / "fixtures" / "hubspot"
SECRET = "7c1f0e52-hubspot-client-secret"
TOKEN = "pat-na1-11111111-2222-3333-4444-555555555555"
PORTAL = 62515
PATH = "/webhooks/hubspot"
EMAILS = "/crm/v3/objects/emails/batch/create"
NOTES = "/crm/v3/objects/notes/batch/create"
FORM = "5f2c1a9e-3b7d-4c61-9a51-2f0d8e6b7c43"
JANE_MAIL, JANE_MAIL_2 = "jane.doe@clinic.example", "jdoe@health.example"
OMAR_MAIL, MEI_MAIL = "omar.haddad@heart.example", "mei.chen@allergy.example"
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"

TRIGGERS = [
    {"from": "hubspot", "on": "form_submission", "where": {"form_id": FORM}, "send": "asthma-launch"},
    {"from": "hubspot", "on": "page_view", "where": {"url": "https://pharma.example/asthma/*"}, "send": "asthma-launch"},
    {"from": "hubspot", "on": "record_change", "where": {"object": "contact", "field": "interest", "equals": "Asthma"},
     "send": "asthma-launch"},
    {"from": "hubspot", "on": "record_change", "where": {"object": "contact", "field": "npi"}, "send": "cardio-webinar"},
    {"from": "hubspot", "on": "created", "send": "cardio-webinar"},
]
"""Form 5f2c… or an asthma page → asthma-launch; interest set to Asthma → asthma-launch; the
NPI property set, or a contact created → cardio-webinar (no audience: anyone in the directory)."""


# fixtures


@pytest.fixture(scope="module")
def hubspot_server() -> Iterator[FakeHubSpot]:
    with FakeHubSpot(token=TOKEN) as server:
        yield server


@pytest.fixture
def fake(hubspot_server: FakeHubSpot) -> FakeHubSpot:
    """The fake HubSpot, emptied, with the contacts the fixtures name."""
    hubspot_server.reset()
    hubspot_server.contacts.update({
        "1246965": {"npi": JANE, "email": JANE_MAIL, "firstname": "Jane", "lastname": "Doe", "interest": "Asthma"},
        "65059681032": {"npi": OMAR, "email": OMAR_MAIL, "firstname": "Omar", "lastname": "Haddad"},
        "1246999": {"npi": MEI, "email": MEI_MAIL, "firstname": "Mei", "lastname": "Chen"},
        "1247001": {"npi": JANE, "email": JANE_MAIL},
    })
    return hubspot_server


@pytest.fixture
def hubspot_settings() -> dict[str, Any]:
    """Extra `crm.hubspot` keys; a test parametrizes this name to change them."""
    return {}


@pytest.fixture
def config_text(fake: FakeHubSpot, hubspot_settings: dict[str, Any]) -> str:
    hubspot = {
        "access_token": TOKEN, "client_secret": SECRET, "base_url": fake.url, "portal_id": PORTAL, "npi_property": "npi",
        **hubspot_settings,
    }
    return BASE_CONFIG + yaml.safe_dump({"crm": {"hubspot": hubspot}, "triggers": TRIGGERS}, sort_keys=False)


# the shared helper: sign, deliver, run the worker, read the outcomes


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def sign(body: bytes, version: str, *, at: datetime, secret: str = SECRET, uri: str | None = None) -> dict[str, str]:
    """HubSpot's headers for `body` POSTed to `uri` (the public URL, which HubSpot signs)."""
    uri = uri or f"https://trigger.pharma.example{PATH}"
    if version == "v3":
        timestamp = str(int(at.timestamp() * 1000))
        digest = hmac.new(secret.encode(), b"POST" + uri.encode() + body + timestamp.encode(), hashlib.sha256).digest()
        return {"X-HubSpot-Signature-v3": base64.b64encode(digest).decode(), "X-HubSpot-Request-Timestamp": timestamp}
    source = secret.encode() + (b"POST" + uri.encode() if version == "v2" else b"") + body
    return {"X-HubSpot-Signature": hashlib.sha256(source).hexdigest(), "X-HubSpot-Signature-Version": version}


async def deliver(
    h: Harness, body: bytes | list[Any] | dict[str, Any], *, version: str = "v3", at: datetime | None = None,
    secret: str = SECRET, client: httpx.AsyncClient | None = None,
) -> httpx.Response:
    """POST `body` to the webhook as HubSpot would: signed with the time on the app's clock."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **sign(raw, version, at=at or h.clock.now(), secret=secret)}
    return await (client or h.client).post(PATH, content=raw, headers=headers)


async def fire(h: Harness, body: bytes | list[Any] | dict[str, Any], **options: Any) -> list[tuple[str, str, str | None]]:
    """Deliver, expect 200, run the worker; every trigger as (campaign, outcome, recipient)."""
    response = await deliver(h, body, **options)
    assert response.status_code == 200, response.text
    await drain(h.rt)
    return [(view["campaign_id"], view["status"], recipient(view)) for view in await outcomes(h)]


async def outcomes(h: Harness) -> list[dict[str, Any]]:
    """`GET /v1/triggers/{id}` of every trigger, by campaign then contact."""
    async with h.rt.db.connect() as connection:
        ids = (await connection.execute(select(triggers.c.id))).scalars().all()
    views = [await h.outcome(trigger_id) for trigger_id in ids]
    return sorted(views, key=lambda view: (view["campaign_id"], view["data"].get("object_id", ""), view["status"]))


def recipient(view: dict[str, Any]) -> str | None:
    return view["messages"][0]["to"] if view["messages"] else None


async def stored_events(h: Harness) -> list[dict[str, Any]]:
    async with h.rt.db.connect() as connection:
        rows = (await connection.execute(select(inbound_events).order_by(inbound_events.c.id))).mappings().all()
    return [dict(row) for row in rows]


async def nothing_stored(h: Harness) -> bool:
    async with h.rt.db.connect() as connection:
        return (await connection.execute(select(func.count()).select_from(inbound_events))).scalar_one() == 0


async def push(h: Harness) -> dict[str, int]:
    return await push_outbox(h.rt, h.rt.extras["connectors"])


async def outbox(h: Harness, status: str | None = None) -> dict[str, Any]:
    response = await h.client.get("/v1/outbox", params={"status": status} if status else None, headers=h.auth)
    assert response.status_code == 200, response.text
    return response.json()


async def open_email(h: Harness, to: str) -> None:
    """The HCP opens the email a minute later: their mail client loads the pixel."""
    [email] = h.smtp.to(to)
    part = email.get_body(("html",))
    assert part is not None
    html = part.get_content()
    [pixel] = re.findall(r'src="https://trigger\.pharma\.example(/t/o/[^"]+)"', html)
    h.clock.advance(timedelta(minutes=1))
    response = await h.client.get(pixel, headers={"User-Agent": BROWSER})
    assert response.status_code == 200 and response.headers["content-type"] == "image/gif"


def contacts_of(items: list[dict[str, Any]]) -> list[str]:
    return sorted(association["to"]["id"] for item in items for association in item["associations"])


# every fixture → the right trigger and outcome


async def test_contact_property_change(harness: Harness, fake: FakeHubSpot) -> None:
    assert await fire(harness, fixture("contact_property_change.json")) == [("cardio-webinar", "sent", JANE_MAIL)]
    assert fake.requests == []  # the event carried the NPI: nothing to fetch


async def test_contact_creation(harness: Harness, fake: FakeHubSpot) -> None:
    assert await fire(harness, fixture("contact_creation.json")) == [("cardio-webinar", "sent", OMAR_MAIL)]
    assert [r.path for r in fake.requests] == ["/crm/v3/objects/contacts/65059681032"]


async def test_contact_deletion(harness: Harness) -> None:
    assert await fire(harness, fixture("contact_deletion.json")) == []
    assert [(e["status"], e["result"]) for e in await stored_events(harness)] == [("done", "no matching rule")]


async def test_contact_merge(harness: Harness) -> None:
    assert await fire(harness, fixture("contact_merge.json")) == []
    assert [(e["status"], e["result"]) for e in await stored_events(harness)] == [("done", "no matching rule")]


async def test_webhooks_batch(harness: Harness) -> None:
    assert await fire(harness, fixture("webhooks_batch.json")) == [
        ("asthma-launch", "sent", JANE_MAIL),     # 1246965 interest → Asthma (NPI fetched)
        ("cardio-webinar", "sent", JANE_MAIL),    # 1246965 npi set
        ("cardio-webinar", "sent", MEI_MAIL),     # 1246999 created
    ]
    assert len(await stored_events(harness)) == 4  # the company and deal events are acknowledged, not stored


async def test_workflow_default(harness: Harness, fake: FakeHubSpot) -> None:
    # The enrolled contact with all its properties: both its interest and its NPI match a rule.
    assert await fire(harness, fixture("workflow_default.json")) == [
        ("asthma-launch", "sent", JANE_MAIL), ("cardio-webinar", "sent", JANE_MAIL),
    ]
    assert fake.requests == []


async def test_workflow_legacy_contact(harness: Harness) -> None:
    assert await fire(harness, fixture("workflow_legacy_contact.json"), version="v1") == [("asthma-launch", "sent", JANE_MAIL)]
    [view] = await outcomes(harness)
    assert view["data"]["form_id"] == FORM and view["data"]["url"] == "https://pharma.example/asthma/register"


async def test_workflow_custom(harness: Harness) -> None:
    assert await fire(harness, fixture("workflow_custom.json"), version="v2") == [("asthma-launch", "sent", JANE_MAIL)]


async def test_workflow_custom_page_view(harness: Harness) -> None:
    assert await fire(harness, fixture("workflow_custom_page_view.json")) == [("asthma-launch", "sent", JANE_MAIL)]


async def test_workflow_crm_object(harness: Harness, fake: FakeHubSpot) -> None:
    assert await fire(harness, fixture("workflow_crm_object.json")) == [("asthma-launch", "sent", JANE_MAIL)]
    assert [r.path for r in fake.requests] == ["/crm/v3/objects/contacts/1246965"]  # no NPI in the body


# signatures and refusals: 401/403/400 as JSON, nothing stored


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
async def test_each_signature_version_is_accepted(harness: Harness, version: str) -> None:
    response = await deliver(harness, fixture("contact_property_change.json"), version=version)
    assert (response.status_code, response.json()) == (200, {"received": 1, "duplicates": 0, "event_ids": [1]})


async def test_signature_is_over_the_public_url_not_the_host_behind_the_proxy(harness: Harness) -> None:
    # The same app, reached under the internal name a reverse proxy forwards to.
    transport = httpx.ASGITransport(app=create_app(harness.rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://trigger-email.internal:8000") as internal:
        response = await deliver(harness, fixture("contact_property_change.json"), client=internal)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
async def test_altered_body_is_refused(harness: Harness, version: str) -> None:
    body = fixture("contact_property_change.json")
    headers = {"Content-Type": "application/json", **sign(body, version, at=harness.clock.now())}
    response = await harness.client.post(PATH, content=body.replace(b"1234567893", b"1679576722"), headers=headers)
    assert response.status_code == 401 and "does not match" in response.json()["error"]
    assert await nothing_stored(harness)


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
async def test_wrong_secret_is_refused(harness: Harness, version: str) -> None:
    response = await deliver(harness, fixture("contact_creation.json"), version=version, secret="another-app-secret")
    assert response.status_code == 401 and response.json()["error"]
    assert await nothing_stored(harness)


async def test_stale_timestamp_is_refused(harness: Harness) -> None:
    stale = harness.clock.now() - timedelta(minutes=5, seconds=1)
    response = await deliver(harness, fixture("contact_creation.json"), at=stale)
    assert (response.status_code, response.json()) == (401, {"error": "x-hubspot-request-timestamp is older than 5 minutes"})
    assert await nothing_stored(harness)


async def test_unsigned_request_is_refused(harness: Harness) -> None:
    response = await harness.client.post(PATH, content=fixture("contact_creation.json"), headers={"Content-Type": "application/json"})
    assert response.status_code == 401 and "missing" in response.json()["error"]
    assert await nothing_stored(harness)


async def test_other_portal_is_forbidden(harness: Harness) -> None:
    events = json.loads(fixture("contact_property_change.json"))
    response = await deliver(harness, [{**events[0], "portalId": 99999}])
    assert response.status_code == 403 and "99999" in response.json()["error"]
    assert await nothing_stored(harness)


async def test_malformed_json_is_a_bad_request(harness: Harness) -> None:
    response = await deliver(harness, b'[{"eventId": 1, "subscriptionType": "contact.creation",')
    assert response.status_code == 400 and response.json()["error"].startswith("body is not valid JSON")
    assert await nothing_stored(harness)


# at-least-once from HubSpot, once to the HCP


async def test_redelivered_batch_is_acknowledged_and_sends_nothing_again(harness: Harness) -> None:
    events = json.loads(fixture("webhooks_batch.json"))
    first = await fire(harness, events)
    assert len(harness.smtp.messages) == 3
    retry = [{**event, "attemptNumber": 1} for event in events]  # HubSpot's retry: same eventIds, next attempt
    response = await deliver(harness, retry)
    answer = response.json()
    assert (response.status_code, answer["received"], answer["duplicates"]) == (200, 0, 4)
    assert answer["event_ids"] == [1, 2, 3, 4]  # the events stored the first time
    await drain(harness.rt)
    assert len(harness.smtp.messages) == 3 and await fire(harness, retry) == first


async def test_same_event_id_on_two_subscriptions_is_processed_twice_and_each_redelivery_once(harness: Harness) -> None:
    """HubSpot documents eventId as not guaranteed unique: it is only unique with the portal
    and the subscription."""
    [one_sub] = interest_changed("1246965", event_id=7000)
    other_sub = {**one_sub, "subscriptionId": 2141599, "objectId": 1246999}
    response = await deliver(harness, [one_sub, other_sub])
    assert response.json() == {"received": 2, "duplicates": 0, "event_ids": [1, 2]}
    again = await deliver(harness, [{**one_sub, "attemptNumber": 1}, {**other_sub, "attemptNumber": 2}])
    assert again.json() == {"received": 0, "duplicates": 2, "event_ids": [1, 2]}
    await drain(harness.rt)
    assert sorted(e["event_key"] for e in await stored_events(harness)) == [f"{PORTAL}:2141542:7000", f"{PORTAL}:2141599:7000"]


async def test_redelivered_workflow_body_is_recognised_by_its_hash(harness: Harness) -> None:
    body = fixture("workflow_custom.json")
    await fire(harness, body)
    response = await deliver(harness, body)
    assert (response.status_code, response.json()) == (200, {"received": 0, "duplicates": 1, "event_ids": [1]})
    await drain(harness.rt)
    assert len(harness.smtp.messages) == 1


# property change without NPI → contact fetched → email → engagement on the timeline


def interest_changed(*contacts: str, event_id: int = 4100) -> list[dict[str, Any]]:
    return [
        {
            "eventId": event_id + n, "subscriptionId": 2141542, "portalId": PORTAL, "appId": 1160452,
            "occurredAt": 1767603540000, "subscriptionType": "contact.propertyChange", "attemptNumber": 0,
            "objectId": int(contact), "propertyName": "interest", "propertyValue": "Asthma", "changeSource": "CRM_UI",
            "sourceId": "userId:4051287",
        }
        for n, contact in enumerate(contacts)
    ]


async def test_property_change_without_npi_fetches_the_contact_sends_and_writes_back(harness: Harness, fake: FakeHubSpot) -> None:
    fake.contacts["1246970"] = {"npi": MEI, "email": MEI_MAIL, "firstname": "Mei", "lastname": "Chen"}
    assert await fire(harness, interest_changed("1246965", "1246970")) == [
        ("asthma-launch", "sent", JANE_MAIL), ("asthma-launch", "sent", MEI_MAIL),
    ]
    fetched = [(r.path, sorted(v for k, v in r.query if k == "properties")) for r in fake.requests]
    assert sorted(fetched) == [
        (f"/crm/v3/objects/contacts/{contact}", ["email", "firstname", "lastname", "npi"]) for contact in ("1246965", "1246970")
    ]
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in fake.requests)

    assert await push(harness) == {"pushed": 2, "retried": 0, "dead": 0}
    [sent] = fake.calls(EMAILS)
    assert contacts_of(sent.json["inputs"]) == ["1246965", "1246970"] and fake.calls(NOTES) == []
    subjects = {item["properties"]["hs_email_subject"] for item in sent.json["inputs"]}
    assert subjects == {"New asthma data for Pulmonary Disease practices", "New asthma data for Allergy & Immunology practices"}

    await open_email(harness, JANE_MAIL)
    await open_email(harness, MEI_MAIL)
    assert await push(harness) == {"pushed": 2, "retried": 0, "dead": 0}
    [opened] = fake.calls(NOTES)
    assert contacts_of(opened.json["inputs"]) == ["1246965", "1246970"] and len(fake.calls(EMAILS)) == 1
    assert any(
        item["properties"]["hs_note_body"].startswith("Opened 'New asthma data for Pulmonary Disease practices' (campaign asthma-launch, ref te")
        for item in opened.json["inputs"]
    )
    assert (await outbox(harness))["counts"] == {"pushed": 4}


@pytest.mark.parametrize("hubspot_settings", [{"use_contact_email": True}])
async def test_contact_email_is_a_candidate_after_the_directory_ones(harness: Harness, fake: FakeHubSpot) -> None:
    fake.contacts["1246965"]["email"] = "Jane.Doe@Private-Practice.example"
    harness.smtp.reject.update({JANE_MAIL: "550 5.1.1 User unknown", JANE_MAIL_2: "550 5.1.1 User unknown"})
    # The directory's two verified addresses are tried first; the contact's own comes last.
    assert await fire(harness, interest_changed("1246965")) == [("asthma-launch", "sent", "jane.doe@private-practice.example")]
    assert [envelope[1] for envelope in harness.smtp.envelopes] == [["jane.doe@private-practice.example"]]


@pytest.mark.parametrize("hubspot_settings", [{"use_contact_email": True}])
async def test_contact_email_does_not_outrank_the_directory(harness: Harness, fake: FakeHubSpot) -> None:
    fake.contacts["1246965"]["email"] = "jane@private-practice.example"
    assert await fire(harness, interest_changed("1246965")) == [("asthma-launch", "sent", JANE_MAIL)]


async def test_contact_email_is_ignored_unless_configured(harness: Harness, fake: FakeHubSpot) -> None:
    fake.contacts["1246965"]["email"] = "jane@private-practice.example"
    harness.smtp.reject.update({JANE_MAIL: "550 5.1.1 User unknown", JANE_MAIL_2: "550 5.1.1 User unknown"})
    assert await fire(harness, interest_changed("1246965")) == [("asthma-launch", "no_deliverable_email", JANE_MAIL_2)]
    assert [envelope[1] for envelope in harness.smtp.envelopes] == []


@pytest.mark.parametrize("contact", [{"email": "someone@clinic.example", "firstname": "No"}, None], ids=["no-npi", "gone"])
async def test_contact_without_npi_is_recorded_as_invalid_npi(harness: Harness, fake: FakeHubSpot, contact: Any) -> None:
    if contact is None:
        del fake.contacts["65059681032"]
    else:
        fake.contacts["65059681032"] = contact
    assert await fire(harness, fixture("contact_creation.json")) == [("cardio-webinar", "invalid_npi", None)]
    [view] = await outcomes(harness)
    assert "65059681032" in view["npi"] + view["reason"]
    assert [(e["status"], e["result"].startswith("triggers ")) for e in await stored_events(harness)] == [("done", True)]
    assert len(fake.requests) == 1 and harness.smtp.messages == []
    await drain(harness.rt)  # nothing left to retry
    assert len(fake.requests) == 1


async def test_a_contact_fetch_rate_limited_past_its_wait_pauses_pushes_too(harness: Harness, fake: FakeHubSpot) -> None:
    """HubSpot's limit is per app: a 429 on a read also holds back the writes."""
    from core.clock import iso

    await fire(harness, interest_changed("1246965"))
    fake.rate_limit(2, retry_after="9")
    await fire(harness, interest_changed("1246999", event_id=6000))
    assert [e["status"] for e in await stored_events(harness)] == ["done", "pending"], "the event waits its turn"
    waited = harness.clock.now()
    assert (await outbox(harness))["paused"] == {"hubspot": iso(waited + timedelta(seconds=9))}
    assert await push(harness) == {"pushed": 0, "retried": 0, "dead": 0}
    assert fake.calls(EMAILS) == []
    harness.clock.advance(timedelta(seconds=9))
    assert (await push(harness))["pushed"] == 1


async def test_rate_limited_contact_fetch_is_waited_out(harness: Harness, fake: FakeHubSpot) -> None:
    fake.rate_limit(1, retry_after="2")
    assert await fire(harness, interest_changed("1246965")) == [("asthma-launch", "sent", JANE_MAIL)]
    assert [r.status for r in fake.requests] == [429, 200]


async def test_hubspot_down_puts_the_event_back_until_it_answers(harness: Harness, fake: FakeHubSpot) -> None:
    fake.fail_next(3, status=503)
    assert await fire(harness, interest_changed("1246965")) == []
    [event] = await stored_events(harness)
    assert event["status"] == "pending" and "HubSpot API 503" in event["result"] and TOKEN not in event["result"]
    assert len(fake.requests) == 3  # three tries in the job, then it waits in the database, not in a loop
    await harness.later(seconds=31)
    assert [(v["campaign_id"], v["status"], recipient(v)) for v in await outcomes(harness)] == [("asthma-launch", "sent", JANE_MAIL)]
    assert [e["status"] for e in await stored_events(harness)] == ["done"] and len(fake.requests) == 4


# write-back under HubSpot's limits


async def test_rate_limited_push_waits_for_retry_after_then_is_accepted(harness: Harness, fake: FakeHubSpot) -> None:
    await fire(harness, fixture("contact_property_change.json"))
    fake.rate_limit(1, retry_after="120")
    assert await push(harness) == {"pushed": 0, "retried": 1, "dead": 0}
    [row] = (await outbox(harness, "pending"))["items"]
    assert "ten_secondly_rolling limit" in row["last_error"]

    harness.clock.advance(timedelta(seconds=119))
    assert await push(harness) == {"pushed": 0, "retried": 0, "dead": 0}
    assert len(fake.calls(EMAILS)) == 1  # still only the refused call

    harness.clock.advance(timedelta(seconds=2))
    assert await push(harness) == {"pushed": 1, "retried": 0, "dead": 0}
    assert [call.status for call in fake.calls(EMAILS)] == [429, 201]
    assert (await outbox(harness))["counts"] == {"pushed": 1}


async def test_per_item_error_dead_letters_that_item_only(harness: Harness, fake: FakeHubSpot) -> None:
    fake.contacts["1246970"] = {"npi": MEI, "email": MEI_MAIL}
    await fire(harness, interest_changed("1246965", "1246970"))
    del fake.contacts["1246970"]  # deleted in HubSpot before the engagement was written
    assert await push(harness) == {"pushed": 1, "retried": 0, "dead": 1}
    [call] = fake.calls(EMAILS)
    assert call.status == 207 and contacts_of(call.json["inputs"]) == ["1246965", "1246970"]
    [dead] = (await outbox(harness, "dead"))["items"]
    assert (dead["object_id"], "1246970 does not exist" in dead["last_error"]) == ("1246970", True)
    assert (await outbox(harness))["counts"] == {"pushed": 1, "dead": 1}
    assert await push(harness) == {"pushed": 0, "retried": 0, "dead": 0}  # a dead item is not retried on its own


# signature edge cases: a 4xx with a JSON reason, never a 500


@pytest.mark.parametrize("timestamp, reason", [
    ("future", "more than 5 minutes in the future"),
    ("soon", None),
    ("1767603600000.5", "not epoch milliseconds"),
    ("yesterday", "not epoch milliseconds"),
    ("", "missing x-hubspot-request-timestamp"),
    ("9" * 40, "not epoch milliseconds"),
    ("-1", "older than 5 minutes"),
])
async def test_v3_timestamps_that_are_not_fresh_epoch_millis_are_401(harness: Harness, timestamp: str, reason: str | None) -> None:
    body = fixture("contact_creation.json")
    if timestamp in ("future", "soon"):
        at = harness.clock.now() + (timedelta(minutes=5, seconds=1) if timestamp == "future" else timedelta(minutes=4))
        headers = sign(body, "v3", at=at)
    else:
        headers = sign(body, "v3", at=harness.clock.now())
        headers["X-HubSpot-Request-Timestamp"] = timestamp
    response = await harness.client.post(PATH, content=body, headers={"Content-Type": "application/json", **headers})
    if reason is None:
        assert response.status_code == 200, "four minutes of clock skew is within HubSpot's window"
        return
    assert response.status_code == 401 and reason in response.json()["error"]
    assert await nothing_stored(harness)


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
async def test_a_body_that_is_not_utf8_is_refused_with_json_not_a_500(harness: Harness, version: str) -> None:
    body = b'[{"eventId": 1, "subscriptionType": "contact.creation", "objectId": "\xff\xfe"}]'
    response = await deliver(harness, body, version=version)
    assert response.status_code in (400, 401) and "UTF-8" in response.json()["error"]
    assert await nothing_stored(harness)


# write-back that survives HubSpot's faults without writing anything twice


def timeline_ids(fake: FakeHubSpot) -> list[int]:
    return sorted(int(item["objectWriteTraceId"]) for item in fake.timeline())


async def outbox_ids(h: Harness) -> list[int]:
    return sorted(item["id"] for item in (await outbox(h))["items"])


async def test_429_then_500s_then_a_lost_reply_leave_exactly_one_timeline_entry_per_activity(
    harness: Harness, fake: FakeHubSpot
) -> None:
    fake.contacts["1246970"] = {"npi": MEI, "email": MEI_MAIL}
    await fire(harness, interest_changed("1246965", "1246970"))
    await open_email(harness, JANE_MAIL)
    assert len(await outbox_ids(harness)) == 3

    fake.rate_limit(1, retry_after="5")
    assert await push(harness) == {"pushed": 0, "retried": 3, "dead": 0}
    calls = len(fake.calls(EMAILS)) + len(fake.calls(NOTES))

    harness.clock.advance(timedelta(seconds=1.5))
    created = {"eventId": 5000, "subscriptionId": 2141543, "portalId": PORTAL, "occurredAt": 1767603540000,
               "subscriptionType": "contact.creation", "objectId": 1246999}
    await fire(harness, [created])  # a new email, sent 1.5 s after the 429
    assert len(await outbox_ids(harness)) == 4
    assert await push(harness) == {"pushed": 0, "retried": 0, "dead": 0}
    assert len(fake.calls(EMAILS)) + len(fake.calls(NOTES)) == calls, "HubSpot asked for 5 s: nothing goes before"

    harness.clock.advance(timedelta(seconds=3.5))
    fake.fail_next(2, status=500)
    assert await push(harness) == {"pushed": 0, "retried": 4, "dead": 0}
    harness.clock.advance(timedelta(seconds=15))
    fake.lose_replies(1)
    assert await push(harness) == {"pushed": 1, "retried": 3, "dead": 0}
    assert len(fake.timeline()) == 4, "the lost answer's emails were written all the same"
    harness.clock.advance(timedelta(seconds=30))
    assert await push(harness) == {"pushed": 3, "retried": 0, "dead": 0}

    assert timeline_ids(fake) == await outbox_ids(harness), "one timeline entry per activity, none twice"
    assert (await outbox(harness))["counts"] == {"pushed": 4}
    creates = [item for call in fake.calls(EMAILS) if call.status in (201, -1) for item in call.json["inputs"]]
    assert len(creates) == 3, "the emails whose answer was lost were found, not created again"


async def test_outbox_lease_expiry_with_two_pushers_writes_each_activity_once(harness: Harness, fake: FakeHubSpot) -> None:
    import asyncio

    from core.outbox import LEASE

    await fire(harness, interest_changed("1246965"))
    await open_email(harness, JANE_MAIL)
    release = fake.hold_replies()
    first = asyncio.create_task(push(harness))
    assert await asyncio.to_thread(fake.held.wait, 10), "the first pusher's call reached HubSpot"
    try:
        assert await push(harness) == {"pushed": 0, "retried": 0, "dead": 0}, "a leased batch is not taken twice"
        harness.clock.advance(LEASE + timedelta(seconds=1))
        second = await push(harness)
    finally:
        release.set()
    assert second == {"pushed": 2, "retried": 0, "dead": 0}
    assert await first == {"pushed": 1, "retried": 0, "dead": 0}, "its late answer for the email still counts"
    assert timeline_ids(fake) == await outbox_ids(harness)
    assert (await outbox(harness))["counts"] == {"pushed": 2}
