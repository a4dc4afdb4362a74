"""The API behind the console: the trigger log with its decision trails, inbound events, and
JSON errors from the router."""

from __future__ import annotations

from datetime import timedelta

from core.activities import InboundEvent
from core.clock import iso
from core.inbound import store_events_with_ids
from core.engagement import flush_engagement
from tests.harness import JANE, MEI, OMAR, Harness, drain
from tests.test_tracking import open_email


async def test_trigger_log_by_npi_newest_first_with_trails_and_cursor(harness: Harness) -> None:
    first = await harness.send(JANE)
    harness.clock.advance(timedelta(days=2))
    second = await harness.send(JANE)  # inside the 30-day cooldown
    harness.clock.advance(timedelta(minutes=5))
    await harness.send(OMAR, "cardio-webinar")
    response = await harness.client.get("/v1/triggers", params={"npi": JANE}, headers=harness.auth)
    assert response.status_code == 200
    page = response.json()
    assert [t["id"] for t in page["triggers"]] == [second["id"], first["id"]] and page["next_cursor"] is None
    cooled = page["triggers"][0]
    assert cooled["status"] == "cooldown"
    checks = {entry["check"]: entry for entry in cooled["trail"]}
    assert [entry["check"] for entry in cooled["trail"]] == [
        "npi_valid", "campaign", "paused", "hcp_known", "audience", "suppression", "cooldown", "frequency_cap", "address",
    ]
    assert checks["cooldown"]["result"] == "fail"
    assert checks["cooldown"]["last_contact"] == iso(harness.clock.now() - timedelta(days=2, minutes=5))
    assert checks["cooldown"]["until"] == "2026-02-04T09:00:00Z"
    assert checks["frequency_cap"]["result"] == "not_reached"
    sent = {entry["check"]: entry for entry in page["triggers"][1]["trail"]}
    assert all(entry["result"] == "pass" for entry in page["triggers"][1]["trail"])
    assert sent["address"]["address"] == "jane.doe@clinic.example" and "directory" in sent["address"]["detail"]
    assert sent["frequency_cap"]["count"] == 0 and sent["frequency_cap"]["max"] == 3
    # the single trigger view carries the same trail
    assert (await harness.outcome(second["id"]))["trail"] == cooled["trail"]

    one = (await harness.client.get("/v1/triggers", params={"limit": 1}, headers=harness.auth)).json()
    assert one["triggers"][0]["npi"] == OMAR and one["next_cursor"]
    two = (await harness.client.get("/v1/triggers", params={"limit": 1, "cursor": one["next_cursor"]}, headers=harness.auth)).json()
    three = (await harness.client.get("/v1/triggers", params={"limit": 1, "cursor": two["next_cursor"]}, headers=harness.auth)).json()
    assert [two["triggers"][0]["id"], three["triggers"][0]["id"], three["next_cursor"]] == [second["id"], first["id"], None]

    async def ids(**params: str) -> list[str]:
        answer = await harness.client.get("/v1/triggers", params=params, headers=harness.auth)
        assert answer.status_code == 200, answer.text
        return [t["id"] for t in answer.json()["triggers"]]

    assert await ids(status="cooldown") == [second["id"]]
    assert len(await ids(campaign_id="cardio-webinar")) == 1
    assert len(await ids(source="api")) == 3 and await ids(source="hubspot") == []
    assert await ids(**{"from": "2026-01-06", "to": "2026-01-07T09:01:00Z"}) == [second["id"]]
    assert await ids(to="2026-01-05T09:00:01Z") == [first["id"]]


async def test_trigger_log_refuses_bad_filters_naming_the_field(harness: Harness) -> None:
    for params, field in (({"status": "nope"}, "status"), ({"from": "yesterday"}, "from"), ({"cursor": "!!"}, "cursor"),
                          ({"limit": "0"}, "limit"), ({"limit": "500"}, "limit"), ({"limit": "²"}, "limit"), ({"limit": "١"}, "limit")):
        response = await harness.client.get("/v1/triggers", params=params, headers=harness.auth)
        assert response.status_code == 422 and response.json()["field"] == field, (params, response.text)
    assert (await harness.client.get("/v1/triggers")).status_code == 401


