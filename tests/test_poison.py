"""No poison loops: a trigger, message or inbound event whose processing raises an unexpected
error is retried a bounded number of times with backoff (attempts and due time in the
database), then ends `failed` with the error as its reason, shown by the API. The sweep never
takes the same failing item again before its backoff is over.

The faults are real: a campaign template that raises (division by zero on the trigger's
data), a DKIM key file that is not a key (signing raises after the message is claimed), and a
stored event whose timestamp the code cannot read."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from core.db import inbound_events, messages
from core.decisions import decide
from tests.harness import BASE_CONFIG, OMAR, Harness


@pytest.fixture
def config_text(tmp_path: Path) -> str:
    key = tmp_path / "dkim.pem"
    key.write_text("this is not a PEM key\n")
    text = BASE_CONFIG.replace(
        "  bounce_domain: bounces.pharma.example\n",
        f"  bounce_domain: bounces.pharma.example\n  dkim: {{domain: pharma.example, selector: s1, private_key_file: {key}}}\n",
    )
    return text + """  - id: per-visit
    subject: "Your numbers"
    html: "<p>{{ 100 // (data.visits | default(1)) }} points per visit</p>"
"""


async def test_a_trigger_whose_decision_raises_is_retried_with_backoff_then_failed(harness: Harness) -> None:
    accepted = await harness.trigger(campaign_id="per-visit", data={"visits": 0})
    await harness.later(seconds=0)
    view = await harness.outcome(accepted["id"])
    assert (view["status"], view["attempts"]) == ("pending", 1)
    assert "ZeroDivisionError" in view["reason"] and view["due_at"] is not None
    await harness.later(seconds=25)  # due 30 s after the failure: the sweep leaves it alone
    assert (await harness.outcome(accepted["id"]))["attempts"] == 1
    await harness.later(seconds=10)
    assert (await harness.outcome(accepted["id"]))["attempts"] == 2
    seen = [2]
    for _ in range(10):
        await harness.later(minutes=5)
        view = await harness.outcome(accepted["id"])
        seen.append(view["attempts"])
        if view["status"] != "pending":
            break
    assert view["status"] == "failed" and view["attempts"] == harness.rt.settings.trigger_max_attempts == 5
    assert view["reason"].startswith("after 5 attempt(s): ZeroDivisionError")
    assert view["messages"] == [] and harness.smtp.messages == []
    await harness.later(hours=2)
    assert (await harness.outcome(accepted["id"]))["attempts"] == 5  # ended: no further tries


async def test_a_poison_trigger_decided_together_with_others_fails_alone(harness: Harness) -> None:
    """The decisions of concurrent jobs are made in one transaction: one that raises is
    retried on its own and holds nobody else back."""
    poison = await harness.trigger(campaign_id="per-visit", data={"visits": 0})
    healthy = await harness.trigger(npi=OMAR, campaign_id="cardio-webinar")
    results = await asyncio.gather(decide(harness.rt, poison["id"]), decide(harness.rt, healthy["id"]))
    assert results[0] is None and results[1] is not None and results[1].status == "queued"
    view = await harness.outcome(poison["id"])
    assert (view["status"], view["attempts"]) == ("pending", 1) and "ZeroDivisionError" in view["reason"]
    assert (await harness.outcome(healthy["id"]))["status"] == "queued"


async def test_a_message_that_raises_before_smtp_is_retried_with_backoff_then_failed(harness: Harness) -> None:
    harness.rt.settings.send_max_attempts = 3
    view = await harness.send()
    [message] = view["messages"]
    assert (message["status"], message["attempts"]) == ("queued", 1)
    assert "attempt 1: KeyFormatError" in message["error"]
    assert view["status"] == "queued"
    await harness.later(seconds=20)  # first retry 30 s after
    assert (await harness.outcome(view["id"]))["messages"][0]["attempts"] == 1
    await harness.later(seconds=15)
    assert (await harness.outcome(view["id"]))["messages"][0]["attempts"] == 2
    await harness.later(minutes=2)
    final = await harness.outcome(view["id"])
    assert final["status"] == "failed" and final["reason"].startswith("after 3 attempt(s): KeyFormatError")
    assert final["messages"][0]["status"] == "failed"
    await harness.later(hours=1)
    assert (await harness.outcome(view["id"]))["messages"][0]["attempts"] == 3
    assert harness.smtp.messages == []
    async with harness.rt.db.connect() as connection:
        row = (await connection.execute(select(messages.c.claimed_until, messages.c.smtp_started_at))).one()
    assert tuple(row) == (None, None)


async def test_an_inbound_event_that_raises_is_retried_with_backoff_then_failed(harness: Harness) -> None:
    async with harness.rt.db.begin() as connection:
        event_id = (
            await connection.execute(
                insert(inbound_events).values(
                    source="webhook", event_key="evt-unreadable", status="pending", received_at=harness.clock.now(),
                    event={"source": "webhook", "event_key": "evt-unreadable", "occurred_at": "last tuesday"},
                ).returning(inbound_events.c.id)
            )
        ).scalar_one()
    await harness.later(seconds=11)  # found by the sweep like any event whose job was lost
    view = (await harness.client.get(f"/v1/events/{event_id}", headers=harness.auth)).json()
    assert (view["status"], view["attempts"]) == ("pending", 1)
    assert view["result"].startswith("attempt 1: ValueError") and view["due_at"] is not None
    await harness.later(seconds=25)
    assert (await harness.client.get(f"/v1/events/{event_id}", headers=harness.auth)).json()["attempts"] == 1
    for _ in range(10):
        await harness.later(minutes=5)
        view = (await harness.client.get(f"/v1/events/{event_id}", headers=harness.auth)).json()
        if view["status"] != "pending":
            break
    assert (view["status"], view["attempts"]) == ("failed", 5)
    assert view["result"].startswith("after 5 attempts: ValueError")
    listed = (await harness.client.get("/v1/events?status=failed", headers=harness.auth)).json()["events"]
    assert [event["id"] for event in listed] == [event_id]
    assert (await harness.client.get("/v1/events?status=nope", headers=harness.auth)).status_code == 422
    assert (await harness.client.get("/v1/events/999999", headers=harness.auth)).status_code == 404

