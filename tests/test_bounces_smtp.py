"""Asynchronous bounces and complaints delivered over SMTP to the bounce listener: reports
shaped like the RFC 3464 / RFC 5965 examples (tests/fixtures/email), addressed to the VERP
Return-Path of an email we really sent."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import AsyncIterator

import aiosmtplib
import pytest

from core.bounce_listener import start_bounce_listener
from core.compose import tokens_for
from tests.harness import BASE_CONFIG, JANE, OMAR, Harness
from tests.test_tracking import sent_email

FIXTURES = Path(__file__).parent / "fixtures" / "email"


class BounceMailbox:
    """The listener on a free port, and an MTA that mails reports to it."""

    def __init__(self, harness: Harness, port: int, server: object):
        self.harness = harness
        self.port = port
        self.server = server

    @property
    def results(self) -> list[str]:
        return list(self.server.handler.results)  # type: ignore[attr-defined]

    async def deliver(self, raw: bytes, recipient: str, sender: str = "") -> None:
        """Reports come from the null reverse path (`MAIL FROM:<>`), as RFC 3464 requires."""
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port, timeout=10) as client:
            await client.sendmail(sender, [recipient], raw)


@pytest.fixture
async def mailbox(harness: Harness) -> AsyncIterator[BounceMailbox]:
    server = await start_bounce_listener(harness.rt, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    yield BounceMailbox(harness, port, server)
    server.close()
    await server.wait_closed()


def verp(harness: Harness, message_id: str) -> tuple[str, str]:
    """The token and envelope sender the email `message_id` went out with."""
    token = tokens_for(harness.rt).bounce(message_id)
    return token, f"bounce+{token}@bounces.pharma.example"


def report(fixture: str, *, token: str, placeholder: str, recipient: str, original_recipient: str) -> bytes:
    """A fixture report rewritten to be about our email: its token and its recipient."""
    text = (FIXTURES / fixture).read_text()
    text = text.replace(placeholder, token)
    text = re.sub(re.escape(original_recipient), recipient, text, flags=re.IGNORECASE)
    return text.encode()


def hard_dsn(token: str, recipient: str) -> bytes:
    return report("dsn_hard_550.eml", token=token, placeholder="tok123", recipient=recipient,
                  original_recipient="Dr.Smith@clinic.example")


def soft_dsn(token: str, recipient: str) -> bytes:
    return report("dsn_soft_delayed.eml", token=token, placeholder="tok-delay.77", recipient=recipient,
                  original_recipient="np.garcia@clinic.example")


def arf(token: str, recipient: str) -> bytes:
    return report("arf_abuse_complaint.eml", token=token, placeholder="tok-arf-9", recipient=recipient,
                  original_recipient="Dr.Jones@clinic.example")


async def test_email_goes_out_with_a_verp_return_path(harness: Harness) -> None:
    result, email = await sent_email(harness)
    token, envelope_from = verp(harness, result["messages"][0]["id"])
    assert harness.smtp.envelopes[0][0] == envelope_from
    assert email["X-Trigger-Email-Token"] == token


async def test_hard_dsn_marks_the_address_and_the_same_email_goes_to_the_next_one(
    harness: Harness, mailbox: BounceMailbox
) -> None:
    result, _ = await sent_email(harness)
    token, envelope = verp(harness, result["messages"][0]["id"])
    await harness.later(hours=2)

    await mailbox.deliver(hard_dsn(token, "jane.doe@clinic.example"), envelope)

    assert mailbox.results == ["hard bounce: jane.doe@clinic.example marked; the same email goes to jdoe@health.example"]
    await harness.later(minutes=1)
    assert [e[1] for e in harness.smtp.envelopes] == [["jane.doe@clinic.example"], ["jdoe@health.example"]]
    assert harness.smtp.messages[1]["Subject"] == harness.smtp.messages[0]["Subject"], "the same email, not a reminder"
    messages = (await harness.outcome(result["id"]))["messages"]
    assert [(m["kind"], m["status"], m["to"]) for m in messages if m["status"] != "cancelled"] == [
        ("initial", "sent", "jdoe@health.example"), ("resend", "scheduled", None),
    ]
    await harness.later(days=3)
    assert harness.smtp.envelopes[-1][1] == ["jdoe@health.example"]
    assert harness.smtp.messages[-1]["Subject"].startswith("In case you missed it")
    other = await harness.send(JANE, "cardio-webinar")
    assert other["messages"][0]["to"] == "jdoe@health.example"


async def test_a_hard_bounce_too_late_to_reroute_cancels_the_reminders(harness: Harness, mailbox: BounceMailbox) -> None:
    """Nobody gets "In case you missed it" for an email they never received."""
    result, _ = await sent_email(harness)
    token, envelope = verp(harness, result["messages"][0]["id"])
    await harness.later(days=2, hours=23)  # the resend is due at 3 days; reroute_within is 3 days
    await harness.later(hours=2)
    sent_before = len(harness.smtp.messages)

    await mailbox.deliver(hard_dsn(token, "jane.doe@clinic.example"), envelope)
    await harness.later(days=5)

    assert sent_before == 2 and len(harness.smtp.messages) == 2
    assert mailbox.results[-1].startswith("hard bounce: jane.doe@clinic.example marked; not rerouted")


async def test_the_token_in_the_returned_headers_is_enough(harness: Harness, mailbox: BounceMailbox) -> None:
    """Some MTAs deliver the DSN to a rewritten envelope address; the returned copy still names the email."""
    result, _ = await sent_email(harness)
    token, _ = verp(harness, result["messages"][0]["id"])
    await mailbox.deliver(hard_dsn(token, "jane.doe@clinic.example"), "postmaster@bounces.pharma.example")
    assert mailbox.results == ["hard bounce: jane.doe@clinic.example marked; the same email goes to jdoe@health.example"]


async def test_a_single_address_hcp_whose_address_bounced_is_suppressed(harness: Harness, mailbox: BounceMailbox) -> None:
    result, _ = await sent_email(harness, OMAR, "cardio-webinar")
    token, envelope = verp(harness, result["messages"][0]["id"])
    await mailbox.deliver(hard_dsn(token, "omar.haddad@heart.example"), envelope)
    later = await harness.send(OMAR, "derm-news")
    assert later["status"] == "suppressed" and "hard-bounced" in later["reason"], later


async def test_three_soft_bounces_in_seven_days_count_as_hard(harness: Harness, mailbox: BounceMailbox) -> None:
    result, _ = await sent_email(harness)
    token, envelope = verp(harness, result["messages"][0]["id"])
    for _ in range(2):
        await harness.later(hours=12)
        await mailbox.deliver(soft_dsn(token, "jane.doe@clinic.example"), envelope)
    assert mailbox.results == [
        "soft bounce 1 of 3 for jane.doe@clinic.example", "soft bounce 2 of 3 for jane.doe@clinic.example",
    ]
    assert (await harness.outcome(result["id"]))["messages"][0]["bounced"] is False

    await harness.later(hours=12)
    await mailbox.deliver(soft_dsn(token, "jane.doe@clinic.example"), envelope)
    assert mailbox.results[-1] == "hard bounce: jane.doe@clinic.example marked; the same email goes to jdoe@health.example"
    message = (await harness.outcome(result["id"]))["messages"][0]
    assert "3 soft bounces" in message["bounce_reason"]
    await harness.later(minutes=1)
    assert harness.smtp.envelopes[-1][1] == ["jdoe@health.example"]


async def test_soft_bounces_spread_over_more_than_seven_days_stay_soft(harness: Harness, mailbox: BounceMailbox) -> None:
    result, _ = await sent_email(harness)
    token, envelope = verp(harness, result["messages"][0]["id"])
    for days in (0, 4, 4):
        await harness.later(days=days, minutes=1)
        await mailbox.deliver(soft_dsn(token, "jane.doe@clinic.example"), envelope)
    assert mailbox.results[-1] == "soft bounce 2 of 3 for jane.doe@clinic.example"
    assert [e[1] for e in harness.smtp.envelopes] == [["jane.doe@clinic.example"]] * 3, \
        "both resends went to the same address"


async def test_arf_complaint_suppresses_the_hcp(harness: Harness, mailbox: BounceMailbox) -> None:
    result, _ = await sent_email(harness)
    token, _ = verp(harness, result["messages"][0]["id"])
    await harness.later(hours=3)

    await mailbox.deliver(arf(token, "jane.doe@clinic.example"), "fbl@bounces.pharma.example")

    assert mailbox.results == [f"complaint: NPI {JANE} suppressed"]
    view = await harness.outcome(result["id"])
    assert [(m["kind"], m["status"]) for m in view["messages"]] == [("initial", "sent"), ("resend", "cancelled")]
    await harness.later(days=40)
    assert len(harness.smtp.messages) == 1
    later = await harness.send(JANE, "cardio-webinar")
    assert later["status"] == "suppressed" and "complained" in later["reason"], later
    rows = (await harness.client.get("/v1/suppressions", headers=harness.auth)).json()["suppressions"]
    assert [(r["npi"], r["reason"]) for r in rows] == [(JANE, "complained")]


async def test_reports_about_mail_we_never_sent_are_ignored(harness: Harness, mailbox: BounceMailbox) -> None:
    result, _ = await sent_email(harness)
    real_token, _ = verp(harness, result["messages"][0]["id"])
    forged = real_token[:-4] + ("0000" if not real_token.endswith("0000") else "1111")
    await mailbox.deliver(hard_dsn(forged, "omar.haddad@heart.example"), f"bounce+{forged}@bounces.pharma.example")
    await mailbox.deliver(arf("tok-made-up", "omar.haddad@heart.example"), "fbl@bounces.pharma.example")
    await mailbox.deliver(b"Subject: hello\r\n\r\nJust a note.\r\n", "postmaster@bounces.pharma.example")

    assert mailbox.results == [
        "ignored: not about an email we sent", "ignored: not about an email we sent", "ignored: not a bounce or complaint",
    ]
    omar = await harness.send(OMAR, "cardio-webinar")
    assert omar["status"] == "sent" and omar["messages"][0]["to"] == "omar.haddad@heart.example"


async def test_mailto_unsubscribe_reaches_the_listener(harness: Harness, mailbox: BounceMailbox) -> None:
    result, email = await sent_email(harness)
    [mailto] = re.findall(r"<mailto:([^>]+)>", str(email["List-Unsubscribe"]))
    address, _, query = mailto.partition("?subject=")
    request = f"From: jane.doe@clinic.example\r\nTo: {address}\r\nSubject: {query}\r\n\r\nunsubscribe\r\n".encode()

    await mailbox.deliver(request, address, sender="jane.doe@clinic.example")

    assert mailbox.results == [f"unsubscribed NPI {JANE} by mail"]
    assert (await harness.outcome(result["id"]))["messages"][0]["unsubscribed"] is True
    assert (await harness.send(JANE, "cardio-webinar"))["status"] == "suppressed"


async def test_the_bounces_command_listens_and_applies_reports(harness: Harness, tmp_path: Path) -> None:
    """`trigger-email bounces` as its own process, on the same database."""
    result, _ = await sent_email(harness)
    token, envelope = verp(harness, result["messages"][0]["id"])
    config = tmp_path / "config.yaml"
    config.write_text(BASE_CONFIG)
    settings = harness.rt.settings
    env = {
        **os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
        "SECRET_KEY": settings.secret_key, "TRIGGER_EMAIL_CONFIG": str(config), "LOG_LEVEL": "WARNING",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "trigger_email.cli", "bounces", "--host", "127.0.0.1", "--port", "0",
        cwd=Path(__file__).resolve().parents[1], env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        banner = await asyncio.wait_for(process.stdout.readline(), timeout=30)  # type: ignore[union-attr]
        match = re.search(r"smtp://127\.0\.0\.1:(\d+)", banner.decode())
        assert match, banner
        port = int(match.group(1))
        mailbox = BounceMailbox(harness, port, server=None)
        await mailbox.deliver(hard_dsn(token, "jane.doe@clinic.example"), envelope)
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=30)
    assert (await harness.outcome(result["id"]))["messages"][0]["bounced"] is True
    assert (await harness.send(JANE, "cardio-webinar"))["messages"][0]["to"] == "jdoe@health.example"
