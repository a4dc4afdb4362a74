"""The CRM activity outbox against a real HTTP receiver: one row per engagement fact, pushed in
signed batches through the generic webhook connector, with Retry-After, dead letters and retry."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import timedelta
from email.utils import format_datetime
from typing import Any, Iterator

import pytest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.db import messages
from core.outbox import push_outbox, record_activity
from tests.harness import BASE_CONFIG, JANE, Harness, ThreadedServer
from tests.test_tracking import HUMAN_UA, click, eventually, open_email, pixel_url, sent_email, tracked_links
from tests.test_unsubscribe import one_click

SECRET = "whsec_" + base64.b64encode(b"a test secret of 32 bytes length").decode()


@dataclass
class Received:
    headers: dict[str, str]
    body: dict[str, Any]
    signature_ok: bool

    @property
    def ids(self) -> list[int]:
        return [item["id"] for item in self.body["data"]]


@dataclass
class Receiver:
    """A CRM stand-in: records every call, checks its Standard Webhooks signature, and answers
    from `answers` (status, headers, JSON body, or a function of the activities) in order,
    then 200."""

    url: str = ""
    calls: list[Received] = field(default_factory=list)
    answers: deque = field(default_factory=deque)

    def verify(self, headers: dict[str, str], body: bytes) -> bool:
        key = base64.b64decode(SECRET.removeprefix("whsec_"))
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        offered = [part.split(",", 1)[1] for part in headers.get("webhook-signature", "").split() if part.startswith("v1,")]
        return any(hmac.compare_digest(expected, signature) for signature in offered)

    async def endpoint(self, request: Request) -> Response:
        raw = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        received = Received(headers=headers, body=json.loads(raw), signature_ok=self.verify(headers, raw))
        self.calls.append(received)
        if not self.answers:
            return JSONResponse({"accepted": len(received.ids)})
        status, answer_headers, answer = self.answers.popleft()
        if callable(answer):
            answer = answer(received.ids)
        return JSONResponse(answer, status_code=status, headers=answer_headers)

    @property
    def activities(self) -> list[dict[str, Any]]:
        return [item for call in self.calls for item in call.body["data"]]


@pytest.fixture(scope="module")
def receiver_server() -> Iterator[Receiver]:
    receiver = Receiver()

    async def dispatch(request: Request) -> Response:
        return await receiver.endpoint(request)

    server = ThreadedServer(Starlette(routes=[Route("/crm/activities", dispatch, methods=["POST"])])).start()
    receiver.url = f"{server.url}/crm/activities"
    yield receiver
    server.stop()


@pytest.fixture
def receiver(receiver_server: Receiver) -> Receiver:
    receiver_server.calls.clear()
    receiver_server.answers.clear()
    return receiver_server


@pytest.fixture
def config_text(receiver: Receiver) -> str:
    return BASE_CONFIG + f"""
crm:
  webhook: {{url: "{receiver.url}", secret: "{SECRET}", batch_size: 100}}
  writeback: webhook
