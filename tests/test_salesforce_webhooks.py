"""Salesforce end to end: a payload goes in through the real routes, the real arq worker runs,
and what a user sees comes out: the SOAP Ack or fault, each trigger's outcome from
`GET /v1/triggers/{id}`, the email in the SMTP sink, the Tasks the fake org received.

Records missing from a notification are fetched with the real simple-salesforce from a fake
org served over HTTPS (tests/fakes/fake_salesforce.py)."""

from __future__ import annotations

import re
import socket
import sys
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
import yaml
from sqlalchemy import func, select, text

from connectors.salesforce import sign_event
from core.db import inbound_events, triggers
from core.npi import make_npi
from core.outbox import push_outbox
from tests.fakes.fake_salesforce import FakeSalesforce, fake, fake_server  # noqa: F401  (fixtures)
from tests.harness import BASE_CONFIG, JANE, MEI, OMAR, Harness, drain, load_directory

FIXTURES = Path(__file__).parent / "fixtures" / "salesforce"
ORG = "00D5g000004ABCDEAA"
SECRET = "events-secret-0123456789"
LEAD = "00Q5g00000AbCdEAAZ"
CONTACT = "0035g00000NOtUbAAL"
SOAP = {"soapenv": "http://schemas.xmlsoap.org/soap/envelope/", "om": "http://soap.sforce.com/2005/09/outbound"}
SUBJECT = "New asthma data for Pulmonary Disease practices"
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
SOAP_HEADERS = {"content-type": "text/xml; charset=utf-8", "soapaction": '""'}
EVENT_HEADERS = {"content-type": "application/json", "authorization": f"Bearer {SECRET}"}

TRIGGERS: list[dict[str, Any]] = [
    {"from": "salesforce", "on": "record_change", "send": "asthma-launch",
     "where": {"object": "Contact", "field": "Interest__c", "equals": "Asthma"}},
    {"from": "salesforce", "on": "record_change", "send": "asthma-launch",
     "where": {"object": "Lead", "field": "Status", "changed_to": "Open - Not Contacted"}},
    {"from": "salesforce", "on": "record_change", "send": "asthma-launch",
     "where": {"object": "Lead", "field": "Interest__c", "in": ["Asthma", "COPD"]}},
    {"from": "salesforce", "on": "record_change", "send": "asthma-launch",
     "where": {"field": "Specialty__c", "equals": "Pulmonary Disease"}},  # any object
    {"from": "salesforce", "on": "form_submission", "send": "asthma-launch", "where": {"form_id": "asthma-sample-request"}},
    {"from": "salesforce", "on": "page_view", "send": "asthma-launch", "where": {"url": "https://pharma.example/asthma/*"}},
    {"from": "salesforce", "on": "created", "send": "cardio-webinar", "where": {"object": "Lead"}},
]


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def config_text(fake: FakeSalesforce, request: pytest.FixtureRequest) -> str:
    """The harness config plus `crm.salesforce` on the fake org; parametrize indirectly with
    a dict to change `crm.salesforce` keys."""
    salesforce = {
        "instance_url": fake.url,
        "login_url": fake.url,
        "organization_id": ORG,
        "npi_fields": {"Contact": "NPI__c", "Lead": "NPI__c", "HCP_Profile__c": "NPI__c"},
        "events_secret": SECRET,
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        **getattr(request, "param", {}),
    }
    return BASE_CONFIG + yaml.safe_dump({"crm": {"salesforce": salesforce}, "triggers": TRIGGERS}, sort_keys=False)


# -- the helper: payload in, what a user sees out ----------------------------------------------


