"""Delivery over real SMTP: bounces fall back to the next address, 4xx is retried with
backoff, resends follow `resend.after` up to `max`, SMTP URLs with TLS and auth."""

from __future__ import annotations

import random
import ssl
import string
from datetime import timedelta
from pathlib import Path

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from core.mailer import Mailer, OutgoingEmail, SmtpTarget
from core.capture import SmtpController
from tests.harness import JANE, Harness, SmtpSink

pytestmark = pytest.mark.default_backend


async def test_5xx_on_rcpt_marks_the_address_and_tries_the_next(harness: Harness) -> None:
    harness.smtp.reject["jane.doe@clinic.example"] = "550 5.1.1 No such user"
    result = await harness.send()
    assert result["status"] == "sent"
    assert result["messages"][0]["to"] == "jdoe@health.example"
    assert [str(m["To"]) for m in harness.smtp.messages] == ["jdoe@health.example"]
    from tests.test_directory import addresses

    assert ("jane.doe@clinic.example", "hard_bounced") in await addresses(harness.rt.db, JANE)


async def test_all_addresses_rejected_is_no_deliverable_email(harness: Harness) -> None:
    harness.smtp.reject["jane.doe@clinic.example"] = "550 5.1.1 No such user"
    harness.smtp.reject["jdoe@health.example"] = "553 5.1.3 Bad address"
    result = await harness.send()
    assert result["status"] == "no_deliverable_email"
    assert "rejected" in result["reason"]
    assert harness.smtp.messages == []


async def test_4xx_is_retried_with_backoff_and_delivered(harness: Harness) -> None:
    harness.smtp.defer["jane.doe@clinic.example"] = 2
    result = await harness.send()
    assert result["messages"][0]["status"] == "queued" and "451" in result["messages"][0]["error"]
    assert harness.smtp.messages == []
    await harness.later(seconds=10)  # not due yet (first retry after 30 s)
    assert harness.smtp.messages == []
    await harness.later(seconds=25)
    await harness.later(seconds=65)
    final = await harness.outcome(result["id"])
    assert final["status"] == "sent" and final["messages"][0]["attempts"] == 3
    assert len(harness.smtp.messages) == 1


async def test_smtp_errors_past_the_retry_budget_fail_the_trigger(harness: Harness) -> None:
    harness.rt.settings.send_max_attempts = 2
    harness.smtp.defer["jane.doe@clinic.example"] = 10
    result = await harness.send()
    await harness.later(minutes=5)
    final = await harness.outcome(result["id"])
    assert final["status"] == "failed" and "after 2 attempt(s)" in final["reason"]


async def test_resends_follow_after_and_stop_at_max(harness: Harness) -> None:
    result = await harness.send()
    assert [m["kind"] for m in result["messages"]] == ["initial", "resend"]
    assert result["messages"][1]["status"] == "scheduled"
    await harness.later(days=2, hours=23)
    assert len(harness.smtp.messages) == 1
    await harness.later(hours=1)
    assert len(harness.smtp.messages) == 2
    assert harness.smtp.messages[1]["Subject"] == "In case you missed it: New asthma data for Pulmonary Disease practices"
    await harness.later(days=3)
    await harness.later(days=3)
    await harness.later(days=3)
    assert len(harness.smtp.messages) == 3  # initial + max 2 resends
    final = await harness.outcome(result["id"])
    assert [m["kind"] for m in final["messages"]] == ["initial", "resend", "resend"]
    assert all(m["status"] == "sent" for m in final["messages"])


async def test_pause_holds_a_due_resend_and_resume_releases_it(harness: Harness) -> None:
    result = await harness.send()
    await harness.client.post("/v1/campaigns/asthma-launch/pause", headers=harness.auth)
    await harness.later(days=3)  # the resend falls due while paused
    await harness.later(days=2)
    held = (await harness.outcome(result["id"]))["messages"][1]
    assert held["status"] == "scheduled"  # waiting, not cancelled
    assert held["error"] is None or "paused" in held["error"]
    assert len(harness.smtp.messages) == 1
    await harness.client.post("/v1/campaigns/asthma-launch/resume", headers=harness.auth)
    await harness.later(seconds=1)
    final = await harness.outcome(result["id"])
    assert final["messages"][1]["status"] == "sent"
    assert len(harness.smtp.messages) == 2
    assert harness.smtp.messages[1]["Subject"].startswith("In case you missed it:")


async def test_a_held_resend_that_is_no_longer_eligible_after_resume_says_why(harness: Harness) -> None:
    from core.scheduler import promote_resend

    result = await harness.send()
    await harness.client.post("/v1/campaigns/asthma-launch/pause", headers=harness.auth)
    harness.clock.advance(timedelta(days=3))
    resend_id = (await harness.outcome(result["id"]))["messages"][1]["id"]
    assert await promote_resend(harness.rt, resend_id) == "scheduled"  # even when asked directly
    held = (await harness.outcome(result["id"]))["messages"][1]
    assert held["status"] == "scheduled" and "campaign asthma-launch is paused" in held["error"]
    await harness.client.post("/v1/suppressions", json={"npi": JANE, "reason": "unsubscribed"}, headers=harness.auth)
    await harness.client.post("/v1/campaigns/asthma-launch/resume", headers=harness.auth)
    await harness.later(seconds=1)
    final = (await harness.outcome(result["id"]))["messages"][1]
    assert final["status"] == "cancelled" and final["error"].startswith("suppressed")
    assert len(harness.smtp.messages) == 1