async def test_trail_shows_messages_resends_and_why_a_resend_was_cancelled(harness: Harness) -> None:
    sent = await harness.send(JANE)
    harness.clock.advance(timedelta(minutes=10))
    await open_email(harness, harness.smtp.messages[-1])
    await flush_engagement(harness.rt)
    await harness.later(days=3, minutes=1)
    detail = (await harness.client.get(f"/v1/triggers/{sent['id']}/trail", headers=harness.auth)).json()
    assert detail["source_event"]["source"] == "api"
    assert detail["messages"][0]["smtp"].startswith("250 accepted")
    assert detail["messages"][0]["opened_at"] is not None
    assert [event["kind"] for event in detail["messages"][0]["events"]] == ["open"]
    assert [r["status"] for r in detail["resends"]] == ["cancelled"]
    assert detail["resends"][0]["why"] == "HCP opened an earlier email"
    assert (await harness.client.get("/v1/triggers/trg_nope/trail", headers=harness.auth)).status_code == 404


async def test_events_log_and_one_event(harness: Harness) -> None:
    events = [
        InboundEvent(source="hubspot", event_key=f"evt-{n}", event="form_submission", object_type="contact", object_id=str(n),
                     fields={"npi": MEI})
        for n in range(3)
    ]
    stored = await store_events_with_ids(harness.rt, events)
    again = await store_events_with_ids(harness.rt, events[:1])
    assert again.ids == stored.ids[:1] and again.duplicates == 1
    await drain(harness.rt)
    page = (await harness.client.get("/v1/events", params={"source": "hubspot", "limit": 2}, headers=harness.auth)).json()
    assert [e["id"] for e in page["events"]] == stored.ids[::-1][:2] and page["next_cursor"]
    rest = (await harness.client.get("/v1/events", params={"cursor": page["next_cursor"]}, headers=harness.auth)).json()
    assert [e["id"] for e in rest["events"]] == stored.ids[:1] and rest["next_cursor"] is None
    first = rest["events"][0]
    assert first["duplicates"] == 1 and first["trigger_ids"] == []
    assert first["why_none"]  # no rule for this CRM in the test config
    one = (await harness.client.get(f"/v1/events/{stored.ids[0]}", headers=harness.auth)).json()
    assert one["event"]["event_key"] == "evt-0" and one["event_type"] == "form_submission" and one["source"] == "hubspot"
    assert (await harness.client.get("/v1/events/999999", headers=harness.auth)).status_code == 404
    too_big = await harness.client.get(f"/v1/events/{2**31}", headers=harness.auth)  # beyond the id column
    assert (too_big.status_code, too_big.json()["error"]) == (404, "no such event")
    assert (await harness.client.get("/v1/events", params={"status": "nope"}, headers=harness.auth)).json()["field"] == "status"
    assert (await harness.client.get("/v1/events", params={"source": "salesforce"}, headers=harness.auth)).json()["events"] == []


async def test_router_errors_are_json(harness: Harness) -> None:
    missing = await harness.client.get("/v1/nothing-here", headers=harness.auth)
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}
    wrong = await harness.client.delete("/v1/triggers", headers=harness.auth)
    assert wrong.status_code == 405 and wrong.json()["error"] == "Method Not Allowed"
    assert "GET" in wrong.json()["allowed"] and "POST" in wrong.json()["allowed"]
    schema = (await harness.client.get("/openapi.json")).json()
    assert {"/v1/triggers", "/v1/events", "/v1/events/{event_id}", "/v1/campaigns/{campaign_id}/stats"} <= set(schema["paths"])
    assert {"get", "post"} <= set(schema["paths"]["/v1/triggers"])
