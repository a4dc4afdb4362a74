"""The one classifier on SMTP answers as receivers give them at send time: the enhanced
status code and the text decide together, never the first digit alone."""

from __future__ import annotations

import pytest

from core.classify import REASONS, classify


@pytest.mark.parametrize(
    ("code", "text", "kind", "reason"),
    [
        (550, "5.7.606 Access denied, banned sending IP [203.0.113.7]. To request removal from this list please visit https://sender.office.com/", "block", "blocked"),
        (550, "5.7.1 Service unavailable; Client host [203.0.113.7] blocked using zen.spamhaus.org", "block", "blocked"),
        (550, "5.7.26 This mail has been blocked because the sender is unauthenticated. Gmail requires all senders to authenticate with either SPF or DKIM.", "block", "auth_failure"),
        (550, "5.7.1 Unauthenticated email from pharma.example is not accepted due to domain's DMARC policy", "block", "auth_failure"),
        (550, "5.1.0 too many connections from your IP", "block", "rate_limited"),
        (421, "4.7.0 [203.0.113.7] Our system has detected an unusual rate of unsolicited mail originating from your IP address", "block", "rate_limited"),
        (451, "4.7.650 The mail server [203.0.113.7] has been temporarily rate limited due to IP reputation", "block", "rate_limited"),
        (554, "5.7.1 Message rejected as spam by Content Filtering", "block", "spam_detected"),
        (552, "5.2.2 The email account that you tried to reach is over quota", "soft", "mailbox_full"),
        (550, "5.1.1 The email account that you tried to reach does not exist", "hard", "user_unknown"),
        (550, "Requested action not taken: mailbox unavailable", "hard", "user_unknown"),
        (556, "5.1.10 Recipient address has null MX", "hard", "not_accepted"),
        (550, "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", "hard", "user_unknown"),
        (550, "5.7.606-649 Access denied, banned sending IP [203.0.113.7]", "block", "blocked"),
        (451, "4.1.1 user unknown, try again later", "soft", "user_unknown"),
        (450, "4.2.0 Mailbox busy, greylisted, try again", "soft", "system_error"),
        (554, "5.6.0 Message content rejected", "block", "content_rejected"),
    ],
)
def test_smtp_answers(code: int, text: str, kind: str, reason: str) -> None:
    verdict = classify(code=code, diagnostic=f"{code} {text}")
    assert (verdict.kind, verdict.reason) == (kind, reason)


def test_a_failure_with_no_permanent_evidence_never_burns_the_address() -> None:
    assert classify(diagnostic="user unknown").kind == "soft"
    assert classify(diagnostic="user unknown", action="failed").kind == "hard"


def test_success_is_not_a_bounce() -> None:
    assert classify(status="2.0.0", action="delivered").kind == "not_a_bounce"


def test_every_reason_of_the_issue_has_a_kind() -> None:
    named = {
        "user_unknown", "host_unknown", "has_moved", "not_accepted", "mailbox_full", "message_too_big", "suspended",
        "expired", "blocked", "rate_limited", "auth_failure", "policy", "spam_detected", "content_rejected",
        "virus_detected", "system_error", "network_error", "mailer_error", "vacation", "feedback", "undefined",
    }
    assert named <= REASONS.keys()


def test_exim_retry_timeout_without_a_code_is_soft() -> None:
    verdict = classify(diagnostic="all relevant MX records point to hosts that time out: retry timeout exceeded", action="failed")
    assert (verdict.kind, verdict.reason) == ("soft", "expired")
