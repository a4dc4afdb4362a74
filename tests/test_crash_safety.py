"""Crash-safe sending, piece by piece, in one process against a real SMTP server that can be
made slow at MAIL or at DATA: a job cancelled before the SMTP transaction puts its message back,
one cancelled inside DATA finishes within the grace or leaves the message `unknown`; a dead
worker's claim expires and the sweep releases it (ManualClock); an `unknown` message ends its
trigger `unknown`, is counted, and `trigger-email messages resolve` settles it."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import select, update

from core.db import messages
from core.mailer import Slot
from core.decisions import decide
from core.sending import _claim
from core.capture import SmtpController
from tests.harness import JANE, OMAR, Harness, SmtpSink, cli_environment, drain, invoke_cli as invoke, sweep_and_drain
from workers.jobs import process_trigger


class SlowSink(SmtpSink):
    """Sleeps `mail_delay` before answering MAIL and `data_delay` after taking the content of
    a message (recorded, as a real MTA would have it) before answering DATA."""

    mail_delay = 0.0
    data_delay = 0.0

    def __init__(self) -> None:
        super().__init__()
        self.in_mail = threading.Event()
        self.in_data = threading.Event()

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        self.in_mail.set()
        await asyncio.sleep(self.mail_delay)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        answer = await super().handle_DATA(server, session, envelope)
        self.in_data.set()
        await asyncio.sleep(self.data_delay)
        return answer


@pytest.fixture
def smtp() -> Iterator[tuple[SmtpSink, str]]:
    sink = SlowSink()
    controller = SmtpController(sink, hostname="127.0.0.1", port=0)
    controller.start()
    yield sink, f"smtp://127.0.0.1:{controller.port}"
    controller.stop()


async def until(event: threading.Event) -> None:
    for _ in range(200):
        if event.is_set():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the SMTP server never got there")


async def message_row(h: Harness, trigger_id: str) -> dict[str, Any]:
    async with h.rt.db.connect() as connection:
        return dict((await connection.execute(select(messages).where(messages.c.trigger_id == trigger_id))).mappings().one())


def job(h: Harness, trigger_id: str) -> asyncio.Task[Any]:
    return asyncio.create_task(process_trigger({"runtime": h.rt}, trigger_id))


async def cancel_inside_data(harness: Harness, *, data_delay: float, grace: float, **trigger: str) -> tuple[dict[str, Any], asyncio.Task[Any]]:
    """A trigger whose job is cancelled (what SIGTERM does) while the SMTP server holds DATA for
    `data_delay` seconds, with `grace` seconds for the transaction to finish: the accepted
    trigger and its cancelled job."""
    sink: SlowSink = harness.smtp  # type: ignore[assignment]
    sink.data_delay = data_delay
    harness.rt.mailer.grace = grace
    sink.in_data.clear()
    accepted = await harness.trigger(**trigger)
    task = job(harness, accepted["id"])
    await until(sink.in_data)
    task.cancel()
    return accepted, task


async def test_a_job_cancelled_before_the_smtp_transaction_puts_its_message_back(harness: Harness) -> None:
    sink: SlowSink = harness.smtp  # type: ignore[assignment]
    sink.mail_delay = 1.0
    accepted = await harness.trigger()
    task = job(harness, accepted["id"])
    await until(sink.in_mail)
    row = await message_row(harness, accepted["id"])
    assert row["status"] == "sending" and row["smtp_started_at"] is None  # claimed: a connection is in hand
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    row = await message_row(harness, accepted["id"])
    assert (row["status"], row["attempts"], row["claimed_until"]) == ("queued", 0, None)
    assert "before the SMTP transaction" in row["error"]
    assert (await harness.outcome(accepted["id"]))["status"] == "queued"
    sink.mail_delay = 0.0
    await drain(harness.rt)  # the release enqueued it under a fresh job id
    view = await harness.outcome(accepted["id"])
    assert view["status"] == "sent" and view["messages"][0]["attempts"] == 1
    assert len(sink.messages) == 1


async def test_a_job_waiting_for_a_connection_holds_a_lease_and_a_stop_puts_its_email_back(harness: Harness) -> None:
    """A trigger job's decision claims the message; while the job waits for an SMTP
    connection the claim has a lease (so the sweep leaves it alone) and no SMTP transaction
    has started. A stopping worker puts the email back, queued for the other workers, with
    its attempt not counted."""
    sink: SlowSink = harness.smtp  # type: ignore[assignment]
    sink.data_delay = 1.0
    harness.rt.mailer._slots = asyncio.Queue()  # a pool of one connection
    harness.rt.mailer._slots.put_nowait(Slot())
    first, second = await harness.trigger(), await harness.trigger(npi=OMAR, campaign_id="cardio-webinar")
    one, two = job(harness, first["id"]), job(harness, second["id"])
    await until(sink.in_data)
    for _ in range(100):
        async with harness.rt.db.connect() as connection:
            waiting = (await connection.execute(select(messages).where(messages.c.trigger_id == second["id"]))).mappings().first()
        if waiting is not None:
            break
        await asyncio.sleep(0.02)
    assert waiting is not None and waiting["status"] == "sending"
    assert waiting["claimed_until"] is not None and waiting["smtp_started_at"] is None
    harness.rt.mailer.stop()  # what SIGTERM does: the waiting job gives its message back
    results = await asyncio.gather(one, two)
    assert sorted(results) == ["queued", "sent"]
    row = await message_row(harness, second["id"])
    assert (row["status"], row["claimed_until"], row["attempts"]) == ("queued", None, 0)
    assert "before the SMTP transaction" in row["error"]
    assert len(sink.messages) == 1
    harness.rt.mailer.stopping = False  # another worker
    await drain(harness.rt)
    assert (await harness.outcome(second["id"]))["status"] == "sent" and len(sink.messages) == 2


async def test_a_cancellation_inside_data_lets_the_transaction_finish_within_the_grace(harness: Harness) -> None:
    sink: SlowSink = harness.smtp  # type: ignore[assignment]
    accepted, task = await cancel_inside_data(harness, data_delay=0.5, grace=10.0)
    assert await task == "sent"
    view = await harness.outcome(accepted["id"])
    assert view["status"] == "sent" and view["messages"][0]["status"] == "sent"
    assert len(sink.messages) == 1


async def test_a_transaction_cut_inside_data_is_unknown_counted_and_never_resent(harness: Harness) -> None:
    sink: SlowSink = harness.smtp  # type: ignore[assignment]
    accepted, task = await cancel_inside_data(harness, data_delay=3.0, grace=0.2)
    with pytest.raises(asyncio.CancelledError):
        await task
    view = await harness.outcome(accepted["id"])
    [message] = view["messages"]
    assert view["status"] == "unknown" and message["status"] == "unknown"
    assert f"trigger-email messages resolve {message['id']} sent|resend" in view["reason"]
    assert "jane.doe@clinic.example" in view["reason"]
    metrics = (await harness.client.get("/metrics", headers=harness.auth)).text
    assert 'trigger_email_message_states{status="unknown"} 1.0' in metrics
    assert 'trigger_email_messages_total{result="unknown"}' in metrics
    await harness.later(minutes=10)
    assert len(sink.messages) == 1  # it reached the server once; nothing sends it again
    assert (await harness.outcome(accepted["id"]))["status"] == "unknown"


async def test_a_dead_workers_claim_expires_and_the_sweep_puts_the_message_back(harness: Harness) -> None:
    """SIGKILL, seen from the database: a claim nobody renews. Before its SMTP transaction
    started, the message goes back to `queued` once the lease (15 s) runs out, not after the
    job timeout, and is sent once."""
    accepted = await harness.trigger()
    await harness.rt.queue.redis.flushdb()  # type: ignore[union-attr]
    assert (await decide(harness.rt, accepted["id"])).status == "queued"  # type: ignore[union-attr]
    row = await message_row(harness, accepted["id"])
    claimed = await _claim(harness.rt, row["id"], harness.clock.now())  # … and the worker dies here
    assert claimed is not None and claimed["status"] == "sending"
    await harness.later(seconds=10)
    assert (await message_row(harness, accepted["id"]))["status"] == "sending"  # the lease still runs
    assert harness.smtp.messages == []
    done = await harness.later(seconds=6)
    assert done["released"] == 1
    view = await harness.outcome(accepted["id"])
    assert view["status"] == "sent" and view["messages"][0]["attempts"] == 1
    assert len(harness.smtp.messages) == 1


async def test_a_dead_workers_claim_after_data_becomes_unknown_not_resent(harness: Harness) -> None:
    accepted = await harness.trigger()
    await harness.rt.queue.redis.flushdb()  # type: ignore[union-attr]
    await decide(harness.rt, accepted["id"])
    row = await message_row(harness, accepted["id"])
    await _claim(harness.rt, row["id"], harness.clock.now())
    async with harness.rt.db.begin() as connection:  # the worker recorded the start of DATA, then died
        await connection.execute(update(messages).where(messages.c.id == row["id"]).values(smtp_started_at=harness.clock.now()))
    done = await harness.later(seconds=16)
    assert done["unknown"] == 1 and done["released"] == 0
    view = await harness.outcome(accepted["id"])
    assert view["status"] == "unknown" and "messages resolve" in view["reason"]
    assert harness.smtp.messages == []
    # `unknown` counts as contact (it may have been delivered): no second email in the cooldown.
    again = await harness.send()
    assert again["status"] == "cooldown"


@pytest.fixture
def cli_env(harness: Harness, tmp_path: Path) -> dict[str, str | None]:
    return cli_environment(harness, tmp_path, SMTP_URL=harness.rt.settings.smtp_url)


async def cut_inside_data(harness: Harness, npi: str = JANE, campaign_id: str = "asthma-launch") -> str:
    sink: SlowSink = harness.smtp  # type: ignore[assignment]
    accepted, task = await cancel_inside_data(harness, data_delay=3.0, grace=0.1, npi=npi, campaign_id=campaign_id)
    await asyncio.gather(task, return_exceptions=True)
    sink.data_delay = 0.0
    return accepted["id"]


async def test_messages_resolve_sent_records_it_and_schedules_the_resends(harness: Harness, cli_env: dict[str, str]) -> None:
    trigger_id = await cut_inside_data(harness)
    message_id = (await harness.outcome(trigger_id))["messages"][0]["id"]
    result = await invoke(["messages", "resolve", message_id, "sent"], cli_env)
    assert result.exit_code == 0, result.output
    assert f"message {message_id} recorded as sent" in result.output
    view = await harness.outcome(trigger_id)
    assert view["status"] == "sent"
    assert [(m["kind"], m["status"]) for m in view["messages"]] == [("initial", "sent"), ("resend", "scheduled")]
    # The command ran on the wall clock; the resend is due `resend.after` from then.
    harness.clock.set(datetime.fromisoformat(view["messages"][1]["due_at"].replace("Z", "+00:00")))
    await sweep_and_drain(harness.rt)
    assert [str(m["Subject"]).startswith("In case you missed it") for m in harness.smtp.messages] == [False, True]
    again = await invoke(["messages", "resolve", message_id, "resend"], cli_env)
    assert again.exit_code == 1 and "is sent, not unknown" in again.output


async def test_messages_resolve_resend_sends_it_again(harness: Harness, cli_env: dict[str, str]) -> None:
    trigger_id = await cut_inside_data(harness)
    message_id = (await harness.outcome(trigger_id))["messages"][0]["id"]
    result = await invoke(["messages", "resolve", message_id, "resend"], cli_env)
    assert result.exit_code == 0, result.output
    assert "queued to be sent again" in result.output
    assert (await harness.outcome(trigger_id))["status"] == "queued"
    await drain(harness.rt)
    view = await harness.outcome(trigger_id)
    assert view["status"] == "sent" and view["messages"][0]["status"] == "sent"
    assert len(harness.smtp.messages) == 2  # the cut one and the resend the operator asked for
    bad = await invoke(["messages", "resolve", message_id, "maybe"], cli_env)
    assert bad.exit_code == 2 and "sent or resend" in bad.output
    missing = await invoke(["messages", "resolve", "msg_nope", "sent"], cli_env)
    assert missing.exit_code == 1 and "no message msg_nope" in missing.output


async def test_a_live_worker_renews_its_claim_through_a_long_transaction(harness: Harness) -> None:
    """The lease is short, DATA is slow: the heartbeat keeps the claim, so the sweep neither
    releases the message nor calls it unknown while its worker is alive."""
    from core.scheduler import sweep

    sink: SlowSink = harness.smtp  # type: ignore[assignment]
    sink.data_delay = 1.5
    harness.rt.settings.claim_lease = 0.3  # renewed every 0.1 s
    accepted = await harness.trigger()
    task = job(harness, accepted["id"])
    await until(sink.in_data)
    swept = []
    while not task.done():
        harness.clock.advance(0.2)  # more than the lease passes on the clock during DATA …
        await asyncio.sleep(0.15)
        swept.append(await sweep(harness.rt))  # … yet every sweep finds the claim renewed
    assert await task == "sent"
    assert len(swept) >= 5 and all(done["unknown"] == 0 and done["released"] == 0 for done in swept)
    assert (await harness.outcome(accepted["id"]))["status"] == "sent"
    assert len(sink.messages) == 1
