"""Bounce and complaint parsing against raw reports shaped like the RFC 3464 / RFC 5965
examples and a legacy non-standard bounce."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.bounces import BounceReport, parse_report, parse_reports, token_from_verp, verp_address

FIXTURES = Path(__file__).parent / "fixtures" / "email"
BOUNCE_DOMAIN = "bounces.pharma.example"


def load(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def check(name: str, *, envelope_token: str | None = None, **expected: object) -> BounceReport:
    """Parse fixture `name` (delivered to the VERP address of `envelope_token`, if given)
    and compare the fields named in `expected`."""
    envelope_to = [verp_address(envelope_token, BOUNCE_DOMAIN)] if envelope_token else None
    report = parse_report(load(name), envelope_to=envelope_to)
    assert {field: getattr(report, field) for field in expected} == expected
    return report


# --- RFC 3464 delivery status notifications --------------------------------------------


def test_dsn_hard_550_token_from_returned_headers() -> None:
    report = check("dsn_hard_550.eml", kind="hard", recipient="dr.smith@clinic.example", status="5.1.1",
                   token="tok123", original_message_id="<170956170412.3141.5926535897932384626@pharma.example>")
    assert report.diagnostic == "550 5.1.1 <Dr.Smith@clinic.example>... User unknown"


def test_dsn_envelope_token_wins_over_returned_header() -> None:
    check("dsn_hard_550.eml", envelope_token="env456", kind="hard", token="env456")


def test_dsn_soft_delayed_token_from_envelope() -> None:
    check("dsn_soft_delayed.eml", envelope_token="tok-delay.77", kind="soft", recipient="np.garcia@clinic.example",
          status="4.3.0", token="tok-delay.77",
          original_message_id="<170962915077.2718.2818284590452353602@pharma.example>")


def test_dsn_without_envelope_falls_back_to_returned_return_path() -> None:
    check("dsn_soft_delayed.eml", kind="soft", token="tok-delay.77")


def test_dsn_multiple_recipients_one_report_each() -> None:
    reports = parse_reports(load("dsn_multiple_recipients.eml"))
    assert [(r.kind, r.recipient, r.status) for r in reports] == [
        ("hard", "cardio.desk@clinic.example", "5.0.0"),
        ("soft", "oncology@north.clinic.example", "4.0.0"),
        ("hard", "rheum@south.clinic.example", "5.0.0"),
    ]
    assert {(r.token, r.original_message_id) for r in reports} == {
        ("multi42", "<170972090011.1618.0339887498948482045@pharma.example>")
    }


def test_dsn_multiple_recipients_single_report_is_the_first_hard_one() -> None:
    check("dsn_multiple_recipients.eml", kind="hard", recipient="cardio.desk@clinic.example")


# --- RFC 5965 feedback reports ---------------------------------------------------------


def test_arf_abuse_complaint() -> None:
    check("arf_abuse_complaint.eml", kind="complaint", recipient="dr.jones@clinic.example", status=None,
          token="tok-arf-9", original_message_id="<8787KJKJ3K4J3K4J3K4J3.mail@pharma.example>",
          feedback_type="abuse")


def test_arf_not_spam_is_not_a_complaint() -> None:
    report = parse_report(load("arf_abuse_complaint.eml").replace(b"Feedback-Type: abuse", b"Feedback-Type: not-spam"))
    assert (report.kind, report.feedback_type) == ("not_a_bounce", "not-spam")


def test_arf_redacted_rcpt_to_uses_removal_recipient() -> None:
    raw = load("arf_abuse_complaint.eml").replace(b"Original-Rcpt-To: <Dr.Jones@clinic.example>\n", b"")
    assert parse_report(raw).recipient == "dr.jones@clinic.example"


# --- non-standard bounces --------------------------------------------------------------


def test_nonstandard_bounce_best_effort() -> None:
    check("nonstandard_bounce.eml", kind="hard", recipient="rn.patel@legacy.clinic.example", status="5.1.1",
          token="tokQ9", original_message_id="<170989589033.4142.1356237309504880168@pharma.example>")


def test_exim_style_bounce_reads_failed_recipients_header() -> None:
    raw = (
        b"From: Mail Delivery System <Mailer-Daemon@mx.clinic.example>\nTo: bounce+ex1@bounces.pharma.example\n"
        b"X-Failed-Recipients: Doc@clinic.example\nSubject: Mail delivery failed\n\n"
        b"SMTP error from remote mail server after RCPT TO:<Doc@clinic.example>:\n    550 No such user here\n"
    )
    report = parse_report(raw)
    assert (report.kind, report.recipient, report.token) == ("hard", "doc@clinic.example", "ex1")


def test_auto_reply_with_numbers_is_an_auto_reply_not_a_bounce() -> None:
    raw = (
        b"From: Dr. Smith <dr.smith@clinic.example>\nTo: bounce+tok1@bounces.pharma.example\n"
        b"Subject: Out of office\n\nI am away until Monday.\nClinic office: 550 Main St, Suite 450\n"
    )
    report = parse_report(raw)
    assert (report.kind, report.reason, report.token) == ("auto_reply", "vacation", "tok1")


def test_success_dsn_is_not_a_bounce() -> None:
    raw = load("dsn_soft_delayed.eml").replace(b"Action: delayed", b"Action: delivered").replace(
        b"Status: 4.3.0", b"Status: 2.0.0"
    )
    assert parse_report(raw).kind == "not_a_bounce"


# --- garbage ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff\xfe\x80garbage",
        b"not an email at all",
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\n\n--x\nContent-Type: message/deli",
        b"Content-Type: message/feedback-report\n\n\xff\xfe",
    ],
)
def test_garbage_is_not_a_bounce(raw: bytes) -> None:
    assert parse_report(raw).kind == "not_a_bounce"


def test_a_bounce_cut_off_before_its_report_never_burns_the_address() -> None:
    report = parse_report(load("dsn_hard_550.eml")[:300])
    assert (report.kind, report.reason) == ("soft", "undefined")


def test_garbage_keeps_the_envelope_token() -> None:
    assert parse_report(b"\x00", envelope_to=["postmaster@x", "bounce+abc@b.example"]).token == "abc"


# --- VERP ------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["tok123", "Ab-9_x.Yz", "eyJhIjoxfQ.ZkxQ.sig-_"])
def test_verp_round_trip(token: str) -> None:
    address = verp_address(token, BOUNCE_DOMAIN)
    assert address == f"bounce+{token}@{BOUNCE_DOMAIN}"
    assert token_from_verp(address) == token
    assert token_from_verp(f"rfc822; <{address}>") == token


@pytest.mark.parametrize("address", ["medinfo@pharma.example", "bounce+@b.example", "bounce+tok", "", "<>"])
def test_token_from_non_verp_is_none(address: str) -> None:
    assert token_from_verp(address) is None


@pytest.mark.parametrize("token", ["", "a@b", "has space", "trailing.", "a..b", "x" * 60])
def test_verp_address_rejects_tokens_that_cannot_travel(token: str) -> None:
    with pytest.raises(ValueError):
        verp_address(token, BOUNCE_DOMAIN)