@dataclass
class Delivery:
    status: int
    body: str
    outcomes: dict[str, list[str]] = field(default_factory=dict)
    """Notification / event id → one line per trigger it made: `sent to <address>` or
    `<status>: <reason>`; [] when no rule matched or it is not processed yet;
    [`event failed: <error>`] when processing it failed."""

    @property
    def ack(self) -> bool:
        root = ET.fromstring(self.body)
        return self.status == 200 and root.findtext("soapenv:Body/om:notificationsResponse/om:Ack", namespaces=SOAP) == "true"

    @property
    def fault(self) -> tuple[int, str, str]:
        """(HTTP status, faultcode, faultstring) of a SOAP fault."""
        found = ET.fromstring(self.body).find("soapenv:Body/soapenv:Fault", SOAP)
        assert found is not None, self.body
        return self.status, found.findtext("faultcode") or "", found.findtext("faultstring") or ""


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


async def deliver(
    h: Harness, payload: str | bytes, *, route: str | None = None, headers: dict[str, str] | None = None
) -> Delivery:
    """POST a fixture (by file name) or a raw body the way Salesforce would, run the worker,
    and report the answer and every trigger made so far."""
    body = fixture(payload) if isinstance(payload, str) else payload
    is_xml = payload.endswith(".xml") if isinstance(payload, str) else body.lstrip()[:1] == b"<"
    route = route or ("outbound" if is_xml else "events")
    if headers is None:
        headers = SOAP_HEADERS if route == "outbound" else EVENT_HEADERS
    response = await h.client.post(f"/webhooks/salesforce/{route}", content=body, headers=headers)
    await drain(h.rt)
    return Delivery(response.status_code, response.text, await outcomes(h))


async def post_outbound(h: Harness, body: bytes) -> Any:
    """POST an Outbound Message and nothing else: no worker run, no database read."""
    return await h.client.post("/webhooks/salesforce/outbound", content=body, headers=SOAP_HEADERS)


async def outcomes(h: Harness) -> dict[str, list[str]]:
    async with h.rt.db.connect() as connection:
        rows = (
            await connection.execute(select(inbound_events.c.event_key, inbound_events.c.status, inbound_events.c.result))
        ).all()
    found: dict[str, list[str]] = {}
    for event_key, status, result in rows:
        if status == "failed":
            found[event_key] = [f"event failed: {result}"]
        else:
            found[event_key] = [await outcome_line(h, trigger_id) for trigger_id in re.findall(r"trg_[0-9a-f]+", result or "")]
    return found


async def outcome_line(h: Harness, trigger_id: str) -> str:
    view = await h.outcome(trigger_id)
    if view["status"] == "sent":
        return f"sent to {view['messages'][0]['to']}"
    return f"{view['status']}: {view['reason']}"


async def stored(h: Harness) -> int:
    async with h.rt.db.connect() as connection:
        return int((await connection.execute(select(func.count()).select_from(inbound_events))).scalar_one())


def signed(h: Harness, body: bytes, *, age: float = 0, secret: str = SECRET) -> dict[str, str]:
    timestamp = int(h.clock.now().timestamp() - age)
    return {
        "content-type": "application/json",
        "x-trigger-email-timestamp": str(timestamp),
        "x-trigger-email-signature": "sha256=" + sign_event(secret, timestamp, body),
    }


async def push(h: Harness) -> dict[str, int]:
    return await push_outbox(h.rt, h.rt.extras["connectors"])


def tasks(fake: FakeSalesforce) -> list[dict[str, Any]]:
    """Every Task record sent to sObject Collections, in order."""
    return [record for call in fake.calls("composite/sobjects", "POST") for record in call.json()["records"]]


# -- one test per documented payload -----------------------------------------------------------


async def test_outbound_contact(harness: Harness) -> None:
    delivery = await deliver(harness, "outbound_contact.xml")
    assert delivery.ack and delivery.outcomes == {"04l5g00000Gx7QzAAJ": ["sent to jane.doe@clinic.example"]}
    assert [str(m["Subject"]) for m in harness.smtp.to("jane.doe@clinic.example")] == [SUBJECT]


async def test_outbound_lead_without_npi_fetches_the_record(harness: Harness, fake: FakeSalesforce) -> None:
    fake.add_record("Lead", LEAD, NPI__c=JANE, LastName="Nguyen")
    delivery = await deliver(harness, "outbound_lead.xml")
    assert delivery.ack and delivery.outcomes == {"04l5g00000Gx7R0AAJ": ["sent to jane.doe@clinic.example"]}
    assert [c.path for c in fake.calls("/sobjects/Lead/", "GET")] == [f"/services/data/v59.0/sobjects/Lead/{LEAD}"]


