"""Deliverability end to end: real bounce messages (tests/fixtures/email) mailed to the
bounce listener about an email we really sent; the actions each kind takes on addresses,
emails and receiving domains; the deliverability view; `bounces classify`."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.harness import JANE, OMAR, Harness
from tests.test_bounces_smtp import FIXTURES, BounceMailbox, mailbox, verp  # noqa: F401 - the fixture
from tests.test_tracking import sent_email


def about(fixture: str, recipient: str, fixture_recipient: str) -> bytes:
    """A real bounce, rewritten to be about `recipient` (its address in the fixture replaced)."""
    text = (FIXTURES / fixture).read_bytes().decode("latin-1")
    return re.sub(re.escape(fixture_recipient), recipient, text, flags=re.IGNORECASE).encode("latin-1")


async def test_exchange_bounce_without_codes_reroutes_the_same_email(harness: Harness, mailbox: BounceMailbox) -> None:
    """Exchange 2000's "The recipient name is not recognized": no SMTP code anywhere."""
    result, _ = await sent_email(harness)
    _token, envelope = verp(harness, result["messages"][0]["id"])
    await harness.later(hours=5)

    raw = about("exchange2000_recipient_not_recognized.eml", "jane.doe@clinic.example", "userx@example.EDU")
    await mailbox.deliver(raw, envelope)

    assert mailbox.results == ["hard bounce: jane.doe@clinic.example marked; the same email goes to jdoe@health.example"]
    await harness.later(minutes=1)
    first, second = harness.smtp.messages
    assert second["To"] == "jdoe@health.example" and second["Subject"] == first["Subject"]


async def test_blocklisting_keeps_the_address_and_throttles_the_domain(harness: Harness, mailbox: BounceMailbox) -> None:
    """Gmail refusing our mail as unsolicited says nothing about the HCP's address."""
    result, _ = await sent_email(harness, OMAR, "cardio-webinar")
    _token, envelope = verp(harness, result["messages"][0]["id"])

    await mailbox.deliver(about("gmail_unsolicited_mail.eml", "omar.haddad@heart.example", "david...@gmail.com"), envelope)

    assert mailbox.results[0].startswith("block (spam_detected) from heart.example: address kept; retry at ")
    view = (await harness.client.get("/v1/deliverability", headers=harness.auth)).json()
    [heart] = [row for row in view["domains"] if row["domain"] == "heart.example"]
    assert (heart["sent"], heart["block"], heart["hard"], heart["state"]) == (1, 1, 0, "throttled")
    assert "spam_detected" in heart["reason"]
    await harness.later(hours=1, minutes=1)
    assert [e[1] for e in harness.smtp.envelopes] == [["omar.haddad@heart.example"]] * 2, "retried, same address"
    later = await harness.send(OMAR, "derm-news")
    assert later["status"] == "sent", later


async def test_repeated_blocks_pause_the_domain_with_an_alert(
    harness: Harness, mailbox: BounceMailbox, caplog: object
) -> None:
    result, _ = await sent_email(harness, OMAR, "cardio-webinar")
    _token, envelope = verp(harness, result["messages"][0]["id"])
    block = about("gmail_unsolicited_mail.eml", "omar.haddad@heart.example", "david...@gmail.com")
    with caplog.at_level(logging.WARNING, logger="core.domains"):  # type: ignore[attr-defined]
        for _ in range(5):
            await mailbox.deliver(block, envelope)
    assert any("deliverability alert: sending to heart.example paused" in r.getMessage() for r in caplog.records)  # type: ignore[attr-defined]
    view = (await harness.client.get("/v1/deliverability", headers=harness.auth)).json()
    [heart] = [row for row in view["domains"] if row["domain"] == "heart.example"]
    assert heart["state"] == "paused" and heart["reason"].startswith("5 blocks in 1h")
    metrics = (await harness.client.get("/metrics", headers=harness.auth)).text
    assert 'trigger_email_domain_state{domain="heart.example",state="paused"} 1.0' in metrics
    assert 'trigger_email_domain_emails{domain="heart.example",figure="block"} 5.0' in metrics

    held = await harness.send(OMAR, "derm-news")
    assert held["messages"][0]["status"] == "queued" and "paused" in held["messages"][0]["error"]
    sent_before = len(harness.smtp.messages)
    await harness.later(hours=2, minutes=5)
    assert len(harness.smtp.messages) > sent_before, "sent once the pause ended"
    assert harness.smtp.envelopes[-1][1] == ["omar.haddad@heart.example"]