def test_smtp_urls() -> None:
    plain = SmtpTarget.from_url("smtp://relay.example")
    assert (plain.hostname, plain.port, plain.use_tls, plain.start_tls) == ("relay.example", 25, False, False)
    tls = SmtpTarget.from_url("smtps://user%40x:p%3Ass@relay.example")
    assert (tls.port, tls.use_tls, tls.username, tls.password) == (465, True, "user@x", "p:ss")
    starttls = SmtpTarget.from_url("smtp+starttls://u:p@relay.example:2587")
    assert (starttls.port, starttls.start_tls) == (2587, True)
    with pytest.raises(ValueError, match="SMTP_URL"):
        SmtpTarget.from_url("http://relay.example")


async def test_starttls_with_authentication_against_a_real_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trustme

    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1", "localhost")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(server_context)
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))

    def authenticate(server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"mailer", b"s3cret")
        return AuthResult(success=ok)

    sink = SmtpSink()
    controller = SmtpController(
        sink, hostname="127.0.0.1", port=0, tls_context=server_context, require_starttls=True,
        authenticator=authenticate, auth_require_tls=True,
    )
    controller.start()
    try:
        mailer = Mailer(SmtpTarget.from_url(f"smtp+starttls://mailer:s3cret@127.0.0.1:{controller.port}"))
        from datetime import datetime, timezone

        email = OutgoingEmail(
            sender="Medical Information <medinfo@pharma.example>", to="jane.doe@clinic.example", subject="Hello",
            html="<p>Hi</p>", text="Hi\n", date=datetime.now(timezone.utc),
        )
        await mailer.send(email.to_mime(), envelope_from="medinfo@pharma.example", recipient="jane.doe@clinic.example")
        await mailer.aclose()
    finally:
        controller.stop()
    assert [str(m["Subject"]) for m in sink.messages] == ["Hello"]


async def test_non_ascii_names_survive_headers_and_bodies(harness: Harness, tmp_path: Path) -> None:
    from tests.harness import load_directory

    await load_directory(harness.rt, tmp_path, "npi,first_name,last_name,credential,specialty,state,email\n1003000126,Zoë,Ångström,MD,Neurology,NY,zoe@neuro.example\n")
    result = await harness.send(npi="1003000126", campaign_id="cardio-webinar")
    assert result["status"] == "sent"
    [email] = harness.smtp.messages
    assert email["Subject"] == "Dr. Ångström, join our webinar"
    assert "Zoë Ångström" in email.get_body(("html",)).get_content()
    assert "Zoë Ångström" in email.get_body(("plain",)).get_content()
    assert all(byte < 128 for byte in harness.smtp.raw[0])  # 7-bit clean on the wire


async def test_pause_holds_a_retry_and_resume_releases_it(harness: Harness) -> None:
    harness.smtp.defer["jane.doe@clinic.example"] = 1  # greylisted once: a retry in 30 s
    result = await harness.send()
    assert result["messages"][0]["status"] == "queued"
    await harness.client.post("/v1/campaigns/asthma-launch/pause", headers=harness.auth)
    await harness.later(minutes=5)
    held = (await harness.outcome(result["id"]))["messages"][0]
    assert held["status"] == "queued" and held["attempts"] == 1  # not retried while paused, not cancelled
    assert harness.smtp.messages == []
    await harness.client.post("/v1/campaigns/asthma-launch/resume", headers=harness.auth)
    await harness.later(seconds=1)
    assert (await harness.outcome(result["id"]))["status"] == "sent"
    assert len(harness.smtp.messages) == 1


def test_headers_go_on_the_wire_exactly_as_compat32_writes_them() -> None:
    """The wire policy writes a printable one-line header as it is instead of running it
    through `Header.encode`: the bytes must be the ones compat32 would have written, for
    every header, including those it leaves to compat32 (long, non-ASCII, tabs)."""
    from email import policy

    from core.mailer import HEADER_POLICY

    compat32 = policy.compat32.clone(linesep="\r\n", max_line_length=998)
    rng = random.Random(2026)
    alphabet = string.printable.replace("\r", "").replace("\n", "").replace("\x0b", "").replace("\x0c", "")
    values = [
        "a  b", " leading", "trailing ", "tab\there", "x" * 985, "x" * 1200, "Zoë Ångström", "=?utf-8?q?x?=", "",
        "<https://trigger.pharma.example/u/u.msg_1.abc>, <mailto:unsubscribe@pharma.example?subject=unsubscribe-1>",
    ] + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200))) for _ in range(3000)]
    for value in values:
        assert HEADER_POLICY.fold_binary("Subject", value) == compat32.fold_binary("Subject", value), value
