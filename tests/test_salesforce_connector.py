"""The Salesforce connector against documented payloads and a fake org served over HTTPS."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from config import Config, Settings, parse_config
from connectors.base import InboundRequest, WebhookRejected, build_connectors
from connectors.salesforce import SalesforceConnector, request_kind, sign_event, soap_ack, soap_fault
from core.activities import Activity
from core.clock import ManualClock
from tests.fakes.fake_salesforce import FakeSalesforce, fake, fake_server  # noqa: F401  (fixtures)

FIXTURES = Path(__file__).parent / "fixtures" / "salesforce"
ORG_18 = "00D5g000004ABCDEAA"
ORG_15 = "00D5g000004ABCD"
SECRET = "events-secret-0123456789"
SOAP_NS = {"soapenv": "http://schemas.xmlsoap.org/soap/envelope/", "om": "http://soap.sforce.com/2005/09/outbound"}
NPI = "1234567893"


# -- helpers ---------------------------------------------------------------------------------


def make_config(**salesforce: Any) -> Config:
    crm = {"organization_id": ORG_18, "events_secret": SECRET, **salesforce}
    text = yaml.safe_dump({"sender": {"from": "A <a@b.example>"}, "crm": {"salesforce": crm}})
    return parse_config(text, base=Path("."), env={})


_OPEN: list[SalesforceConnector] = []


def make_connector(clock: ManualClock | None = None, **salesforce: Any) -> SalesforceConnector:
    connector = SalesforceConnector(make_config(**salesforce), Settings(), clock or ManualClock())
    _OPEN.append(connector)
    return connector


@pytest.fixture(autouse=True)
def _close_sessions() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().client.session.close()


def request(body: bytes | str, headers: dict[str, str] | None = None, path: str = "outbound") -> InboundRequest:
    raw = body.encode() if isinstance(body, str) else body
    return InboundRequest("POST", f"https://trigger.pharma.example/webhooks/salesforce/{path}", headers or {}, raw)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def rejection(connector: SalesforceConnector, req: InboundRequest) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as caught:
        connector.verify(req)
        connector.parse(req)
    return caught.value


def activity(index: int, kind: str = "opened", object_id: str | None = "", **details: Any) -> Activity:
    return Activity(
        id=index,
        crm="salesforce",
        kind=kind,  # type: ignore[arg-type]
        npi=NPI,
        campaign_id="asthma-launch",
        subject="New asthma data for Pulmonary Disease practices",
        message_id=f"<m{index}@pharma.example>",
        occurred_at=datetime(2026, 1, 5, 9, 30, tzinfo=timezone.utc),
        object_type="Contact",
        object_id=f"0035g{index:010d}AAA" if object_id == "" else object_id,
        details=details,
    )


@pytest.fixture
def oauth(fake: FakeSalesforce) -> dict[str, str]:
    return {
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "login_url": fake.url,
        "instance_url": fake.url,
    }


# -- registration and routing ----------------------------------------------------------------


def test_registered_and_built_for_crm_salesforce() -> None:
    config = make_config()
    built = build_connectors(config, Settings(), ManualClock())
    assert isinstance(built["salesforce"], SalesforceConnector)
    assert SalesforceConnector.name == "salesforce" and SalesforceConnector.batch_size == 200


def test_request_kind_is_decided_by_the_route() -> None:
    assert request_kind(request(b"[]")) == "soap"
    assert request_kind(request(fixture("outbound_contact.xml"), path="events")) == "events"
    assert request_kind(request(b"<x/>", path="outbound/?retry=1")) == "soap"


def test_request_kind_elsewhere_goes_by_the_body() -> None:
    assert request_kind(request(fixture("outbound_contact.xml"), path="other")) == "soap"
    assert request_kind(request(b"\xef\xbb\xbf\n  <?xml version='1.0'?><x/>", path="other")) == "soap"
    assert request_kind(request(fixture("flow_record_change.json"), path="other")) == "events"
    assert make_connector().request_kind(request(b"[]", path="other")) == "events"
    assert request_kind(request(b"", {"content-type": "text/xml; charset=utf-8"}, path="other")) == "soap"


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b'{"object": "Contact"}', {}),
        (b"[]", {"content-type": "text/plain"}),
        (b"<x/>", {"content-type": "application/json; charset=utf-8"}),
    ],
)
def test_json_at_the_outbound_route_is_a_415_fault(body: bytes, headers: dict[str, str]) -> None:
    failure = rejection(make_connector(), request(body, headers))
    assert failure.status == 415 and failure.media_type == "text/xml"
    assert failure.body and "Fault" in failure.body and "/webhooks/salesforce/events" in failure.body


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (fixture("outbound_contact.xml"), {"authorization": f"Bearer {SECRET}"}),
        (fixture("flow_record_change.json"), {"content-type": "text/xml", "authorization": f"Bearer {SECRET}"}),
    ],
)
def test_xml_at_the_events_route_is_415_before_authentication(body: bytes, headers: dict[str, str]) -> None:
    connector = make_connector()
    for credentials in (headers, {k: v for k, v in headers.items() if k != "authorization"}):
        failure = rejection(connector, request(body, credentials, "events"))
        assert failure.status == 415 and failure.body is None
        assert "/webhooks/salesforce/outbound" in failure.reason


def test_outbound_message_is_parsed_once_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    from connectors.salesforce import soap

    parsed: list[bytes] = []
    original = soap.parse_outbound
    monkeypatch.setattr(soap, "parse_outbound", lambda body: parsed.append(body) or original(body))
    connector = make_connector()
    body = fixture("outbound_contact.xml")
    for _ in range(2):
        req = request(bytes(bytearray(body)))  # a new body object, as every HTTP request has
        connector.verify(req)
        assert len(connector.parse(req)) == 1
    assert len(parsed) == 2


# -- outbound messages -----------------------------------------------------------------------


def test_outbound_contact_becomes_one_record_change() -> None:
    connector = make_connector()
    req = request(fixture("outbound_contact.xml"))
    connector.verify(req)
    [event] = connector.parse(req)
    assert event.source == "salesforce"
    assert event.event == "record_change"
    assert event.event_key == "04l5g00000Gx7QzAAJ"
    assert event.object_type == "Contact"
    assert event.object_id == "0035g00000NOtUbAAL"
    assert event.fields == {
        "Id": "0035g00000NOtUbAAL",
        "Email": "jane.doe@clinic.example",
        "FirstName": "Jane",
        "Interest__c": "Asthma",
        "LastName": "Doe",
        "NPI__c": NPI,
    }
    assert event.changed == {k: v for k, v in event.fields.items() if k != "Id"}
    assert event.payload["OrganizationId"] == ORG_18
    assert event.payload["ActionId"] == "04k5g000000CaRkAAK"


def test_outbound_lead_keeps_no_session_id() -> None:
    [event] = make_connector().parse(request(fixture("outbound_lead.xml")))
    assert (event.object_type, event.object_id) == ("Lead", "00Q5g00000AbCdEAAZ")
    assert event.fields["Company"] == "Springfield Pulmonary Associates"
    assert "AQ8AQHwogrx" not in repr(event)


def test_outbound_multiple_gives_one_event_per_notification() -> None:
    parsed = make_connector().parse(request(fixture("outbound_multiple.xml")))
    assert [e.event_key for e in parsed] == ["04l5g00000Gx7S1AAJ", "04l5g00000Gx7S2AAJ", "04l5g00000Gx7S3AAJ"]
    assert [e.object_id for e in parsed] == ["0035g00000NOtUcAAL", "0035g00000NOtUdAAL", "0035g00000NOtUeAAL"]
    assert parsed[1].fields["NPI__c"] is None  # xsi:nil: the field is known to be empty
    assert "NPI__c" not in parsed[2].fields


def test_outbound_custom_object_type_from_xsi_type() -> None:
    [event] = make_connector().parse(request(fixture("outbound_custom_object.xml")))
    assert event.object_type == "HCP_Profile__c"
    assert event.fields["Specialty__c"] == "Pulmonary Disease"


def test_ack_is_the_documented_notifications_response() -> None:
    root = ET.fromstring(soap_ack())
    assert root.tag == "{http://schemas.xmlsoap.org/soap/envelope/}Envelope"
    ack = root.find("soapenv:Body/om:notificationsResponse/om:Ack", SOAP_NS)
    assert ack is not None and ack.text == "true"


def test_fault_is_a_soap_fault_with_escaped_text() -> None:
    root = ET.fromstring(soap_fault("bad <org> & co"))
    fault = root.find("soapenv:Body/soapenv:Fault", SOAP_NS)
    assert fault is not None
    assert fault.findtext("faultcode") == "soapenv:Client"
    assert fault.findtext("faultstring") == "bad <org> & co"


def test_wrong_org_is_refused_with_a_fault() -> None:
    connector = make_connector(organization_id="00D000000000001AAA")
    req = request(fixture("outbound_contact.xml"))
    for step in (connector.verify, connector.parse):
        with pytest.raises(WebhookRejected) as caught:
            step(req)
        assert caught.value.status == 403
        assert caught.value.media_type == "text/xml"
        assert caught.value.body is not None
        assert ET.fromstring(caught.value.body).find("soapenv:Body/soapenv:Fault", SOAP_NS) is not None


def test_missing_org_config_refuses_outbound_messages() -> None:
    connector = make_connector(organization_id=None)
    assert rejection(connector, request(fixture("outbound_contact.xml"))).status == 403


@pytest.mark.parametrize("configured", [ORG_15, ORG_18])
def test_15_and_18_character_org_ids_match(configured: str) -> None:
    connector = make_connector(organization_id=configured)
    body = fixture("outbound_contact.xml")
    for message_org in (ORG_18, ORG_15):
        req = request(body.replace(ORG_18.encode(), message_org.encode()))
        connector.verify(req)
        assert len(connector.parse(req)) == 1


def test_org_id_comparison_is_case_sensitive() -> None:
    connector = make_connector(organization_id=ORG_15.lower())
    assert rejection(connector, request(fixture("outbound_contact.xml"))).status == 403


def test_xxe_is_refused_and_reads_no_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("TOP-SECRET-MARKER")
    connector = make_connector()
    for target in ("file:///etc/passwd", secret_file.as_uri()):
        body = (
            '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "' + target + '">]>'
            + fixture("outbound_contact.xml").decode().split("?>", 1)[1].replace("<sf:FirstName>Jane", "<sf:FirstName>&e;")
        )
        failure = rejection(connector, request(body))
        assert failure.status == 400
        assert failure.media_type == "text/xml"
        for text in (failure.reason, failure.body or ""):
            assert "TOP-SECRET-MARKER" not in text and "root:" not in text


def test_billion_laughs_is_refused_fast() -> None:
    entities = '<!ENTITY lol "lol">' + "".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10)
    )
    body = f'<?xml version="1.0"?><!DOCTYPE lolz [{entities}]><lolz>&lol9;</lolz>'
    started = time.monotonic()
    failure = rejection(make_connector(), request(body))
    assert failure.status == 400 and failure.media_type == "text/xml"
    assert time.monotonic() - started < 1


def test_more_than_100_notifications_is_refused() -> None:
    text = fixture("outbound_multiple.xml").decode()
    start, end = text.index("<Notification>"), text.index("</Notification>") + len("</Notification>")
    connector = make_connector()
    # The fixture holds 3 notifications; repeating the first one n times gives n + 2.
    assert len(connector.parse(request(text[:start] + text[start:end] * 98 + text[end:]))) == 100
    failure = rejection(connector, request(text[:start] + text[start:end] * 99 + text[end:]))
    assert failure.status == 400 and "101" in failure.reason


@pytest.mark.parametrize(
    "body",
    [
        "<soapenv:Envelope",
        "<not-soap/>",
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body/></soapenv:Envelope>',
    ],
)
def test_malformed_outbound_messages_are_400_faults(body: str) -> None:
    failure = rejection(make_connector(), request(body))
    assert failure.status == 400 and failure.body and "Fault" in failure.body


# -- JSON events ----------------------------------------------------------------------------


def signed_headers(body: bytes, at: datetime, secret: str = SECRET, prefix: str = "") -> dict[str, str]:
    timestamp = int(at.timestamp())
    return {
        "x-trigger-email-timestamp": str(timestamp),
        "x-trigger-email-signature": prefix + sign_event(secret, timestamp, body),
    }


def test_events_with_bearer_secret_are_accepted() -> None:
    connector = make_connector()
    body = fixture("flow_record_change.json")
    connector.verify(request(body, {"authorization": f"Bearer {SECRET}"}, "events"))


@pytest.mark.parametrize("prefix", ["", "sha256="])
def test_events_with_fresh_hmac_are_accepted(prefix: str) -> None:
    clock = ManualClock()
    connector = make_connector(clock)
    body = fixture("flow_record_change.json")
    headers = signed_headers(body, clock.now() - timedelta(seconds=299), prefix=prefix)
    connector.verify(request(body, headers, "events"))


@pytest.mark.parametrize("skew", [timedelta(seconds=-301), timedelta(seconds=301)])
def test_stale_or_future_hmac_is_401(skew: timedelta) -> None:
    clock = ManualClock()
    connector = make_connector(clock)
    body = fixture("flow_record_change.json")
    headers = signed_headers(body, clock.now() + skew)
    assert rejection(connector, request(body, headers, "events")).status == 401


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": f"Basic {SECRET}"},
        {"x-trigger-email-timestamp": "soon", "x-trigger-email-signature": "00"},
    ],
)
def test_events_without_valid_credentials_are_401(headers: dict[str, str]) -> None:
    body = fixture("flow_record_change.json")
    assert rejection(make_connector(), request(body, headers, "events")).status == 401


def test_hmac_over_another_body_or_secret_is_401() -> None:
    clock = ManualClock()
    connector = make_connector(clock)
    body = fixture("flow_record_change.json")
    tampered = body.replace(b"Asthma", b"COPD")
    for headers, sent in ((signed_headers(body, clock.now()), tampered), (signed_headers(body, clock.now(), "other"), body)):
        assert rejection(connector, request(sent, headers, "events")).status == 401


def test_events_refused_without_a_configured_secret() -> None:
    connector = make_connector(events_secret=None)
    body = fixture("flow_record_change.json")
    assert rejection(connector, request(body, {"authorization": "Bearer "}, "events")).status == 401


def test_flow_record_change_parses() -> None:
    [event] = make_connector().parse(request(fixture("flow_record_change.json"), path="events"))
    assert event.event == "record_change"
    assert event.event_key == "flow-0035g00000NOtUbAAL-20260105085930"
    assert (event.object_type, event.object_id) == ("Contact", "0035g00000NOtUbAAL")
    assert event.changed == {"Interest__c": "Asthma"}
    assert event.fields["NPI__c"] == NPI
    assert event.occurred_at == datetime(2026, 1, 5, 8, 59, 30, tzinfo=timezone.utc)


def test_record_change_without_changed_uses_fields_and_a_content_key() -> None:
    body = fixture("flow_record_change_no_changed.json")
    [event] = make_connector().parse(request(body, path="events"))
    assert event.changed == event.fields == {"Interest__c": "COPD"}
    assert len(event.event_key) == 64
    reformatted = json.dumps(json.loads(body), indent=4).encode()
    [again] = make_connector().parse(request(reformatted, path="events"))
    assert again.event_key == event.event_key


def test_form_submission_and_batches_parse() -> None:
    connector = make_connector()
    [form] = connector.parse(request(fixture("apex_form_submission.json"), path="events"))
    assert (form.event, form.form_id, form.url) == ("form_submission", "asthma-sample-request", "https://pharma.example/asthma/samples")
    assert form.changed == {}
    view, created = connector.parse(request(fixture("platform_event_batch.json"), path="events"))
    assert (view.event, view.url, view.event_key) == ("page_view", "https://pharma.example/asthma/data", "e-17-0001")
    assert (created.event, created.object_type) == ("created", "Lead")


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"object": "Contact", "event": "created"}, "id"),
        ({"object": "Contact", "id": "nope", "event": "created"}, "id"),
        ({"object": "../x", "id": "0035g00000NOtUbAAL", "event": "created"}, "object"),
        ({"object": "Contact", "id": "0035g00000NOtUbAAL", "event": "deleted_everything"}, "event"),
        ({"object": "Contact", "id": "0035g00000NOtUbAAL", "event": "created", "fields": []}, "fields"),
        ({"object": "Contact", "id": "0035g00000NOtUbAAL", "event": "created", "occurred_at": "yesterday"}, "occurred_at"),
        ([{"object": "Contact", "id": "0035g00000NOtUbAAL", "event": "created"}, {"object": "Contact"}], "[1].id"),
        ([], "body"),
        ("just a string", "body"),
    ],
)
def test_bad_event_shapes_are_400_naming_the_field(body: Any, named: str) -> None:
    failure = rejection_parse(json.dumps(body).encode())
    assert failure.status == 400
    assert failure.reason.startswith(named)


def test_more_than_100_events_and_invalid_json_are_400() -> None:
    item = {"object": "Contact", "id": "0035g00000NOtUbAAL", "event": "created"}
    assert rejection_parse(json.dumps([item] * 101).encode()).status == 400
    assert rejection_parse(b"{not json").status == 400


def rejection_parse(body: bytes) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as caught:
        make_connector().parse(request(body, path="events"))
    return caught.value


# -- records through simple-salesforce -----------------------------------------------------


async def test_npi_in_the_event_needs_no_api_call(fake: FakeSalesforce, oauth: dict[str, str]) -> None:
    connector = make_connector(**oauth)
    [event] = connector.parse(request(fixture("outbound_contact.xml")))
    info = await connector.contact_for(event)
    assert info.npi == NPI and info.email is None
    assert fake.requests == []


async def test_record_is_fetched_over_https_and_cached(fake: FakeSalesforce, oauth: dict[str, str]) -> None:
    fake.add_record("Lead", "00Q5g00000AbCdEAAZ", NPI__c=NPI, Email="nguyen@pulm.example", LastName="Nguyen")
    clock = ManualClock()
    connector = make_connector(clock, use_record_email=True, record_cache_ttl="60s", **oauth)
    [event] = connector.parse(request(fixture("outbound_lead.xml")))

    info = await connector.contact_for(event)
    assert (info.npi, info.email) == (NPI, "nguyen@pulm.example")
    assert info.fields["Company"] == "Springfield Pulmonary Associates"  # the event's fields stay
    assert len(fake.calls("/services/oauth2/token")) == 1
    [get] = fake.calls("/sobjects/Lead/00Q5g00000AbCdEAAZ", "GET")
    assert get.path == "/services/data/v59.0/sobjects/Lead/00Q5g00000AbCdEAAZ"
    assert get.headers["authorization"].startswith("Bearer ")

    clock.advance(59)
    await connector.contact_for(event)
    assert len(fake.calls("/sobjects/Lead/", "GET")) == 1
    clock.advance(2)
    await connector.contact_for(event)
    assert len(fake.calls("/sobjects/Lead/", "GET")) == 2
    assert connector.api_usage == (2, 15000)
    await connector.aclose()


async def test_numeric_npi_field_and_missing_record(fake: FakeSalesforce, oauth: dict[str, str]) -> None:
    fake.add_record("Contact", "0035g00000NOtUeAAL", NPI__c=1234567893.0)
    connector = make_connector(**oauth)
    *_, without_npi = connector.parse(request(fixture("outbound_multiple.xml")))
    assert (await connector.contact_for(without_npi)).npi == NPI

    gone = without_npi.__class__(**{**without_npi.__dict__, "object_id": "0035g00000ZZZZZAAA", "fields": {}})
    info = await connector.contact_for(gone)
    assert info.npi is None


async def test_jwt_bearer_login(
    fake: FakeSalesforce, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "server.key"
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    monkeypatch.setattr(fake, "jwt_public_key", public)
    monkeypatch.setattr(fake, "username", "integration@pharma.example")
    fake.add_record("Lead", "00Q5g00000AbCdEAAZ", NPI__c=NPI)
    connector = make_connector(
        client_id=fake.client_id,
        username="integration@pharma.example",
        private_key_file=str(key_file),
        login_url=fake.url,
    )
    [event] = connector.parse(request(fixture("outbound_lead.xml")))
    assert (await connector.contact_for(event)).npi == NPI
    [token] = fake.calls("/services/oauth2/token")
    assert token.form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"


# -- pushing activities ----------------------------------------------------------------------


async def test_250_activities_take_two_collection_calls(fake: FakeSalesforce, oauth: dict[str, str]) -> None:
    connector = make_connector(**oauth)
    batch = [activity(i) for i in range(1, 251)]
    results = await connector.push_activities(batch)
    assert [r.activity_id for r in results] == [a.id for a in batch]
    assert all(r.ok for r in results)
    calls = fake.calls("/services/data/v59.0/composite/sobjects", "POST")
    assert [len(c.json()["records"]) for c in calls] == [200, 50]
    assert all(c.json()["allOrNone"] is False for c in calls)
    assert len(fake.created) == 250
    assert connector.api_usage == (2, 15000)


async def test_task_shape(fake: FakeSalesforce, oauth: dict[str, str]) -> None:
    connector = make_connector(**oauth)
    batch = [
        activity(1, "opened", open_count=3),
        activity(2, "clicked", url="https://pharma.example/asthma/data"),
        activity(3, "bounced", reason="550 5.1.1 user unknown", to="old@clinic.example"),
        activity(4, "sent", to="jane.doe@clinic.example"),
        activity(5, "unsubscribed"),
    ]
    assert all(r.ok for r in await connector.push_activities(batch))
    records = fake.calls("composite/sobjects")[0].json()["records"]
    opened = records[0]
    assert opened["attributes"] == {"type": "Task"}
    assert opened["WhoId"] == batch[0].object_id
    assert opened["Subject"] == "Email opened: New asthma data for Pulmonary Disease practices"
    assert (opened["Status"], opened["TaskSubtype"], opened["ActivityDate"]) == ("Completed", "Email", "2026-01-05")
    assert "Opens: 3" in opened["Description"] and "asthma-launch" in opened["Description"]
    assert records[1]["Subject"].startswith("Email clicked: ")
    assert "https://pharma.example/asthma/data" in records[1]["Description"]
    assert records[2]["Subject"].startswith("Email bounced: ")
    assert "550 5.1.1 user unknown" in records[2]["Description"] and "old@clinic.example" in records[2]["Description"]
    assert records[3]["Subject"].startswith("Email sent: ")
    assert records[4]["Subject"].startswith("Unsubscribed: ")


async def test_one_failed_record_fails_alone(fake: FakeSalesforce, oauth: dict[str, str]) -> None:
    connector = make_connector(**oauth)
    batch = [activity(i) for i in range(1, 4)]
    fake.fail_who_ids[batch[1].object_id or ""] = ("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
    ok, failed, ok_too = await connector.push_activities(batch)
    assert ok.ok and ok_too.ok
    assert not failed.ok and failed.permanent
    assert "INVALID_CROSS_REFERENCE_KEY" in (failed.error or "")


async def test_activity_without_record_is_permanent(fake: FakeSalesforce, oauth: dict[str, str]) -> None:
    connector = make_connector(**oauth)
    orphan, linked = await connector.push_activities([activity(1, object_id=None), activity(2)])
    assert not orphan.ok and orphan.permanent
    assert linked.ok
    assert len(fake.calls("composite/sobjects")[0].json()["records"]) == 1


@pytest.mark.parametrize(("retry_after", "expected"), [(None, 60.0), (120, 120.0)])
async def test_request_limit_exceeded_is_transient_with_retry_after(
    fake: FakeSalesforce, oauth: dict[str, str], retry_after: int | None, expected: float
) -> None:
    connector = make_connector(**oauth)
    fake.limit_exceeded(retry_after)
    results = await connector.push_activities([activity(i) for i in range(1, 251)])
    assert all(not r.ok and not r.permanent and r.retry_after == expected for r in results)
    assert "REQUEST_LIMIT_EXCEEDED" in (results[0].error or "")
    assert len(fake.calls("composite/sobjects")) == 1  # the second chunk is not attempted
    assert connector.api_usage == (1, 15000)


@pytest.mark.parametrize("status", [429, 503])
async def test_throttling_statuses_are_transient(fake: FakeSalesforce, oauth: dict[str, str], status: int) -> None:
    connector = make_connector(**oauth)
    fake.fail_next(status, [{"message": "slow down", "errorCode": "SERVER_UNAVAILABLE"}], {"Retry-After": "7"})
    [result] = await connector.push_activities([activity(1)])
    assert (result.ok, result.permanent, result.retry_after) == (False, False, 7.0)


async def test_malformed_request_is_permanent(fake: FakeSalesforce, oauth: dict[str, str]) -> None:
    connector = make_connector(**oauth)
    fake.fail_next(400, [{"message": "No such column 'TaskSubtype'", "errorCode": "INVALID_FIELD"}])
    [result] = await connector.push_activities([activity(1)])
    assert not result.ok and result.permanent and "INVALID_FIELD" in (result.error or "")


async def test_expired_session_is_refreshed_once(fake: FakeSalesforce, oauth: dict[str, str]) -> None:
    connector = make_connector(**oauth)
    assert (await connector.push_activities([activity(1)]))[0].ok
    fake.expire_sessions()
    [result] = await connector.push_activities([activity(2)])
    assert result.ok
    assert len(fake.calls("/services/oauth2/token")) == 2
    statuses = [c.headers["authorization"] for c in fake.calls("composite/sobjects")]
    assert len(statuses) == 3 and statuses[1] != statuses[2]
    assert [r["WhoId"] for r in fake.created] == [activity(1).object_id, activity(2).object_id]


async def test_session_refused_twice_is_reported(fake: FakeSalesforce, oauth: dict[str, str]) -> None:
    connector = make_connector(**oauth)
    expired = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    fake.fail_next(401, expired)
    fake.fail_next(401, expired)
    [result] = await connector.push_activities([activity(1)])
    assert not result.ok and not result.permanent
    assert "INVALID_SESSION_ID" in (result.error or "")
    assert len(fake.calls("/services/oauth2/token")) == 2
    assert len(fake.calls("composite/sobjects")) == 2


async def test_configured_access_token_is_used_then_replaced(fake: FakeSalesforce, oauth: dict[str, str]) -> None:
    token = fake.issue_token()
    connector = make_connector(access_token=token, **oauth)
    assert (await connector.push_activities([activity(1)]))[0].ok
    assert fake.calls("/services/oauth2/token") == []
    assert fake.calls("composite/sobjects")[0].headers["authorization"] == f"Bearer {token}"
    fake.expire_sessions()
    assert (await connector.push_activities([activity(2)]))[0].ok
    assert len(fake.calls("/services/oauth2/token")) == 1


async def test_access_token_alone_cannot_refresh(fake: FakeSalesforce) -> None:
    connector = make_connector(access_token="00D!expired", instance_url=fake.url)
    [result] = await connector.push_activities([activity(1)])
    assert not result.ok and not result.permanent
    assert "INVALID_SESSION_ID" in (result.error or "")


async def test_wrong_client_secret_is_transient_not_dead_letter(fake: FakeSalesforce, oauth: dict[str, str]) -> None:
    connector = make_connector(**{**oauth, "client_secret": "wrong"})
    [result] = await connector.push_activities([activity(1)])
    assert not result.ok and not result.permanent
    assert "invalid_client" in (result.error or "")


async def test_record_lock_contention_is_retried_later(fake: FakeSalesforce, oauth: dict[str, str]) -> None:
    connector = make_connector(**oauth)
    locked = activity(1)
    fake.fail_who_ids[locked.object_id or ""] = ("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record")
    [result] = await connector.push_activities([locked])
    assert not result.ok and not result.permanent


# -- the fake validates Tasks as Salesforce does --------------------------------------------------


def post_tasks(fake: FakeSalesforce, records: list[dict[str, Any]]) -> Any:
    import requests

    token = fake.issue_token()
    return requests.post(
        f"{fake.url}/services/data/v59.0/composite/sobjects", json={"allOrNone": False, "records": records},
        headers={"Authorization": f"Bearer {token}"}, timeout=10,
    )


def task(**fields: Any) -> dict[str, Any]:
    return {"attributes": {"type": "Task"}, "WhoId": "0035g00000AbCdEAAZ", "Subject": "s", "Status": "Completed",
            "ActivityDate": "2026-01-05", **fields}


def test_fake_refuses_task_fields_and_values_salesforce_refuses(fake: FakeSalesforce) -> None:
    records = [
        task(),
        task(Status="Done"),
        task(Priority="Urgent"),
        task(TaskSubtype="Fax"),
        task(WhoId="0015g00000AbCdEAAZ"),  # an Account id as WhoId
        task(WhoId=None, WhatId="0035g00000AbCdEAAZ"),  # a Contact id as WhatId
        task(Subject="x" * 256),
        task(WhoId="00Q5g00000AbCdEAAZ", Priority="Low", TaskSubtype="Email"),  # a Lead is fine
    ]
    response = post_tasks(fake, records)
    assert response.status_code == 200
    answers = [(r["success"], (r["errors"] or [{}])[0].get("statusCode"), (r["errors"] or [{}])[0].get("fields")) for r in response.json()]
    assert answers == [
        (True, None, None),
        (False, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", ["Status"]),
        (False, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", ["Priority"]),
        (False, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", ["TaskSubtype"]),
        (False, "FIELD_INTEGRITY_EXCEPTION", ["WhoId"]),
        (False, "FIELD_INTEGRITY_EXCEPTION", ["WhatId"]),
        (False, "STRING_TOO_LONG", ["Subject"]),
        (True, None, None),
    ]
    assert len(fake.created) == 2


@pytest.mark.parametrize("bad, code, words", [
    (task(Mood__c="happy"), "INVALID_FIELD", "No such column 'Mood__c' on sobject of type Task"),
    (task(ActivityDate="01/05/2026"), "JSON_PARSER_ERROR", "Cannot deserialize instance of date"),
])
def test_fake_refuses_the_whole_request_for_an_unknown_field_or_a_bad_date(
    fake: FakeSalesforce, bad: dict[str, Any], code: str, words: str
) -> None:
    response = post_tasks(fake, [task(), bad])
    assert response.status_code == 400
    [error] = response.json()
    assert error["errorCode"] == code and words in error["message"]
    assert fake.created == [], "nothing of a refused request is saved"


async def test_every_task_the_connector_writes_passes_the_fakes_validation(fake: FakeSalesforce, oauth: dict[str, str]) -> None:
    connector = make_connector(**oauth)
    batch = [activity(1, "sent", to="a@b.example"), activity(2, "opened", open_count=3), activity(3, "clicked", link="https://x"),
             activity(4, "bounced", reason="550"), activity(5, "unsubscribed"), activity(6, object_id="a015g00000XyZabAAB")]
    batch[-1].object_type = "HCP_Profile__c"
    batch[0].subject = "s" * 400
    results = await connector.push_activities(batch)
    assert [(r.ok, r.error) for r in results] == [(True, None)] * 6
    assert fake.created[-1]["WhatId"] == "a015g00000XyZabAAB" and len(fake.created[0]["Subject"]) == 255
    assert all(task["Description"].endswith(f"Ref: {a.reference}") for task, a in zip(fake.created, batch))


# -- one bad record never takes good ones down with it -------------------------------------------


@pytest.mark.parametrize("bad", [[3], [1, 8], [2, 3, 4]])
async def test_a_request_refused_whole_is_split_until_the_bad_record_is_alone(
    fake: FakeSalesforce, oauth: dict[str, str], bad: list[int]
) -> None:
    connector = make_connector(**oauth)
    batch = [activity(i) for i in range(1, 9)]
    fake.malformed_who_ids.update(str(batch[i - 1].object_id) for i in bad)
    results = await connector.push_activities(batch)
    assert {r.activity_id for r in results if r.ok} == set(range(1, 9)) - set(bad)
    assert all(r.permanent and "JSON_PARSER_ERROR" in (r.error or "") for r in results if not r.ok)
    assert sorted(t["WhoId"] for t in fake.created) == sorted(str(a.object_id) for a in batch if a.id not in bad)
    assert len(fake.calls("composite/sobjects", "POST")) <= 2 * 8 - 1


async def test_a_rate_limit_while_splitting_stops_the_rest(fake: FakeSalesforce, oauth: dict[str, str]) -> None:
    connector = make_connector(**oauth)
    batch = [activity(i) for i in range(1, 5)]
    fake.malformed_who_ids.add(str(batch[0].object_id))
    fake.fail_next(400, [{"message": "Cannot deserialize", "errorCode": "JSON_PARSER_ERROR"}])
    fake.limit_exceeded(retry_after=30)
    results = await connector.push_activities(batch)
    assert [(r.ok, r.permanent, r.retry_after) for r in results] == [(False, False, 30.0)] * 4
    assert len(fake.calls("composite/sobjects", "POST")) == 2 and fake.created == []


# -- retries never write a second Task -----------------------------------------------------------


async def test_a_retry_after_a_lost_reply_finds_the_tasks_and_creates_only_the_rest(
    fake: FakeSalesforce, oauth: dict[str, str]
) -> None:
    connector = make_connector(**oauth)
    batch = [activity(1, "sent"), activity(2, "opened"), activity(3, "clicked", link="https://x/a")]
    fake.lose_replies(1)
    lost = await connector.push_activities(batch)
    assert [(r.ok, r.permanent) for r in lost] == [(False, False)] * 3 and len(fake.created) == 3

    same_day = activity(4, "clicked", link="https://x/b")
    same_day.object_id = batch[2].object_id  # same Contact, same day: told apart by its reference
    for item in batch + [same_day]:
        item.verify = True
    results = await connector.push_activities(batch + [same_day])
    assert [r.ok for r in results] == [True] * 4
    assert len(fake.created) == 4 and len(fake.tasks_on(str(batch[2].object_id))) == 2
    [query] = fake.calls("/query", "GET")
    assert len(fake.calls("composite/sobjects", "POST")) == 2
    assert [r["WhoId"] for r in fake.calls("composite/sobjects", "POST")[-1].json()["records"]] == [same_day.object_id]


async def test_a_lookup_that_fails_creates_nothing_blind(fake: FakeSalesforce, oauth: dict[str, str]) -> None:
    connector = make_connector(**oauth)
    doubtful = activity(1)
    doubtful.verify = True
    fake.fail_next(503, [{"message": "down", "errorCode": "SERVER_UNAVAILABLE"}])
    [result] = await connector.push_activities([doubtful])
    assert (result.ok, result.permanent) == (False, False) and fake.created == []
    assert fake.calls("composite/sobjects") == []


async def test_with_an_external_id_field_tasks_are_upserted(fake: FakeSalesforce, oauth: dict[str, str]) -> None:
    connector = make_connector(**oauth, activity_id_field="Trigger_Email_Activity__c")
    fake.custom_fields.add("Trigger_Email_Activity__c")
    fake.external_id_fields.add("Trigger_Email_Activity__c")
    batch = [activity(1, "sent"), activity(2, "opened")]
    fake.lose_replies(1)
    assert [r.ok for r in await connector.push_activities(batch)] == [False, False]
    assert [r.ok for r in await connector.push_activities(batch)] == [True, True]
    assert len(fake.created) == 2 and {t["Trigger_Email_Activity__c"] for t in fake.created} == {a.reference for a in batch}
    [first, second] = fake.calls("composite/sobjects/Task/Trigger_Email_Activity__c", "PATCH")
    assert second.json()["records"][0]["Trigger_Email_Activity__c"] == batch[0].reference
    assert fake.calls("/query") == [], "an upsert needs no lookup"


async def test_an_external_id_field_the_org_lacks_is_reported(fake: FakeSalesforce, oauth: dict[str, str]) -> None:
    connector = make_connector(**oauth, activity_id_field="Missing__c")
    [result] = await connector.push_activities([activity(1)])
    assert not result.ok and "Missing__c" in (result.error or "") and fake.created == []