async def test_auto_reply_changes_nothing(harness: Harness, mailbox: BounceMailbox) -> None:
    result, _ = await sent_email(harness)
    _token, envelope = verp(harness, result["messages"][0]["id"])
    await mailbox.deliver(about("autoreply_spanish.eml", "jane.doe@clinic.example", "contact@example.com"), envelope)
    assert mailbox.results == ["auto-reply from jane.doe@clinic.example recorded"]
    assert (await harness.send(JANE, "cardio-webinar"))["messages"][0]["to"] == "jane.doe@clinic.example"


async def test_deliverability_view_rejects_a_bad_range(harness: Harness) -> None:
    response = await harness.client.get("/v1/deliverability?from=yesterday", headers=harness.auth)
    assert response.status_code == 422 and response.json()["field"] == "from"
    response = await harness.client.get("/v1/deliverability", params={"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, headers=harness.auth)
    assert response.status_code == 422


def test_bounces_classify_over_the_fixture_folder() -> None:
    files = sorted(str(path) for path in FIXTURES.glob("*.eml"))
    done = subprocess.run(
        [sys.executable, "-m", "trigger_email.cli", "bounces", "classify", *files],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["file"] for line in lines] == files
    assert all(set(line) == {"file", "kind", "reason", "status", "recipients", "diagnostic"} for line in lines)
    by_name = {Path(line["file"]).name: line for line in lines}
    assert (by_name["exim_user_unknown.eml"]["kind"], by_name["exim_user_unknown.eml"]["recipients"]) == (
        "hard", ["userx@its.example.nl"]
    )
    assert by_name["gmail_unsolicited_mail.eml"]["kind"] == "block"


def test_bounces_classify_reads_stdin() -> None:
    raw = (FIXTURES / "yahoo_account_disabled.eml").read_bytes()
    done = subprocess.run(
        [sys.executable, "-m", "trigger_email.cli", "bounces", "classify", "-"], input=raw, capture_output=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert done.returncode == 0
    line = json.loads(done.stdout)
    assert (line["file"], line["kind"], line["reason"]) == ("-", "soft", "suspended")


# --- answers at send time, through the real SMTP server --------------------------------


async def _address_status(harness: Harness, npi: str, address: str) -> str:
    from tests.test_directory import addresses

    return dict(await addresses(harness.rt.db, npi))[address]


async def test_blocklisting_at_rcpt_keeps_the_address_and_throttles_the_domain(harness: Harness) -> None:
    harness.smtp.reject["omar.haddad@heart.example"] = (
        "550 5.7.606 Access denied, banned sending IP [203.0.113.7]. To request removal from this list please "
        "visit https://sender.office.com/ and follow the directions."
    )
    result = await harness.send(OMAR, "cardio-webinar")

    message = result["messages"][0]
    assert message["status"] == "queued" and "blocked (blocked)" in message["error"]
    assert await _address_status(harness, OMAR, "omar.haddad@heart.example") == "ok"
    view = (await harness.client.get("/v1/deliverability", headers=harness.auth)).json()
    [heart] = [row for row in view["domains"] if row["domain"] == "heart.example"]
    assert (heart["block"], heart["hard"], heart["state"]) == (1, 0, "throttled") and "5.7.606" in heart["reason"]

    del harness.smtp.reject["omar.haddad@heart.example"]  # delisted
    await harness.later(hours=1, minutes=1)
    assert [e[1] for e in harness.smtp.envelopes] == [["omar.haddad@heart.example"]]
    assert (await harness.outcome(result["id"]))["status"] == "sent"


async def test_user_unknown_at_rcpt_sends_the_same_email_to_the_next_address(harness: Harness) -> None:
    harness.smtp.reject["jane.doe@clinic.example"] = "550 5.1.1 <jane.doe@clinic.example>: Recipient address rejected: User unknown"
    result = await harness.send(JANE, "cardio-webinar")
    [message] = [m for m in result["messages"] if m["kind"] == "initial"]
    assert (message["status"], message["to"]) == ("sent", "jdoe@health.example")
    assert await _address_status(harness, JANE, "jane.doe@clinic.example") == "hard_bounced"
    assert [e[1] for e in harness.smtp.envelopes] == [["jdoe@health.example"]]


async def test_a_rate_answer_slows_the_whole_domain(harness: Harness) -> None:
    from core.domains import limiter_of

    harness.smtp.defer["omar.haddad@heart.example"] = 1
    harness.smtp.defer_reply["omar.haddad@heart.example"] = "421 4.7.0 Too many messages from your IP, slow down"
    limiter = limiter_of(harness.rt)
    before = limiter.rate("heart.example")
    result = await harness.send(OMAR, "cardio-webinar")
    assert result["messages"][0]["status"] == "queued"
    assert limiter.rate("heart.example") == before / 2
    assert await _address_status(harness, OMAR, "omar.haddad@heart.example") == "ok"
    await harness.later(minutes=2)
    assert (await harness.outcome(result["id"]))["status"] == "sent"


async def test_a_full_mailbox_is_soft_and_counted(harness: Harness) -> None:
    harness.smtp.defer["omar.haddad@heart.example"] = 1
    harness.smtp.defer_reply["omar.haddad@heart.example"] = "552 5.2.2 Mailbox full"
    result = await harness.send(OMAR, "cardio-webinar")
    assert result["messages"][0]["status"] == "queued"
    assert await _address_status(harness, OMAR, "omar.haddad@heart.example") == "ok"
    await harness.later(minutes=2)
    assert (await harness.outcome(result["id"]))["status"] == "sent"
    view = (await harness.client.get("/v1/deliverability", headers=harness.auth)).json()
    [heart] = [row for row in view["domains"] if row["domain"] == "heart.example"]
    assert (heart["soft"], heart["hard"], heart["block"]) == (1, 0, 0)


async def test_spam_refusal_after_data_keeps_the_address(harness: Harness) -> None:
    harness.smtp.reject_data["omar.haddad@heart.example"] = "554 5.7.1 Message rejected as spam by Content Filtering"
    result = await harness.send(OMAR, "cardio-webinar")
    assert result["messages"][0]["status"] == "queued" and "spam_detected" in result["messages"][0]["error"]
    assert await _address_status(harness, OMAR, "omar.haddad@heart.example") == "ok"
    assert (await harness.send(OMAR, "derm-news"))["messages"][0]["to"] == "omar.haddad@heart.example"


async def test_a_blocklisted_sender_at_mail_from_keeps_the_address(harness: Harness) -> None:
    harness.smtp.reject_mail = "550 5.7.1 Service unavailable; client host [203.0.113.7] blocked using zen.spamhaus.org"
    result = await harness.send(OMAR, "cardio-webinar")
    assert result["messages"][0]["status"] == "queued" and "blocked (blocked)" in result["messages"][0]["error"]
    assert await _address_status(harness, OMAR, "omar.haddad@heart.example") == "ok"
    harness.smtp.reject_mail = ""
    await harness.later(hours=1, minutes=1)
    assert (await harness.outcome(result["id"]))["status"] == "sent"