"""


async def push(harness: Harness) -> dict[str, int]:
    return await push_outbox(harness.rt, harness.rt.extras["connectors"])


async def outbox(harness: Harness, status: str | None = None) -> dict[str, Any]:
    params = {"limit": "1000", **({"status": status} if status else {})}
    response = await harness.client.get("/v1/outbox", params=params, headers=harness.auth)
    assert response.status_code == 200, response.text
    return response.json()


async def many_activities(harness: Harness, count: int) -> None:
    """`count` click activities (one per link index) on one real email, as record_click writes them."""
    await sent_email(harness)
    async with harness.rt.db.begin() as connection:
        message = dict((await connection.execute(select(messages).where(messages.c.kind == "initial"))).mappings().one())
        for index in range(count - 1):
            await record_activity(harness.rt, connection, message, "clicked", harness.clock.now(),
                                  {"link": f"https://pharma.example/{index}"}, dedupe=str(index))


async def test_every_engagement_fact_becomes_one_row_and_reaches_the_crm(harness: Harness, receiver: Receiver) -> None:
    harness.smtp.reject["jane.doe@clinic.example"] = "550 5.1.1 User unknown"
    result, email = await sent_email(harness)
    message_id = result["messages"][0]["id"]
    await harness.later(minutes=20)
    await open_email(harness, email)
    await open_email(harness, email)
    first, second = tracked_links(email)
    await click(harness, first)
    await click(harness, first)
    await click(harness, second)
    await one_click(harness, email)
    await one_click(harness, email)

    pending = await outbox(harness, "pending")
    assert pending["counts"] == {"pending": 6}
    assert sorted((item["kind"], item["details"].get("link")) for item in pending["items"]) == [
        ("bounced", None), ("clicked", "https://pharma.example/asthma/dosing"),
        ("clicked", "https://pharma.example/asthma/phase3"), ("opened", None), ("sent", None), ("unsubscribed", None),
    ]

    assert await push(harness) == {"pushed": 6, "retried": 0, "dead": 0}

    [call] = receiver.calls
    assert call.signature_ok, "Standard Webhooks signature"
    assert call.headers["webhook-id"] and call.headers["webhook-timestamp"] == str(int(harness.clock.now().timestamp()))
    assert call.body["type"] == "activities"
    by_kind = {item["kind"]: item for item in receiver.activities}
    assert by_kind["bounced"]["details"]["to"] == "jane.doe@clinic.example"
    assert by_kind["sent"]["details"]["to"] == "jdoe@health.example"
    assert by_kind["opened"]["details"]["open_count"] == 2
    assert {item["npi"] for item in receiver.activities} == {JANE}
    assert {item["message_id"] for item in receiver.activities} == {message_id}
    assert by_kind["sent"]["subject"] == "New asthma data for Pulmonary Disease practices"
    assert (await outbox(harness))["counts"] == {"pushed": 6}

    assert await push(harness) == {"pushed": 0, "retried": 0, "dead": 0}
    assert len(receiver.calls) == 1, "a pushed row never goes again"


async def test_batches_follow_the_batch_size(harness: Harness, receiver: Receiver) -> None:
    await many_activities(harness, 250)
    assert (await outbox(harness))["counts"] == {"pending": 250}

    assert (await push(harness))["pushed"] == 250

    assert [len(call.ids) for call in receiver.calls] == [100, 100, 50]
    assert all(call.signature_ok for call in receiver.calls)
    assert sorted(a["id"] for a in receiver.activities) == sorted(set(a["id"] for a in receiver.activities))
    assert (await outbox(harness))["counts"] == {"pushed": 250}


async def test_429_with_retry_after_waits_at_least_that_long(harness: Harness, receiver: Receiver) -> None:
    await many_activities(harness, 250)
    receiver.answers.append((429, {"Retry-After": "120"}, {"error": "slow down"}))

    assert await push(harness) == {"pushed": 0, "retried": 100, "dead": 0}
    assert len(receiver.calls) == 1, "a 429 stops the push until Retry-After"
    pending = await outbox(harness, "pending")
    assert pending["counts"] == {"pending": 250}
    refused = [item for item in pending["items"] if item["last_error"] == "HTTP 429"]
    assert len(refused) == 100
    assert all(item["attempts"] == 0 for item in refused), "a rate limit does not spend an attempt"
    assert min(item["next_attempt_at"] for item in refused) == "2026-01-05T09:02:00Z"

    assert all(item["next_attempt_at"] >= "2026-01-05T09:02:00Z" for item in pending["items"]), \
        "the whole queue of that CRM waits, not only the refused batch"

    await push(harness)
    harness.clock.advance(timedelta(seconds=119))
    await push(harness)
    assert len(receiver.calls) == 1, "nothing goes to the CRM before Retry-After"

    harness.clock.advance(timedelta(seconds=1))
    assert (await push(harness))["pushed"] == 250
    assert [len(call.ids) for call in receiver.calls] == [100, 100, 100, 50]
    assert receiver.calls[1].ids == receiver.calls[0].ids
    assert receiver.calls[1].headers["webhook-id"] == receiver.calls[0].headers["webhook-id"], "same batch, same webhook-id"
    assert (await outbox(harness))["counts"] == {"pushed": 250}


async def test_retry_after_as_an_http_date(harness: Harness, receiver: Receiver) -> None:
    await many_activities(harness, 3)
    until = harness.clock.now() + timedelta(minutes=10)
    receiver.answers.append((429, {"Retry-After": format_datetime(until, usegmt=True)}, {}))
    await push(harness)
    harness.clock.advance(timedelta(minutes=9, seconds=59))
    await push(harness)
    assert len(receiver.calls) == 1
    harness.clock.advance(timedelta(seconds=1))
    assert (await push(harness))["pushed"] == 3


async def test_a_crm_outage_stops_the_push_after_one_batch(harness: Harness, receiver: Receiver) -> None:
    await many_activities(harness, 250)
    receiver.answers.append((503, {}, {"error": "maintenance"}))
    assert await push(harness) == {"pushed": 0, "retried": 100, "dead": 0}
    assert len(receiver.calls) == 1


async def test_rows_are_dead_lettered_after_max_attempts_and_retried_by_hand(harness: Harness, receiver: Receiver) -> None:
    harness.rt.settings.outbox_max_attempts = 3
    await sent_email(harness)
    await harness.later(minutes=30)
    for _ in range(3):
        receiver.answers.append((503, {}, {"error": "down"}))
        await push(harness)
        harness.clock.advance(timedelta(hours=1))
    assert len(receiver.calls) == 3

    dead = await outbox(harness, "dead")
    assert dead["counts"] == {"dead": 1}
    [row] = dead["items"]
    assert (row["kind"], row["attempts"], row["last_error"]) == ("sent", 3, "HTTP 503")
    await push(harness)
    assert len(receiver.calls) == 3, "a dead row is not pushed"

    retried = await harness.client.post("/v1/outbox/retry", headers=harness.auth)
    assert retried.json() == {"retried": 1}
    assert (await outbox(harness, "dead"))["items"] == []
    await push(harness)
    assert len(receiver.calls) == 4 and receiver.calls[-1].ids == [row["id"]]
    assert (await outbox(harness))["counts"] == {"pushed": 1}


async def test_retry_by_ids_and_a_refused_item_dead_letters_only_itself(harness: Harness, receiver: Receiver) -> None:
    await many_activities(harness, 5)
    receiver.answers.append(
        (200, {}, lambda ids: {"results": [{"id": ids[1], "ok": False, "error": "contact deleted"}]})
    )
    assert await push(harness) == {"pushed": 4, "retried": 0, "dead": 1}
    [dead] = (await outbox(harness, "dead"))["items"]
    assert dead["id"] == receiver.calls[0].ids[1] and dead["last_error"] == "contact deleted"
    assert (await outbox(harness))["counts"] == {"pushed": 4, "dead": 1}

    refused = await harness.client.post("/v1/outbox/retry", json={"ids": ["x"]}, headers=harness.auth)
    assert refused.status_code == 422
    other = await harness.client.post("/v1/outbox/retry", json={"ids": [dead["id"] + 1000]}, headers=harness.auth)
    assert other.json() == {"retried": 0}
    none = await harness.client.post("/v1/outbox/retry", json={"ids": []}, headers=harness.auth)
    assert none.json() == {"retried": 0}, "an empty list retries nothing, not everything"
    retried = await harness.client.post("/v1/outbox/retry", json={"ids": [dead["id"]]}, headers=harness.auth)
    assert retried.json() == {"retried": 1}
    await push(harness)
    assert receiver.calls[-1].ids == [dead["id"]]
    assert (await outbox(harness))["counts"] == {"pushed": 5}


async def test_a_client_error_dead_letters_the_batch_at_once(harness: Harness, receiver: Receiver) -> None:
    await many_activities(harness, 3)
    receiver.answers.append((400, {}, {"error": "unknown field"}))
    assert await push(harness) == {"pushed": 0, "retried": 0, "dead": 3}
    [row, *_] = (await outbox(harness, "dead"))["items"]
    assert row["last_error"].startswith("HTTP 400")


async def test_the_worker_cron_job_pushes(harness: Harness, receiver: Receiver) -> None:
    """Nothing calls the push: the real arq worker's cron (every 2 s) picks the row up."""
    from workers.settings import make_worker

    await sent_email(harness)
    assert receiver.activities == []
    worker = make_worker(harness.rt, handle_signals=False)
    task = asyncio.create_task(worker.main())
    try:
        deadline = time.monotonic() + 30
        while not receiver.activities or (await outbox(harness, "pending"))["items"]:
            assert not task.done(), task
            assert time.monotonic() < deadline, "the cron never pushed"
            await asyncio.sleep(0.1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [a["kind"] for a in receiver.activities] == ["sent"]
    assert len(receiver.calls) == 1


async def test_a_burst_of_hits_makes_one_row_per_fact(harness: Harness, receiver: Receiver) -> None:
    _, email = await sent_email(harness)
    await harness.later(minutes=20)
    first, second = tracked_links(email)
    pixel = pixel_url(email)
    await asyncio.gather(
        *(harness.client.get(pixel, headers={"User-Agent": HUMAN_UA}) for _ in range(100)),
        *(harness.client.get(link, headers={"User-Agent": HUMAN_UA}) for link in [first, second] * 25),
    )

    async def written() -> bool:
        rows = (await outbox(harness))["items"]
        return sorted(row["kind"] for row in rows) == ["clicked", "clicked", "opened", "sent"]

    await eventually(written)
    await push(harness)
    assert sorted(a["kind"] for a in receiver.activities) == ["clicked", "clicked", "opened", "sent"]


async def test_activities_recorded_after_a_429_wait_for_its_retry_after_too(harness: Harness, receiver: Receiver) -> None:
    """HubSpot asked for 5 s; an activity written 1.5 s later must not be pushed before then."""
    await many_activities(harness, 2)
    receiver.answers.append((429, {"Retry-After": "5"}, {"error": "slow down"}))
    assert await push(harness) == {"pushed": 0, "retried": 2, "dead": 0}
    paused = (await outbox(harness))["paused"]
    assert paused == {"webhook": "2026-01-05T09:00:05Z"}

    harness.clock.advance(timedelta(seconds=1.5))
    async with harness.rt.db.begin() as connection:
        message = dict((await connection.execute(select(messages))).mappings().first())
        await record_activity(harness.rt, connection, message, "opened", harness.clock.now())
    assert await push(harness) == {"pushed": 0, "retried": 0, "dead": 0}
    assert len(receiver.calls) == 1, "nothing, old or new, goes to a CRM that asked to wait"

    harness.clock.advance(timedelta(seconds=3.5))
    assert (await push(harness))["pushed"] == 3
    assert (await outbox(harness))["paused"] == {}


async def test_a_later_shorter_retry_after_does_not_shorten_the_pause(harness: Harness, receiver: Receiver) -> None:
    from core.outbox import pause_crm, paused_until

    now = harness.clock.now()
    await pause_crm(harness.rt, "webhook", now + timedelta(seconds=60))
    await pause_crm(harness.rt, "webhook", now + timedelta(seconds=5))
    assert (await paused_until(harness.rt))["webhook"] == now + timedelta(seconds=60)


class Poisoned:
    """The real webhook connector, but raising (as a connector bug would) whenever `poison`
    is among the activities it is given."""

    def __init__(self, inner: Any, poison: int):
        self.inner, self.poison, self.batches = inner, poison, []
        self.batch_size = inner.batch_size

    async def push_activities(self, batch: list[Any]) -> list[Any]:
        self.batches.append([activity.id for activity in batch])
        if any(activity.id == self.poison for activity in batch):
            raise KeyError("boom")
        return await self.inner.push_activities(batch)


async def test_an_activity_that_makes_the_connector_raise_is_isolated_then_dead_lettered(
    harness: Harness, receiver: Receiver
) -> None:
    harness.rt.settings.outbox_max_attempts = 3
    await many_activities(harness, 8)
    ids = [item["id"] for item in (await outbox(harness))["items"]]
    poison = sorted(ids)[5]
    sink = Poisoned(harness.rt.extras["connectors"]["webhook"], poison)

    assert await push_outbox(harness.rt, {"webhook": sink}) == {"pushed": 7, "retried": 1, "dead": 0}
    assert sorted(a["id"] for a in receiver.activities) == sorted(set(ids) - {poison})
    for _ in range(5):
        harness.clock.advance(timedelta(hours=2))
        await push_outbox(harness.rt, {"webhook": sink})
    dead = await outbox(harness, "dead")
    assert [(row["id"], row["attempts"], row["last_error"]) for row in dead["items"]] == [(poison, 3, "KeyError: 'boom'")]
    calls = len(sink.batches)
    harness.clock.advance(timedelta(days=1))
    await push_outbox(harness.rt, {"webhook": sink})
    assert len(sink.batches) == calls, "a dead row is never tried again by itself"


async def test_an_unreadable_row_is_dead_lettered_and_the_others_still_go(harness: Harness, receiver: Receiver) -> None:
    from sqlalchemy import update

    from core.db import outbox as outbox_table

    await many_activities(harness, 3)
    bad = min(item["id"] for item in (await outbox(harness))["items"])
    async with harness.rt.db.begin() as connection:
        await connection.execute(update(outbox_table).where(outbox_table.c.id == bad).values(details=[1, 2]))
    assert (await push(harness))["pushed"] == 2
    [dead] = (await outbox(harness, "dead"))["items"]
    assert dead["id"] == bad and dead["last_error"].startswith("unreadable row: TypeError")
    assert await push(harness) == {"pushed": 0, "retried": 0, "dead": 0}


async def test_two_pushers_at_once_push_every_activity_exactly_once(harness: Harness, receiver: Receiver) -> None:
    await many_activities(harness, 250)
    first, second = await asyncio.gather(push(harness), push(harness))
    assert first["pushed"] + second["pushed"] == 250
    ids = [activity["id"] for activity in receiver.activities]
    assert len(ids) == len(set(ids)) == 250, "no activity went to the CRM twice"
    assert (await outbox(harness))["counts"] == {"pushed": 250}