async def test_outbound_multiple(harness: Harness, fake: FakeSalesforce) -> None:
    fake.add_record("Contact", "0035g00000NOtUeAAL", NPI__c=MEI)
    delivery = await deliver(harness, "outbound_multiple.xml")
    assert delivery.ack and delivery.outcomes == {
        "04l5g00000Gx7S1AAJ": ["sent to jane.doe@clinic.example"],
        "04l5g00000Gx7S2AAJ": [],  # Interest__c COPD: no rule
        "04l5g00000Gx7S3AAJ": ["sent to mei.chen@allergy.example"],  # NPI fetched
    }


async def test_outbound_custom_object(harness: Harness) -> None:
    delivery = await deliver(harness, "outbound_custom_object.xml")
    assert delivery.ack and delivery.outcomes == {"04l5g00000Gx7T1AAJ": ["sent to jane.doe@clinic.example"]}


async def test_flow_record_change_with_bearer(harness: Harness) -> None:
    delivery = await deliver(harness, "flow_record_change.json")
    assert (delivery.status, delivery.body) == (200, '{"received":1,"duplicates":0,"event_ids":[1]}')
    assert delivery.outcomes == {"flow-0035g00000NOtUbAAL-20260105085930": ["sent to jane.doe@clinic.example"]}


async def test_flow_record_change_without_changed(harness: Harness, fake: FakeSalesforce) -> None:
    fake.add_record("Lead", LEAD, NPI__c=MEI)
    delivery = await deliver(harness, "flow_record_change_no_changed.json")
    assert delivery.status == 200 and list(delivery.outcomes.values()) == [["sent to mei.chen@allergy.example"]]


async def test_apex_form_submission_with_hmac(harness: Harness) -> None:
    body = fixture("apex_form_submission.json")
    delivery = await deliver(harness, body, headers=signed(harness, body, age=299))
    assert delivery.status == 200 and delivery.outcomes == {"a0B5g000001abcdEAA": ["sent to jane.doe@clinic.example"]}


async def test_platform_event_batch(harness: Harness, fake: FakeSalesforce) -> None:
    fake.add_record("Contact", CONTACT, NPI__c=JANE)
    fake.add_record("Lead", LEAD, NPI__c=OMAR)
    delivery = await deliver(harness, "platform_event_batch.json")
    assert delivery.body == '{"received":2,"duplicates":0,"event_ids":[1,2]}' and delivery.outcomes == {
        "e-17-0001": ["sent to jane.doe@clinic.example"], "e-17-0002": ["sent to omar.haddad@heart.example"],
    }


# -- refusals: nothing stored, nothing sent ----------------------------------------------------


async def test_wrong_org_is_a_403_fault(harness: Harness) -> None:
    body = fixture("outbound_contact.xml").replace(ORG.encode(), b"00D000000000001AAA")
    delivery = await deliver(harness, body)
    assert delivery.fault == (403, "soapenv:Client", "OrganizationId 00D000000000001AAA is not the configured org")
    assert await stored(harness) == 0 and harness.smtp.messages == []


@pytest.mark.parametrize(
    "body",
    [
        b"", b"<soapenv:Envelope", b"<not-soap/>", b"\xff\xfe<",
        fixture("outbound_contact.xml").replace(b"<Id>04l5g00000Gx7QzAAJ</Id>", b""),  # a notification without Id
    ],
)
async def test_malformed_outbound_message_is_a_400_fault(harness: Harness, body: bytes) -> None:
    delivery = await deliver(harness, body, route="outbound")
    assert delivery.fault[:2] == (400, "soapenv:Client")
    assert await stored(harness) == 0


