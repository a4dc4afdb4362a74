"""The paths where a mistake costs a duplicate or a lost email, each through the real worker,
the real sweep and a real SMTP server: a suppression added after a send cancels the
follow-up; the frequency cap holds when triggers of several campaigns race on several
workers; two sweeps promoting the same follow-up send it once; an inbound event whose CRM
never answers ends `failed` after its last attempt instead of looping; an engagement batch
that cannot be written falls back to hit-by-hit, and a stopping `serve` writes every hit
it answered."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import func, select, update

from core.capture import listening_socket
from core.db import inbound_events, messages, triggers
from core.engagement import EngagementWriter, Hit
from core.scheduler import sweep
from tests.harness import BASE_CONFIG, JANE, Harness, drain
from tests.test_tracking import HUMAN_UA, pixel_url, sent_email
from workers.settings import make_worker

NEWS = [f"news-{n}" for n in range(1, 7)]


@pytest.fixture
def config_text() -> str:
    """The base config with six more campaigns anyone in the directory may get, and a cap
    of 3 emails per HCP per 7 days across campaigns."""
    config = yaml.safe_load(BASE_CONFIG)
    config["campaigns"] += [{"id": name, "subject": f"News {name}", "html": "<p>News</p>", "cooldown": "1d"} for name in NEWS]
    return yaml.safe_dump(config, sort_keys=False)


def kinds_and_states(view: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["kind"], m["status"]) for m in view["messages"]]


# --- a suppression added after the send cancels the follow-up through the sweep ----------


async def test_a_suppression_added_after_the_send_cancels_the_resend(harness: Harness) -> None:
    first = await harness.send()
    assert first["status"] == "sent" and kinds_and_states(first) == [("initial", "sent"), ("resend", "scheduled")]
    response = await harness.client.post(
        "/v1/suppressions", json={"npi": JANE, "reason": "hcp-request"}, headers=harness.auth
    )
    assert response.status_code == 201, response.text

    done = await harness.later(days=3, minutes=1)  # the sweep finds the follow-up due
    assert done["resends"] == 1
    await harness.later(days=3, minutes=1)
    view = await harness.outcome(first["id"])
    assert kinds_and_states(view) == [("initial", "sent"), ("resend", "cancelled")]
    assert "suppressed" in view["messages"][1]["error"] and "hcp-request" in view["messages"][1]["error"]
    assert len(harness.smtp.messages) == 1


async def test_a_suppression_for_another_campaign_leaves_the_resend_alone(harness: Harness) -> None:
    first = await harness.send()
    await harness.client.post("/v1/suppressions", json={"npi": JANE, "campaign_id": "cardio-webinar"}, headers=harness.auth)
    await harness.later(days=3, minutes=1)
    assert kinds_and_states(await harness.outcome(first["id"]))[:2] == [("initial", "sent"), ("resend", "sent")]
    assert [m["Subject"].startswith("In case you missed it") for m in harness.smtp.messages] == [False, True]


# --- the frequency cap across campaigns, under concurrency ----------------------------------


async def statuses(h: Harness) -> dict[str, int]:
    async with h.rt.db.connect() as connection:
        rows = await connection.execute(select(triggers.c.status, func.count()).group_by(triggers.c.status))
        return {status: count for status, count in rows}


async def test_the_frequency_cap_holds_when_campaigns_race_on_several_workers(harness: Harness) -> None:
    """Triggers for six campaigns (each would pass its own cooldown) arrive together, twice
    over, and four workers decide them at once: the cap (3 per 7 days) lets exactly 3 out."""
    accepted = await asyncio.gather(*(harness.trigger(JANE, name) for name in NEWS * 2))
    assert len({a["id"] for a in accepted}) == 12
    workers = [make_worker(harness.rt, burst=True, handle_signals=False) for _ in range(4)]
    await asyncio.gather(*(worker.main() for worker in workers))
    await drain(harness.rt)
    counts = await statuses(harness)
    assert counts.get("sent") == 3, counts
    assert counts.get("sent", 0) + counts.get("frequency_cap", 0) + counts.get("cooldown", 0) == 12, counts
    assert counts.get("frequency_cap", 0) >= 3, counts
    assert len(harness.smtp.to("jane.doe@clinic.example")) == 3
    assert len({str(m["Subject"]) for m in harness.smtp.messages}) == 3, "three different campaigns"


# --- two sweeps promoting the same follow-up ---------------------------------------------------


async def test_concurrent_sweeps_promote_a_due_resend_once(harness: Harness) -> None:
    first = await harness.send()
    harness.clock.advance(timedelta(days=3, minutes=1))
    results = await asyncio.gather(*(sweep(harness.rt) for _ in range(4)))
    assert sum(result["resends"] for result in results) == 1, results
    await drain(harness.rt)
    await asyncio.gather(*(sweep(harness.rt) for _ in range(4)))
    await drain(harness.rt)
    view = await harness.outcome(first["id"])
    assert kinds_and_states(view)[:2] == [("initial", "sent"), ("resend", "sent")]
    assert [str(m["Subject"]).startswith("In case you missed it") for m in harness.smtp.messages] == [False, True]


# --- an inbound event reaching its last attempt ---------------------------------------------


async def test_an_inbound_event_whose_crm_never_answers_fails_after_its_last_attempt(hubspot_harness: Harness) -> None:
    from connectors.inbound import MAX_ATTEMPTS
    from tests.test_hubspot_webhooks import deliver, interest_changed

    harness, fake = hubspot_harness, hubspot_harness.fake  # type: ignore[attr-defined]
    fake.fail_next(10_000, status=503)
    response = await deliver(harness, interest_changed("1246965"))
    assert response.status_code == 200, response.text
    await drain(harness.rt)
    attempts_seen = []
    for _ in range(MAX_ATTEMPTS + 3):
        [event] = await events(harness)
        attempts_seen.append(event["attempts"])
        if event["status"] != "pending":
            break
        await harness.later(hours=1, seconds=1)  # the longest backoff is an hour
    [event] = await events(harness)
    assert event["status"] == "failed", event
    assert event["attempts"] == MAX_ATTEMPTS and f"after {MAX_ATTEMPTS} attempts" in event["result"], event
    assert "503" in event["result"]
    assert attempts_seen == sorted(attempts_seen), attempts_seen
    calls = len(fake.requests)
    await harness.later(hours=6)  # nothing loops
    assert len(fake.requests) == calls and [e["status"] for e in await events(harness)] == ["failed"]
    assert await statuses(harness) == {} and harness.smtp.messages == []


async def events(h: Harness) -> list[dict[str, Any]]:
    async with h.rt.db.connect() as connection:
        return [dict(row) for row in (await connection.execute(select(inbound_events))).mappings().all()]


@pytest.fixture
async def hubspot_harness(database_url: str, redis_url: str, smtp: Any, tmp_path: Path) -> Any:
    """A harness configured for HubSpot against the fake HubSpot of the webhook tests."""
    from tests.fakes.fake_hubspot import FakeHubSpot
    from tests.harness import load_directory, make_config, make_harness
    from tests.test_hubspot_webhooks import JANE_MAIL, PORTAL, SECRET, TOKEN, TRIGGERS

    sink, smtp_url = smtp
    with FakeHubSpot(token=TOKEN) as fake:
        fake.contacts["1246965"] = {"npi": JANE, "email": JANE_MAIL, "firstname": "Jane", "lastname": "Doe", "interest": "Asthma"}
        hubspot = {"access_token": TOKEN, "client_secret": SECRET, "base_url": fake.url, "portal_id": PORTAL, "npi_property": "npi"}
        text = BASE_CONFIG + yaml.safe_dump({"crm": {"hubspot": hubspot}, "triggers": TRIGGERS}, sort_keys=False)
        h = await make_harness(database_url=database_url, redis_url=redis_url, config=make_config(text), sink=sink, smtp_url=smtp_url)
        h.fake = fake  # type: ignore[attr-defined]
        await load_directory(h.rt, tmp_path)
        yield h
        await h.client.aclose()
        await h.rt.aclose()


# --- engagement: the batch fallback, and the flush when serve stops ----------------------------


async def test_one_unwritable_hit_fails_alone_and_the_rest_of_its_batch_is_written(harness: Harness) -> None:
    good, _ = await sent_email(harness)
    bad, _ = await sent_email(harness, "1457301236", "cardio-webinar")
    good_id, bad_id = good["messages"][0]["id"], bad["messages"][0]["id"]
    async with harness.rt.db.begin() as connection:  # a row the batch cannot handle
        await connection.execute(update(messages).where(messages.c.id == bad_id).values(links=5))
    harness.clock.advance(600)
    writer = EngagementWriter(harness.rt)
    hits = [Hit("open", good_id, None, HUMAN_UA) for _ in range(20)] + [Hit("click", bad_id, 0, HUMAN_UA)]
    hits += [Hit("open", good_id, None, HUMAN_UA) for _ in range(20)]
    answers = await asyncio.gather(*(writer.submit(hit) for hit in hits), return_exceptions=True)
    assert answers[:20] == [True] * 20 and answers[21:] == [True] * 20, answers
    assert isinstance(answers[20], Exception), answers[20]
    await writer.flush()
    view = await harness.outcome(good["id"])
    assert view["messages"][0]["open_count"] == 40, view["messages"][0]
    async with harness.rt.db.connect() as connection:
        clicks = (await connection.execute(select(messages.c.click_count).where(messages.c.id == bad_id))).scalar_one()
    assert clicks == 0


async def test_a_stopping_serve_writes_every_hit_it_answered(harness: Harness, tmp_path: Path, config_text: str) -> None:
    result, email = await sent_email(harness)
    config = tmp_path / "trigger-email.yaml"
    config.write_text(config_text)
    settings = harness.rt.settings
    env = {
        **os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url, "SMTP_URL": settings.smtp_url,
        "SECRET_KEY": settings.secret_key, "TRIGGER_EMAIL_CONFIG": str(config), "LOG_LEVEL": "WARNING",
    }
    listener = listening_socket()
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    serve = subprocess.Popen([sys.executable, "-m", "trigger_email", "serve", "--fd", str(listener.fileno())],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=(listener.fileno(),))
    listener.close()
    pixel = pixel_url(email).replace(harness.rt.config.public_url, base)
    answered = 0
    try:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=50)) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if (await client.get(f"{base}/health")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline and serve.poll() is None, "serve did not start"
                await asyncio.sleep(0.2)

            async def load() -> int:
                try:
                    return (await client.get(pixel, headers={"User-Agent": HUMAN_UA})).status_code
                except httpx.HTTPError:
                    return 0

            burst = [asyncio.create_task(load()) for _ in range(300)]
            await asyncio.sleep(0.3)
            serve.send_signal(signal.SIGTERM)  # mid-burst: uvicorn finishes requests in flight, then the lifespan flushes
            codes = await asyncio.gather(*burst)
            answered = codes.count(200)
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
        _, err = serve.communicate(timeout=60)
    assert "Traceback" not in err.decode(), err.decode()
    assert answered > 0
    view = await harness.outcome(result["id"])
    assert view["messages"][0]["open_count"] == answered, (view["messages"][0], answered)