async def test_json_at_the_outbound_route_is_a_415_fault(harness: Harness) -> None:
    delivery = await deliver(harness, "flow_record_change.json", route="outbound")
    assert delivery.fault[:2] == (415, "soapenv:Client") and "/webhooks/salesforce/events" in delivery.fault[2]
    assert await stored(harness) == 0


async def test_xml_at_the_events_route_is_415_even_with_the_secret(harness: Harness) -> None:
    delivery = await deliver(harness, "outbound_contact.xml", route="events", headers={"authorization": f"Bearer {SECRET}"})
    assert delivery.status == 415 and "/webhooks/salesforce/outbound" in delivery.body
    assert await stored(harness) == 0


async def test_oversized_outbound_message_is_a_413_fault(harness: Harness) -> None:
    body = fixture("outbound_contact.xml").replace(b"<sf:LastName>", b"<sf:LastName>" + b"x" * 4 * 1024 * 1024)
    delivery = await deliver(harness, body)
    assert delivery.fault[:2] == (413, "soapenv:Client") and await stored(harness) == 0


_OPENED: list[str] = []
_WATCHING: list[bool] = []


def _record_opens(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and args and "xxe-secret" in str(args[0]):
        _OPENED.append(str(args[0]))


def watch_opens() -> None:
    """Record every open of a file named xxe-secret*. An audit hook cannot be removed, so it is
    added once per process, and it only appends to a list."""
    if not _WATCHING:
        sys.addaudithook(_record_opens)
        _WATCHING.append(True)


async def test_xxe_reads_no_file_and_fetches_no_url(harness: Harness, tmp_path: Path) -> None:
    watch_opens()
    secret = tmp_path / "xxe-secret.txt"
    secret.write_text("TOP-SECRET-MARKER")
    assert secret.read_text() and _OPENED  # the hook sees reads of that file
    _OPENED.clear()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/xxe"
        doctype = f'<!DOCTYPE e [<!ENTITY file SYSTEM "{secret.as_uri()}"><!ENTITY web SYSTEM "{url}">]>'
        body = fixture("outbound_contact.xml").replace(b"?>", b"?>" + doctype.encode(), 1)
        body = body.replace(b">Jane<", b">&file;&web;<")
        delivery = await deliver(harness, body)
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()[0].close()
    assert delivery.fault[:2] == (400, "soapenv:Client") and "TOP-SECRET" not in delivery.body
    assert _OPENED == [] and await stored(harness) == 0


async def test_billion_laughs_is_refused_without_expanding(harness: Harness) -> None:
    entities = '<!ENTITY l0 "lol">' + "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    body = f'<?xml version="1.0"?><!DOCTYPE lolz [{entities}]><lolz>&l9;</lolz>'.encode()
    tracemalloc.start()
    started = time.monotonic()
    try:
        delivery = await deliver(harness, body, route="outbound")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert delivery.fault[:2] == (400, "soapenv:Client") and "DTD" in delivery.fault[2]
    assert time.monotonic() - started < 2 and peak < 16 * 1024 * 1024  # expanded: 3 GB
    assert await stored(harness) == 0


@pytest.mark.parametrize(
    "credentials",
    ["none", "wrong bearer", "basic", "stale signature", "future signature", "signature of another body", "wrong secret"],
)
async def test_events_without_valid_credentials_are_401(harness: Harness, credentials: str) -> None:
    body = fixture("flow_record_change.json")
    headers = {
        "none": {},
        "wrong bearer": {"authorization": "Bearer not-the-secret"},
        "basic": {"authorization": f"Basic {SECRET}"},
        "stale signature": signed(harness, body, age=301),
        "future signature": signed(harness, body, age=-301),
        "signature of another body": signed(harness, body.replace(b"Asthma", b"COPD")),
        "wrong secret": signed(harness, body, secret="another-secret"),
    }[credentials]
    delivery = await deliver(harness, body, headers=headers)
    assert delivery.status == 401 and await stored(harness) == 0 and harness.smtp.messages == []


async def test_a_failed_store_is_a_server_fault_and_the_retry_is_acknowledged(harness: Harness) -> None:
    async with harness.rt.db.begin() as connection:
        await connection.execute(text("ALTER TABLE inbound_events RENAME TO inbound_events_away"))
    response = await post_outbound(harness, fixture("outbound_contact.xml"))
    async with harness.rt.db.begin() as connection:
        await connection.execute(text("ALTER TABLE inbound_events_away RENAME TO inbound_events"))
    failed = Delivery(response.status_code, response.text)
    # Not an outage (the database answers; a table is missing): a Server fault 500, which Salesforce retries.
    assert failed.fault[:2] == (500, "soapenv:Server") and harness.smtp.messages == []
    retried = await deliver(harness, "outbound_contact.xml")
    assert retried.ack and retried.outcomes == {"04l5g00000Gx7QzAAJ": ["sent to jane.doe@clinic.example"]}


# -- delivery semantics ------------------------------------------------------------------------


async def test_redelivered_notification_is_acknowledged_and_not_sent_again(harness: Harness) -> None:
    first = await deliver(harness, "outbound_contact.xml")
    again = await deliver(harness, "outbound_contact.xml")
    assert first.ack and again.ack and again.outcomes == {"04l5g00000Gx7QzAAJ": ["sent to jane.doe@clinic.example"]}
    assert len(harness.smtp.messages) == 1 and await stored(harness) == 1


async def test_redelivered_event_is_counted_as_duplicate(harness: Harness) -> None:
    await deliver(harness, "flow_record_change.json")
    again = await deliver(harness, "flow_record_change.json")
    assert again.body == '{"received":0,"duplicates":1,"event_ids":[1]}' and len(harness.smtp.messages) == 1


async def test_acknowledged_notification_whose_job_was_lost_is_still_processed(harness: Harness) -> None:
    response = await post_outbound(harness, fixture("outbound_contact.xml"))
    assert response.status_code == 200
    await harness.rt.queue.redis.flushdb()  # type: ignore[union-attr]  # Redis lost the job after the Ack
    await harness.later(seconds=30)
    assert await outcomes(harness) == {"04l5g00000Gx7QzAAJ": ["sent to jane.doe@clinic.example"]}


async def test_rate_limited_record_fetch_is_retried_later(harness: Harness, fake: FakeSalesforce) -> None:
    fake.add_record("Lead", LEAD, NPI__c=JANE)
    fake.limit_exceeded(retry_after=60)
    assert (await deliver(harness, "outbound_lead.xml")).ack and harness.smtp.messages == []
    await harness.later(seconds=61)
    assert await outcomes(harness) == {"04l5g00000Gx7R0AAJ": ["sent to jane.doe@clinic.example"]}


async def test_record_without_npi_is_invalid_npi_naming_the_record(harness: Harness, fake: FakeSalesforce) -> None:
    fake.add_record("Lead", LEAD, NPI__c=None)
    delivery = await deliver(harness, "outbound_lead.xml")
    assert delivery.outcomes == {"04l5g00000Gx7R0AAJ": [f"invalid_npi: npi must be 10 digits, got '(none on Lead {LEAD})'"]}


async def test_deleted_record_is_invalid_npi_naming_the_record(harness: Harness) -> None:
    delivery = await deliver(harness, "outbound_lead.xml")  # the fake org has no such Lead: 404
    assert delivery.outcomes == {"04l5g00000Gx7R0AAJ": [f"invalid_npi: npi must be 10 digits, got '(none on Lead {LEAD})'"]}


async def test_object_without_an_npi_field_is_invalid_npi_even_with_a_long_name(harness: Harness) -> None:
    long_name = "Prescriber_Engagement_Profile_Extension__c"  # not in npi_fields
    body = fixture("outbound_custom_object.xml").replace(b"sf:HCP_Profile__c", f"sf:{long_name}".encode())
    delivery = await deliver(harness, body)
    assert delivery.outcomes == {"04l5g00000Gx7T1AAJ": ["invalid_npi: npi must be 10 digits, got '(none on a015g00000XyZ12AAB)'"]}


@pytest.mark.parametrize("config_text", [{"use_record_email": True}], indirect=True)
@pytest.mark.parametrize(
    ("rejected", "expected"),
    [([], "jane.doe@clinic.example"), (["jane.doe@clinic.example", "jdoe@health.example"], "j.doe@springfield-pulm.example")],
)
async def test_use_record_email_ranks_the_record_address_after_the_directory(
    harness: Harness, fake: FakeSalesforce, rejected: list[str], expected: str
) -> None:
    fake.add_record("Lead", LEAD, NPI__c=JANE, Email="J.Doe@springfield-pulm.example")
    harness.smtp.reject.update({address: "550 5.1.1 No such user" for address in rejected})
    delivery = await deliver(harness, "outbound_lead.xml")
    assert delivery.outcomes == {"04l5g00000Gx7R0AAJ": [f"sent to {expected}"]}


# -- Tasks back on the record --------------------------------------------------------------------


async def test_sent_and_opened_become_completed_tasks_on_the_lead(harness: Harness, fake: FakeSalesforce) -> None:
    fake.add_record("Lead", LEAD, NPI__c=JANE)
    await deliver(harness, "outbound_lead.xml")
    assert await push(harness) == {"pushed": 1, "retried": 0, "dead": 0}

    [email] = harness.smtp.messages
    pixel = re.search(r"/t/o/[A-Za-z0-9._\-]+", email.get_body(("html",)).get_content())
    assert pixel is not None
    harness.clock.advance(timedelta(minutes=5))  # a person, not a prefetcher right after delivery
    assert (await harness.client.get(pixel.group(0), headers={"user-agent": BROWSER})).status_code == 200
    assert await push(harness) == {"pushed": 1, "retried": 0, "dead": 0}

    sent, opened = tasks(fake)
    assert {k: sent[k] for k in ("WhoId", "Subject", "Status", "TaskSubtype", "ActivityDate")} == {
        "WhoId": LEAD, "Subject": f"Email sent: {SUBJECT}", "Status": "Completed", "TaskSubtype": "Email",
        "ActivityDate": "2026-01-05",
    }
    assert "To: jane.doe@clinic.example" in sent["Description"] and "Campaign: asthma-launch" in sent["Description"]
    assert (opened["WhoId"], opened["Subject"]) == (LEAD, f"Email opened: {SUBJECT}")
    assert "Opens: 1" in opened["Description"]
    assert len(fake.created) == 2


def outbound_message(contacts: list[tuple[str, str]], batch: int) -> bytes:
    """An Outbound Message shaped like the documented one, one Contact per (Id, NPI)."""
    notifications = "".join(
        f"<Notification><Id>04l5g{batch:04d}{index:06d}AAJ</Id>"
        f'<sObject xsi:type="sf:Contact" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">'
        f"<sf:Id>{contact_id}</sf:Id><sf:Interest__c>Asthma</sf:Interest__c><sf:NPI__c>{npi}</sf:NPI__c>"
        f"</sObject></Notification>"
        for index, (contact_id, npi) in enumerate(contacts)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
        f'<notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>{ORG}</OrganizationId>'
        "<ActionId>04k5g000000CaRkAAK</ActionId><SessionId xsi:nil=\"true\"/>"
        "<EnterpriseUrl>https://pharma-example.my.salesforce.com/services/Soap/c/59.0/00D5g000004ABCD</EnterpriseUrl>"
        "<PartnerUrl>https://pharma-example.my.salesforce.com/services/Soap/u/59.0/00D5g000004ABCD</PartnerUrl>"
        f"{notifications}</notifications></soapenv:Body></soapenv:Envelope>"
    ).encode()


async def engage(h: Harness, email: Any) -> None:
    """Open the email, click both tracked links, unsubscribe with one click, like a reader."""
    html = email.get_body(("html",)).get_content()
    for path in re.findall(r"/t/[oc]/[A-Za-z0-9._\-]+", html):
        assert (await h.client.get(path, headers={"user-agent": BROWSER})).status_code in (200, 302)
    unsubscribe = re.search(r"<https://[^>]+(/u/[^>]+)>", str(email["List-Unsubscribe"]))
    assert unsubscribe is not None
    response = await h.client.post(unsubscribe.group(1), content=b"List-Unsubscribe=One-Click",
                                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200


async def pulmonologists(harness: Harness, tmp_path: Path, count: int) -> list[tuple[str, str]]:
    """`count` Salesforce contacts (record id, NPI), each a pulmonologist in the directory."""
    contacts = [(f"0035g{index:010d}AAA", make_npi(f"1{index:08d}")) for index in range(count)]
    rows = "".join(f"{npi},Pat{i},Lung{i},MD,Pulmonary Disease,NJ,pat{i}@lung.example\n" for i, (_, npi) in enumerate(contacts))
    await load_directory(harness.rt, tmp_path, "npi,first_name,last_name,credential,specialty,state,email\n" + rows)
    return contacts


async def test_250_activities_reach_salesforce_in_two_collection_calls(
    harness: Harness, fake: FakeSalesforce, tmp_path: Path
) -> None:
    contacts = await pulmonologists(harness, tmp_path, 50)
    assert (await deliver(harness, outbound_message(contacts, 1))).ack and len(harness.smtp.messages) == 50
    harness.clock.advance(timedelta(minutes=5))
    for email in harness.smtp.messages:
        await engage(harness, email)  # + opened, 2 × clicked, unsubscribed = 5 activities an email

    assert await push(harness) == {"pushed": 250, "retried": 0, "dead": 0}
    assert [len(call.json()["records"]) for call in fake.calls("composite/sobjects", "POST")] == [200, 50]
    by_kind = Counter(task["Subject"].split(":")[0] for task in tasks(fake))
    assert by_kind == {"Email sent": 50, "Email opened": 50, "Email clicked": 100, "Unsubscribed": 50}
    assert {task["WhoId"] for task in tasks(fake)} == {contact_id for contact_id, _ in contacts}


async def test_request_limit_exceeded_is_retried_after_retry_after(harness: Harness, fake: FakeSalesforce) -> None:
    await deliver(harness, "outbound_contact.xml")
    fake.limit_exceeded(retry_after=120)
    assert await push(harness) == {"pushed": 0, "retried": 1, "dead": 0}
    [pending] = (await harness.client.get("/v1/outbox", headers=harness.auth)).json()["items"]
    assert pending["status"] == "pending" and "REQUEST_LIMIT_EXCEEDED" in pending["last_error"]

    harness.clock.advance(timedelta(seconds=119))
    assert await push(harness) == {"pushed": 0, "retried": 0, "dead": 0}  # not due: no call spent
    harness.clock.advance(timedelta(seconds=2))
    assert await push(harness) == {"pushed": 1, "retried": 0, "dead": 0}
    assert [task["Subject"] for task in tasks(fake)] == [f"Email sent: {SUBJECT}"] * 2  # refused, then accepted
    assert len(fake.created) == 1 and len(fake.calls("composite/sobjects")) == 2


async def test_daily_api_budget_is_in_metrics(harness: Harness, fake: FakeSalesforce) -> None:
    fake.add_record("Lead", LEAD, NPI__c=JANE)
    await deliver(harness, "outbound_lead.xml")  # one sObject GET
    await push(harness)  # one sObject Collections call
    metrics = (await harness.client.get("/metrics", headers=harness.auth)).text
    assert 'trigger_email_crm_api_usage{crm="salesforce",kind="used"} 2.0' in metrics
    assert 'trigger_email_crm_api_usage{crm="salesforce",kind="limit"} 15000.0' in metrics


async def test_openapi_describes_both_routes(harness: Harness) -> None:
    paths = (await harness.client.get("/openapi.json")).json()["paths"]
    outbound, events = paths["/webhooks/salesforce/outbound"]["post"], paths["/webhooks/salesforce/events"]["post"]
    assert sorted(outbound["responses"]) == ["200", "400", "403", "413", "415", "500", "503"]
    assert sorted(events["responses"]) == ["200", "400", "401", "413", "415", "503"]
    for code, response in outbound["responses"].items():
        if code != "200":
            assert list(response["content"]) == ["text/xml"], (code, response)  # SOAP faults
    for code, response in events["responses"].items():
        if code != "200":
            assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


async def test_crm_fields_that_cannot_be_stored_are_dropped_with_a_note(harness: Harness, fake: FakeSalesforce) -> None:
    """A record's field holding NUL (PostgreSQL refuses it) or 20,000 characters is left out
    of the trigger's data, the trigger says so, and the email still goes out."""
    fake.add_record("Lead", LEAD, NPI__c=JANE, Nickname__c="Ngu\x00yen", Description="d" * 20_000, Rating="Hot")
    delivery = await deliver(harness, "outbound_lead.xml")
    assert delivery.ack and delivery.outcomes == {"04l5g00000Gx7R0AAJ": ["sent to jane.doe@clinic.example"]}
    async with harness.rt.db.connect() as connection:
        [trigger_id] = (await connection.execute(select(triggers.c.id))).scalars().all()
    view = await harness.outcome(trigger_id)
    assert view["data"]["Rating"] == "Hot"
    assert "Nickname__c" not in view["data"] and "Description" not in view["data"]
    assert view["notes"] == [
        "data field 'Nickname__c' dropped: contains a NUL character",
        "data field 'Description' dropped: longer than 10000 characters (20000)",
    ]


async def test_an_npi_field_holding_nul_ends_as_invalid_npi(harness: Harness, fake: FakeSalesforce) -> None:
    fake.add_record("Lead", LEAD, NPI__c="12345\x0067893")
    delivery = await deliver(harness, "outbound_lead.xml")
    assert delivery.ack
    [line] = delivery.outcomes["04l5g00000Gx7R0AAJ"]
    assert line.startswith("invalid_npi: npi must be 10 digits"), line


# -- write-back that survives Salesforce's faults without a second Task ---------------------------


async def test_429_then_500s_then_a_lost_reply_leave_exactly_one_task_per_activity(
    harness: Harness, fake: FakeSalesforce, tmp_path: Path
) -> None:
    contacts = await pulmonologists(harness, tmp_path, 3)
    assert (await deliver(harness, outbound_message(contacts, 7))).ack
    harness.clock.advance(timedelta(minutes=5))
    await engage(harness, harness.smtp.messages[0])  # opened, 2 × clicked, unsubscribed
    assert (await harness.client.get("/v1/outbox", headers=harness.auth)).json()["counts"] == {"pending": 7}

    fake.fail_next(429, [{"message": "slow down", "errorCode": "REQUEST_LIMIT_EXCEEDED"}], {"Retry-After": "5"})
    first = await push(harness)
    assert first == {"pushed": 0, "retried": 7, "dead": 0}
    harness.clock.advance(timedelta(seconds=1.5))
    assert await push(harness) == {"pushed": 0, "retried": 0, "dead": 0}, "Salesforce asked for 5 s"
    harness.clock.advance(timedelta(seconds=3.5))
    fake.fail_next(500, [{"message": "oops", "errorCode": "UNKNOWN_EXCEPTION"}])
    assert (await push(harness))["pushed"] == 0
    harness.clock.advance(timedelta(seconds=15))
    fake.lose_replies(1)
    assert (await push(harness))["pushed"] == 0
    assert len(fake.created) == first["retried"], "the lost answer's Tasks were saved all the same"
    harness.clock.advance(timedelta(seconds=30))
    assert (await push(harness))["pushed"] == first["retried"]

    assert len(fake.created) == first["retried"], "one Task per activity, none twice"
    assert sorted(t["Description"].rsplit("Ref: ", 1)[1] for t in fake.created) == sorted(
        set(t["Description"].rsplit("Ref: ", 1)[1] for t in fake.created)
    )
    assert (await harness.client.get("/v1/outbox", headers=harness.auth)).json()["counts"] == {"pushed": first["retried"]}
