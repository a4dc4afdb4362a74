"""Reading the bounces and complaints that come back after an email left us.

The SMTP answer at send time only covers the first hop: a relay that accepted the message
may still fail to deliver it hours later and mail a delivery status notification (RFC 3464)
to the envelope sender, and a mailbox provider reports a "this is spam" click as an abuse
report (RFC 5965, ARF) to the feedback-loop address. Both arrive as email, in formats that
vary between MTAs, so this module turns one raw message into plain `BounceReport`s and
leaves every decision (mark the address, suppress the HCP, push a CRM activity) to callers.

Each email goes out with a VERP envelope sender, `bounce+{token}@{bounce_domain}`, so the
address a report is delivered to names the message it is about, even when the reporting
MTA strips or mangles the returned copy.

Reports are unauthenticated mail that anyone can send to the bounce domain, so a caller
should act on one only when its token resolves to a message we sent and, for a bounce, the
recipient is that message's address; the parser reports what the text claims.

Everything here is pure (the standard `email` package, GNU Mailman's `flufl.bounce`
detectors for non-standard bounces, and `core.classify` for the reason and kind): the
inbound SMTP receiver, `bounces classify`, the benchmark and the tests all call it without a
database. Parsing never raises: a report that cannot be understood comes back as kind
"not_a_bounce", so one odd bounce cannot stall the queue that processes the rest.
"""

from __future__ import annotations

import base64
import binascii
import email as email_package
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import BytesParser
from typing import Any

from core.classify import Kind, classify, is_vacation, text_match, text_reason

__all__ = [
    "BounceKind", "BounceReport", "MessageVerdict", "classify_message", "parse_report", "parse_reports",
    "reporter_of", "token_from_verp", "verp_address",
]

BounceKind = Kind

VERP_PREFIX = "bounce+"
TOKEN_HEADER = "X-Trigger-Email-Token"

log = logging.getLogger(__name__)
logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)
"""Its detectors log (and raise) on odd input; `_flufl_failures` catches, so the log is noise."""

_Fields = dict[str, str]
"""One block of `Name: value` fields (lower-case names, unfolded values, first value wins)."""

_DSN_TYPES = {"message/delivery-status", "message/global-delivery-status"}
_ARF_TYPES = {"message/feedback-report"}
_ORIGINAL_MESSAGE_TYPES = {"message/rfc822", "message/global"}
_ORIGINAL_HEADER_TYPES = {"text/rfc822-headers", "message/rfc822-headers", "message/global-headers"}

_NOT_COMPLAINTS = {"not-spam", "auth-failure"}
"""Feedback types that are not a recipient objecting to the mail: "not-spam" is the
opposite of a complaint, "auth-failure" (RFC 6591) reports a DKIM/SPF/DMARC failure.
Suppressing an HCP over either would lose a consenting reader."""

_SEVERITY: dict[str, int] = {
    "hard": 5, "complaint": 5, "block": 4, "soft": 3, "auto_reply": 1, "not_a_bounce": 0,
}

# Enhanced status codes (RFC 3463) and SMTP reply codes (RFC 5321). The look-arounds keep
# IP addresses ("10.5.1.100") and version strings ("v5.1.1") from passing for a status.
_ENHANCED = re.compile(r"(?<![\w.])([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
_DIAGNOSTIC_TYPE = re.compile(r"\s*([A-Za-z][\w-]*)\s*;\s*(.*)", re.DOTALL)
_ADDRESS = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+"
)
_MESSAGE_ID = re.compile(r"<[^<>\s]+>")
_HEADER_LINE = re.compile(r"[!-9;-~]+:")
# Where a non-standard bounce stops explaining and starts quoting the original: codes and
# addresses below this line belong to our own email (a footer's "Suite 550"), not the failure.
_ORIGINAL_STARTS = re.compile(
    r"^[ \t]*(?:-{2,}.*(?:copy|original|returned|headers|below this line).*"
    r"|.*below this line is a copy.*"
    r"|(?:Return-Path|Received|Message-I[Dd]|" + TOKEN_HEADER + r"):.*)$",
    re.IGNORECASE | re.MULTILINE,
)
_TOKEN_TEXT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+")
_MAX_SCAN = 64 * 1024
"""How much explanatory text to search for codes: failure notices are short, and a huge
attachment must not cost a regex pass over megabytes."""


@dataclass
class BounceReport:
    """What one report says about one recipient of one email we sent.

    `kind` and `reason` come from `core.classify` (hard, soft, block, complaint, auto_reply,
    not_a_bounce; unreadable input is `not_a_bounce` / `undefined`). `token` and
    `original_message_id` tie the report to the message row; either may be missing because
    MTAs are free to return only part of the original. `reporter` names the system that
    wrote the report (`gmail`, `microsoft`, `exim`, …) when it can be told.
    """

    kind: BounceKind
    recipient: str | None = None
    status: str | None = None
    diagnostic: str | None = None
    token: str | None = None
    original_message_id: str | None = None
    feedback_type: str | None = None
    reason: str = "undefined"
    reporter: str | None = None


def verp_address(token: str, domain: str) -> str:
    """The envelope sender for the email identified by `token`: `bounce+{token}@{domain}`.

    Raises ValueError for a token that cannot travel as an unquoted local part (an MTA
    would reject or rewrite it, and the bounce could no longer be matched) or that makes
    the local part longer than the 64 octets RFC 5321 allows.
    """
    token = token.strip()
    domain = domain.strip()
    if not token or not _TOKEN_TEXT.fullmatch(token) or token.endswith(".") or ".." in token:
        raise ValueError(f"VERP token must be a dot-atom without a trailing dot, got {token!r}")
    local = VERP_PREFIX + token
    if len(local.encode()) > 64:
        raise ValueError(f"VERP local part {local!r} is longer than 64 octets")
    if not domain or "@" in domain or any(char.isspace() for char in domain):
        raise ValueError(f"VERP domain must be a bare domain name, got {domain!r}")
    return f"{local}@{domain}"


def token_from_verp(address: str) -> str | None:
    """The token of a VERP address, or None when `address` is not one.

    Accepts the forms an address takes in headers and DSN fields (`<...>`, `rfc822;...`,
    surrounding blanks) and any case of the `bounce+` prefix, since some MTAs fold the
    local part's case; the token itself is returned as written.
    """
    if not isinstance(address, str):
        return None
    candidate = address.strip()
    if ";" in candidate:
        candidate = candidate.split(";", 1)[1].strip()
    match = _MESSAGE_ID.search(candidate)
    if match:
        candidate = match.group(0)[1:-1]
    local, at, _domain = candidate.rpartition("@")
    if not at or not local[: len(VERP_PREFIX)].lower() == VERP_PREFIX:
        return None
    token = local[len(VERP_PREFIX) :]
    return token if token and _TOKEN_TEXT.fullmatch(token) else None


def parse_report(raw: bytes, *, envelope_to: list[str] | None = None) -> BounceReport:
    """The one report that matters most in `raw`: a hard failure or complaint before a
    temporary one, before anything else; the first of equals.

    Our emails have a single recipient each, so a report normally names one address;
    `parse_reports` gives every recipient of a multi-recipient DSN.
    """
    return max(parse_reports(raw, envelope_to=envelope_to), key=lambda report: _SEVERITY[report.kind])


def parse_reports(raw: bytes, *, envelope_to: list[str] | None = None) -> list[BounceReport]:
    """One `BounceReport` per recipient that `raw` reports on; never empty and never raises.

    `envelope_to` is the SMTP envelope recipient list the report was delivered to; when it
    holds our VERP address, that token is the most reliable link to the sent message. Input
    that is not a recognisable report gives a single report of kind "unknown", still carrying
    any token and Message-ID found, so the caller can log it against the right email.
    """
    envelope_token = _first_token([envelope_to] if isinstance(envelope_to, str) else envelope_to or [])
    try:
        message = _parse(raw)
        original = _original_headers(message)
        reporter = reporter_of(message)
        reports = (
            _dsn_reports(message, reporter)
            or _arf_reports(message, original)
            or _jmrp_reports(message)
            or _embedded_dsn_reports(message, reporter)
            or _fallback_reports(message, raw, original, reporter)
        )
        for report in reports:
            report.reporter = reporter
        token = envelope_token or _token_from_message(message, original)
        message_id = _message_id(original.get("message-id")) if original else None
    except Exception:  # noqa: BLE001 - a malformed report must never stop bounce processing
        log.exception("unreadable report")
        return [BounceReport(kind="not_a_bounce", reason="undefined", token=envelope_token)]
    for report in reports:
        report.token = token
        report.original_message_id = message_id
    return reports


# --- parsing helpers -------------------------------------------------------------------


def _parse(raw: bytes) -> Message:
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    return BytesParser(policy=policy.default).parsebytes(bytes(raw))


def _report_parts(message: Message) -> Iterator[Message]:
    """The message and its MIME parts, without entering attached messages: a returned
    original that itself contains a report must not be mistaken for ours."""
    yield message
    if message.get_content_maintype() == "multipart":
        payload = message.get_payload()
        if isinstance(payload, list):
            for part in payload:
                if isinstance(part, Message):
                    yield from _report_parts(part)


def _unfold(value: str) -> str:
    return " ".join(value.split())


def _fields(items: Iterable[tuple[str, str]]) -> _Fields:
    """Raw header items as a block; raw values, because the structured header classes of
    `policy.default` reject the odd syntax of report fields and returned headers."""
    block: _Fields = {}
    for name, value in items:
        block.setdefault(name.strip().lower(), _unfold(str(value)))
    return block


def _raw_header(message: Message, name: str) -> str | None:
    return _fields(message.raw_items()).get(name.lower())


def _text_blocks(text: str) -> list[_Fields]:
    """`Name: value` blocks separated by blank lines, with folded continuation lines, for
    report bodies the email parser left as text (transfer-encoded parts, RFC 6533 types)."""
    blocks: list[_Fields] = []
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(_fields(current))
                current = []
        elif line[0] in " \t" and current:
            name, value = current[-1]
            current[-1] = (name, f"{value} {line.strip()}")
        elif _HEADER_LINE.match(line):
            name, _, value = line.partition(":")
            current.append((name, value.strip()))
    if current:
        blocks.append(_fields(current))
    return blocks


def _message_blocks(message: Message) -> list[_Fields]:
    blocks = [_fields(message.raw_items())]
    payload = message.get_payload()
    if isinstance(payload, list):
        for sub in payload:
            if isinstance(sub, Message):
                blocks.extend(_message_blocks(sub))
    elif isinstance(payload, str) and payload.strip():
        blocks.extend(_text_blocks(payload))
    return blocks


def _report_blocks(part: Message) -> list[_Fields]:
    """The field blocks of a message/delivery-status or message/feedback-report part.

    The email parser splits message/delivery-status into one sub-message per block, reads
    other message/* types as one nested message, and leaves encoded bodies as text; all
    three shapes end up as the same list here.
    """
    payload = part.get_payload()
    encoded = _base64_message_text(part)
    if encoded is not None:
        blocks = _text_blocks(encoded)
    elif isinstance(payload, list):
        blocks = [block for sub in payload if isinstance(sub, Message) for block in _message_blocks(sub)]
    else:
        blocks = _text_blocks(_part_text(part))
    return [block for block in blocks if block]


def _base64_message_text(part: Message) -> str | None:
    """The decoded body of a base64-encoded message/* part, or None when it is not one.

    RFC 2046 forbids encoding message/* bodies, yet some gateways do it; the email parser
    then reads the base64 lines as a body of the nested message, so they are gathered and
    decoded here rather than losing the report.
    """
    encoding = (_raw_header(part, "content-transfer-encoding") or "").strip().lower()
    payload = part.get_payload()
    if encoding != "base64" or not isinstance(payload, list):
        return None
    chunks: list[str] = []
    pending = list(payload)
    while pending:
        sub = pending.pop(0)
        if isinstance(sub, Message):
            inner = sub.get_payload()
            if isinstance(inner, list):
                pending[:0] = inner
            elif isinstance(inner, str):
                chunks.append(inner)
    try:
        data = base64.b64decode("".join("".join(chunks).split()) + "==", validate=False)
    except (binascii.Error, ValueError):
        return None
    return data.decode("utf-8", "replace")


def _part_text(part: Message) -> str:
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        payload = part.get_payload()
        return payload if isinstance(payload, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return data.decode(charset, "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def _original_headers(message: Message) -> _Fields | None:
    """Headers of the email we sent, as returned inside the report: a whole message/rfc822
    part, headers only (text/rfc822-headers, what DSNs with RET=HDRS and most feedback loops
    send), or, for non-standard bounces, the quoted copy under the explanation."""
    for part in _report_parts(message):
        content_type = part.get_content_type()
        if content_type in _ORIGINAL_MESSAGE_TYPES | _ORIGINAL_HEADER_TYPES:
            payload = part.get_payload()
            encoded = _base64_message_text(part)
            if encoded is None and isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return _fields(payload[0].raw_items())
            blocks = _text_blocks(encoded if encoded is not None else _part_text(part))
            if blocks:
                return blocks[0]
    explanation = _explanation_text(message, whole=True)
    start = _ORIGINAL_STARTS.search(explanation)
    if start:
        for block in _text_blocks(explanation[start.start() :]):
            if "message-id" in block or TOKEN_HEADER.lower() in block:
                return block
    return None


def _message_id(value: str | None) -> str | None:
    """A Message-ID in the `<id@host>` form our mailer stores, whatever form came back
    (some feedback loops drop the angle brackets)."""
    if not value:
        return None
    match = _MESSAGE_ID.search(value)
    if match:
        return match.group(0)
    bare = value.strip().split()[0] if value.strip() else ""
    return f"<{bare.strip('<>')}>" if bare.strip("<>") else None


def _address(value: str | None) -> str | None:
    """The bare, lower-cased address of a DSN/ARF address field (`rfc822; <Dr@x>`)."""
    if not value:
        return None
    candidate = value.strip()
    if ";" in candidate:
        candidate = candidate.split(";", 1)[1]
    match = _ADDRESS.search(candidate)
    return match.group(0).rstrip(".").lower() if match else None


def _first_token(addresses: Iterable[object]) -> str | None:
    for address in addresses:
        token = token_from_verp(address) if isinstance(address, str) else None
        if token:
            return token
    return None


def _token_from_message(message: Message, original: _Fields | None) -> str | None:
    """The token when the envelope did not carry it: our own header in the returned copy
    first (it is the email's own claim), then any VERP address the report repeats: the
    original Return-Path, the ARF Original-Mail-From, and where the report was addressed."""
    candidates: list[str] = []
    if original:
        header_token = original.get(TOKEN_HEADER.lower(), "").strip()
        if header_token and _TOKEN_TEXT.fullmatch(header_token):
            return header_token
        candidates.append(original.get("return-path", ""))
    for part in _report_parts(message):
        if part.get_content_type() in _ARF_TYPES:
            for block in _report_blocks(part):
                candidates.append(block.get("original-mail-from", ""))
    for name in ("delivered-to", "x-original-to", "to"):
        value = _raw_header(message, name) or ""
        candidates.extend(_ADDRESS.findall(value) or [value])
    return _first_token(candidates)


# --- who wrote the report --------------------------------------------------------------

_REPORTERS: list[tuple[str, re.Pattern[str]]] = [
    ("gmail", re.compile(r"google\.com|gmail|googlemail", re.IGNORECASE)),
    ("microsoft", re.compile(r"outlook\.com|hotmail|protection\.outlook|office365|\bmsn\.com|live\.com|exchange|microsoft", re.IGNORECASE)),
    ("yahoo", re.compile(r"yahoo|yahoodns|\baol\.com|aol\.net", re.IGNORECASE)),
    ("apple", re.compile(r"icloud\.com|\bme\.com|mac\.com|apple\.com", re.IGNORECASE)),
    ("amazon_ses", re.compile(r"amazonses|amazonaws", re.IGNORECASE)),
    ("mimecast", re.compile(r"mimecast", re.IGNORECASE)),
    ("exim", re.compile(r"\bexim\b", re.IGNORECASE)),
    ("postfix", re.compile(r"postfix", re.IGNORECASE)),
    ("sendmail", re.compile(r"sendmail", re.IGNORECASE)),
    ("qmail", re.compile(r"qmail", re.IGNORECASE)),
]


def reporter_of(message: Message) -> str | None:
    """The system that wrote a report, from the fields that name it: the DSN's
    Reporting-MTA, the mailer headers, the sender and the first Received hop."""
    evidence: list[str] = []
    for part in _report_parts(message):
        if part.get_content_type() in _DSN_TYPES:
            for block in _report_blocks(part):
                evidence.append(block.get("reporting-mta", ""))
    for name in ("x-mailer", "x-mimeole", "x-ms-exchange-organization-authas", "from", "message-id", "received"):
        evidence.append(_raw_header(message, name) or "")
    if any(name.lower().startswith("x-ms-exchange") for name in message.keys()):
        evidence.append("exchange")
    joined = " ".join(evidence)
    for name, pattern in _REPORTERS:
        if pattern.search(joined):
            return name
    return None


# --- the report shapes -----------------------------------------------------------------


def _dsn_reports(message: Message, reporter: str | None, parts: list[Message] | None = None) -> list[BounceReport]:
    """RFC 3464: one report per per-recipient block (the ones naming a recipient, action or
    status; the per-message block names the reporting MTA)."""
    reports: list[BounceReport] = []
    for part in parts if parts is not None else _report_parts(message):
        if part.get_content_type() not in _DSN_TYPES:
            continue
        reports.extend(_dsn_block_reports(message, _report_blocks(part), reporter))
    if not reports and parts is None:
        # A report forwarded as an attachment (a gateway that wraps the DSN it got, with
        # its own disclaimer): the attached report, never our own returned email, which
        # is never a multipart/report.
        for part in _report_parts(message):
            if part.get_content_type() in _ORIGINAL_MESSAGE_TYPES:
                payload = part.get_payload()
                inner = payload[0] if isinstance(payload, list) and payload else None
                if isinstance(inner, Message) and inner.get_content_type() == "multipart/report":
                    reports.extend(_dsn_reports(inner, reporter))
    return reports


def _dsn_block_reports(message: Message, blocks: list[_Fields], reporter: str | None) -> list[BounceReport]:
    reports: list[BounceReport] = []
    explanation: str | None = None
    for block in blocks:
        if not {"final-recipient", "original-recipient", "action", "status"} & block.keys():
            continue
        # Original-Recipient is the address as we sent it; Final-Recipient may be an alias
        # it expanded to, or not an address at all (x400).
        recipient = (
            _address(block.get("original-recipient"))
            or _address(block.get("final-recipient"))
            or _address(block.get("x-actual-recipient"))
        )
        diagnostic = _diagnostic(block.get("diagnostic-code"))
        status_comment = re.sub(r"^\s*[245]\.\d{1,3}\.\d{1,3}\s*", "", block.get("status", "")).strip(" ()")
        if not diagnostic and status_comment:
            diagnostic = status_comment
        verdict = classify(status=_status(block.get("status")), diagnostic=diagnostic, action=block.get("action"), reporter=reporter)
        if verdict.reason in {"undefined", "mailer_error", "system_error"} and not diagnostic:
            # Exchange and others put the cause in the human-readable part only.
            if explanation is None:
                explanation = _explanation_text(message)
            line = _line_about(explanation, recipient)
            if line and text_reason(line):
                diagnostic = line
                verdict = classify(status=verdict.status, diagnostic=line, action=block.get("action"), reporter=reporter)
        reports.append(
            BounceReport(
                kind=verdict.kind, reason=verdict.reason, recipient=recipient,
                status=verdict.status, diagnostic=diagnostic,
            )
        )
    return reports


def _line_about(text: str, recipient: str | None) -> str | None:
    """The explanation lines about `recipient`: its line and the next non-empty one."""
    if not recipient:
        return None
    lines = [line.strip() for line in text.splitlines()]
    for index, line in enumerate(lines):
        if recipient in line.lower():
            following = next((other for other in lines[index + 1 : index + 4] if other), "")
            return _unfold(f"{line} {following}")[:500]
    return None


def _embedded_dsn_reports(message: Message, reporter: str | None) -> list[BounceReport]:
    """A delivery-status report pasted into a text part (gateways that flatten the
    multipart/report, a broken boundary that hides the parts): the same fields, read from
    the text."""
    text = _explanation_text(message, whole=True)
    if not re.search(r"^(?:Final|Original)-Recipient\s*:", text, re.IGNORECASE | re.MULTILINE):
        return []
    start = re.search(r"^(?:Reporting-MTA|Final-Recipient|Original-Recipient|Arrival-Date)\s*:", text, re.IGNORECASE | re.MULTILINE)
    assert start is not None
    return _dsn_block_reports(message, [block for block in _text_blocks(text[start.start() :]) if block], reporter)


def _all_values(part: Message, name: str) -> list[str]:
    """Every value of a field that may repeat (Original-Rcpt-To), across a report's blocks."""
    values: list[str] = []
    payload = part.get_payload()
    subs = [sub for sub in payload if isinstance(sub, Message)] if isinstance(payload, list) else []
    for sub in [part, *subs]:
        values.extend(str(value) for key, value in sub.raw_items() if key.strip().lower() == name)
    if not subs and isinstance(payload, str):
        values.extend(match.group(1) for match in re.finditer(rf"^{name}\s*:\s*(.+)$", payload, re.IGNORECASE | re.MULTILINE))
    return values


def _arf_reports(message: Message, original: _Fields | None) -> list[BounceReport]:
    """RFC 5965: the complained-about recipients are every Original-Rcpt-To, else the
    address the report asks to remove, else the To of the returned email (feedback loops
    often redact the first, and an HCP address left in the copy is still the right one to
    suppress)."""
    for part in _report_parts(message):
        if part.get_content_type() not in _ARF_TYPES:
            continue
        fields: _Fields = {}
        for block in _report_blocks(part):
            for name, value in block.items():
                fields.setdefault(name, value)
        feedback_type = (fields.get("feedback-type") or "").strip().lower() or None
        recipients = [address for value in _all_values(part, "original-rcpt-to") if (address := _address(value))]
        if not recipients:
            fallback = _address(fields.get("removal-recipient")) or _address((original or {}).get("to"))
            recipients = [fallback] if fallback else []
        # Feedback-Type is required (RFC 5965 3.1); without it the part is not a report.
        if feedback_type and feedback_type not in _NOT_COMPLAINTS:
            kind, reason = "complaint", "feedback"
        elif feedback_type == "auth-failure":
            kind, reason = "not_a_bounce", "auth_failure"
        else:
            kind, reason = "not_a_bounce", "feedback"
        return [
            BounceReport(kind=kind, reason=reason, recipient=recipient, feedback_type=feedback_type)  # type: ignore[arg-type]
            for recipient in _unique(recipients or [None])
        ]
    return []


def _jmrp_reports(message: Message) -> list[BounceReport]:
    """Microsoft's feedback loop (JMRP) before it adopted ARF: the reported email attached
    as message/rfc822 with the complaining recipient in `X-HmXmrOriginalRecipient`."""
    for part in _report_parts(message):
        if part.get_content_type() not in _ORIGINAL_MESSAGE_TYPES:
            continue
        payload = part.get_payload()
        inner = payload[0] if isinstance(payload, list) and payload else None
        if not isinstance(inner, Message):
            continue
        fields = _fields(inner.raw_items())
        recipient = _address(fields.get("x-hmxmroriginalrecipient"))
        if recipient:
            return [BounceReport(kind="complaint", reason="feedback", recipient=recipient, feedback_type="abuse")]
    return []


def _unique(items: Iterable[Any]) -> list[Any]:
    seen: list[Any] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def _explanation_text(message: Message, *, whole: bool = False) -> str:
    """The human-readable text of a report, outside any attached original; cut where a
    quoted copy of our email starts unless `whole`. A multipart whose boundary is missing
    or wrong comes out of the parser as one text blob: it is read as text too."""
    texts: list[str] = []
    for part in _report_parts(message):
        content_type = part.get_content_type()
        if part.get_content_maintype() == "multipart":
            payload = part.get_payload()
            if isinstance(payload, str):
                texts.append(payload)
            continue
        if content_type not in {"text/plain", "text/html"} and not (
            part is message and part.get_content_maintype() == "text"
        ):
            continue
        text = _part_text(part)
        if content_type == "text/html":
            text = re.sub(r"<[^>]*>", " ", text)
        texts.append(text)
    joined = "\n".join(texts)
    if whole:
        return joined
    start = _ORIGINAL_STARTS.search(joined)
    return (joined[: start.start()] if start else joined)[:_MAX_SCAN]


_BOUNCE_SENDER = re.compile(r"mailer-daemon|postmaster|mail delivery|mail administrator|mailadmin|mdaemon|daemon@", re.IGNORECASE)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (?:status|failure|failed|problem|notification|has failed|report)|"
    r"failure notice|returned mail|mail delivery|could not (?:be )?deliver|non.?deliver|"
    r"not (?:be )?delivered|bounce|delivery error|mail system error|rejected|"
    r"nicht zustellbar|unzustellbar|retourn|failed mail|error sending|warning: could not|mail error|"
    r"permanent (?:delivery )?failure|non remis|not delivered",
    re.IGNORECASE,
)
_WARNING = re.compile(
    r"warning (?:message )?only|has been delayed|still (?:trying|being retried)|will (?:continue|keep) (?:trying|to try)|"
    r"(?:has|have) not yet been delivered|will be retried|no action is required|"
    r"delivery attempts will continue|has been postponed|not need to resend",
    re.IGNORECASE,
)
_DELAY_SUBJECT = re.compile(r"\bdelay(?:ed)?\b|still being retried|delivery warning|not yet been delivered", re.IGNORECASE)
_QUOTED_HEADER = re.compile(r"^\s*(?:\*\s*)?(?:subject|to|cc|sent|date|from|asunto|betreff|objet)\s*:.*$", re.IGNORECASE | re.MULTILINE)


def _without_quoted_headers(text: str) -> str:
    """The explanation without the quoted Subject/To/Date lines of our email: a subject
    saying "virus" or "blocked" is not why delivery failed."""
    return _QUOTED_HEADER.sub("", text)


def _flufl_failures(raw: bytes) -> tuple[list[str], list[str]]:
    """Mailman's detectors (flufl.bounce): temporary and permanent failed recipients of a
    non-standard bounce, found with the MTA-specific rules of ~15 systems."""
    try:
        from flufl.bounce import all_failures

        temporary, permanent = all_failures(email_package.message_from_bytes(raw))
    except Exception:  # noqa: BLE001 - a detector tripping on odd input must not lose the report
        return [], []
    decode = lambda found: sorted(  # noqa: E731
        address.decode("ascii", "replace").strip("<>").rstrip(".").lower() for address in found if b"@" in address
    )
    return decode(temporary), decode(permanent)


def _fallback_reports(message: Message, raw: bytes, original: _Fields | None, reporter: str | None) -> list[BounceReport]:
    """Bounces that are not RFC 3464 (qmail, Exim without DSN, Exchange 2003, Sendmail v5,
    webmail and carrier gateways) and the other mail that reaches the bounce address:
    auto-replies and plain mail.

    Recipients: X-Failed-Recipients, then Mailman's per-MTA detectors, then an address
    named on the failure line or in the explanation, then the To of the returned copy.
    The kind: the classifier on the failure text; the report is final unless it reads as a
    warning (the MTA still tries)."""
    text = _explanation_text(message)
    subject = _raw_header(message, "subject") or ""
    sender = _raw_header(message, "from") or ""
    failed_header = [
        address.lower().rstrip(".")
        for value in (str(v) for k, v in message.raw_items() if k.lower() == "x-failed-recipients")
        for address in _ADDRESS.findall(value)
    ]
    temporary, permanent = _flufl_failures(raw if isinstance(raw, bytes) else bytes(raw))
    status_match = _STATUS_LINE.search(text)
    looks_like_bounce = bool(
        failed_header or temporary or permanent or _BOUNCE_SENDER.search(sender) or _BOUNCE_SUBJECT.search(subject)
    )
    auto = (_raw_header(message, "auto-submitted") or "").lower()
    if not looks_like_bounce or (auto.startswith("auto-replied") and not (failed_header or permanent or temporary) and is_vacation(subject, text)):
        if (
            auto.startswith("auto-replied")
            or any(_raw_header(message, name) for name in ("x-autoreply", "x-autorespond", "x-auto-response-suppress"))
            or (_raw_header(message, "precedence") or "").lower() == "auto_reply"
            or is_vacation(subject, "")
        ):
            return [BounceReport(kind="auto_reply", reason="vacation", recipient=_address(sender), diagnostic=_unfold(subject)[:200] or None)]
        return [BounceReport(kind="not_a_bounce", reason="not_a_bounce", recipient=_address(_raw_header(message, "x-failed-recipients")))]

    warning = bool(temporary and not permanent) or bool(_DELAY_SUBJECT.search(subject)) or bool(_WARNING.search(text))
    action = "delayed" if warning else "failed"
    failure_text = _without_quoted_headers(text)
    diagnostic = _failure_line(failure_text, status_match)
    verdict = classify(diagnostic=diagnostic, action=action, reporter=reporter)
    if verdict.reason == "undefined" or diagnostic is None:
        found = text_match(failure_text)
        if found:
            snippet = _line_with(failure_text, found[1].group(0))
            verdict = classify(status=verdict.status, code=verdict.code, diagnostic=snippet, action=action, reporter=reporter)
            diagnostic = diagnostic or snippet.strip()

    recipients = _unique(failed_header + permanent + temporary)
    if not recipients:
        found = _failed_address(message, text, diagnostic or "")
        if found:
            recipients = [found]
    if not recipients and original:
        for name in ("x-original-to", "to", "delivered-to"):
            found = _address(original.get(name))
            if found and token_from_verp(found) is None:
                recipients = [found]
                break
    if len(recipients) > 1:
        return [_section_report(failure_text, recipient, recipients, verdict, diagnostic, action, reporter) for recipient in recipients]
    return [
        BounceReport(kind=verdict.kind, reason=verdict.reason, recipient=recipient, status=verdict.status, diagnostic=diagnostic)
        for recipient in (recipients or [None])
    ]


def _section_report(
    text: str, recipient: str, recipients: list[str], verdict: Any, diagnostic: str | None, action: str, reporter: str | None
) -> BounceReport:
    """One recipient of a multi-recipient non-standard bounce: the text from its address
    to the next recipient's is what the bounce says about it (Yahoo lists "unknown" and
    "disabled" accounts in one message)."""
    lowered = text.lower()
    start = lowered.find(recipient)
    if start != -1:
        after = [lowered.find(other, start + len(recipient)) for other in recipients if other != recipient]
        ends = [position for position in after if position != -1]
        section = text[start : min(ends) if ends else start + 600]
        if text_reason(section):
            status_match = _STATUS_LINE.search(section)
            line = _unfold(section)[:300]
            mine = classify(diagnostic=line, action=action, reporter=reporter)
            if mine.reason != "undefined" or status_match:
                return BounceReport(kind=mine.kind, reason=mine.reason, recipient=recipient, status=mine.status, diagnostic=line)
    return BounceReport(kind=verdict.kind, reason=verdict.reason, recipient=recipient, status=verdict.status, diagnostic=diagnostic)


_STATUS_LINE = re.compile(r"(?<![\w.])(?:[45]\d\d[ -])?[45]\.\d{1,3}\.\d{1,3}(?!\.?\d)|(?<![\w.\[])[45][0-5]\d(?=[ -][A-Za-z<])")


def _line_with(text: str, words: str) -> str:
    """The explanation line(s) where the classifier found its reason: the line holding
    `words` (or the lines it spans), with the line before when that one is an address."""
    lines = [line.strip() for line in text.splitlines()]
    first = words.split()[0].lower() if words.split() else words.lower()
    for index, line in enumerate(lines):
        if first in line.lower():
            picked = [line]
            extra = index + 1
            while len(" ".join(picked)) < len(words) + len(line) and extra < len(lines):
                picked.append(lines[extra])
                extra += 1
            if index > 0 and _ADDRESS.search(lines[index - 1]) and len(lines[index - 1]) < 120:
                picked.insert(0, lines[index - 1])
            joined = _unfold(" ".join(picked))
            if words.lower().split()[-1] in joined.lower():
                return joined[:300]
    return _unfold(text)[:300]


def _failure_line(text: str, status_match: re.Match[str] | None) -> str | None:
    """The line that explains the failure: the one with an SMTP code, if any."""
    if status_match is not None:
        line_start = text.rfind("\n", 0, status_match.start()) + 1
        line_end = text.find("\n", status_match.end())
        line = text[line_start : line_end if line_end != -1 else len(text)]
        if len(_unfold(line)) < 40:
            # The code stands alone on its line; the reason is on the next one.
            nxt_end = text.find("\n", line_end + 1) if line_end != -1 else -1
            line = text[line_start : nxt_end if nxt_end != -1 else len(text)]
        return _unfold(line)[:500] or None
    return None


def _failed_address(message: Message, text: str, code_line: str) -> str | None:
    """The address the failure is about: on the line with the code if there is one, else
    the first in the explanation, skipping our own VERP address and the report's From/To."""
    own = {
        found.lower()
        for name in ("from", "to", "delivered-to", "x-original-to", "reply-to", "sender")
        for found in _ADDRESS.findall(_raw_header(message, name) or "")
    }
    for source in (code_line, text):
        for found in _ADDRESS.finditer(source):
            address = found.group(0).rstrip(".").lower()
            if address not in own and token_from_verp(address) is None and not _BOUNCE_SENDER.search(address):
                return address
    return None


# --- one verdict per message: what the CLI and the benchmark print ----------------------


@dataclass
class MessageVerdict:
    kind: str
    reason: str
    status: str | None
    recipients: list[str]
    diagnostic: str | None
    reporter: str | None

    def as_json(self, file: str) -> dict[str, Any]:
        return {
            "file": file, "kind": self.kind, "reason": self.reason, "status": self.status,
            "recipients": self.recipients, "diagnostic": self.diagnostic,
        }


def classify_message(raw: bytes) -> MessageVerdict:
    """The report as a whole: every recipient it names, and the verdict of the most severe
    one (what the listener acts on first). The same parser the bounce listener runs."""
    reports = parse_reports(raw)
    top = max(reports, key=lambda report: _SEVERITY[report.kind])
    return MessageVerdict(
        kind=top.kind, reason=top.reason, status=top.status,
        recipients=_unique(report.recipient for report in reports if report.recipient),
        diagnostic=top.diagnostic or top.feedback_type, reporter=top.reporter,
    )


def _diagnostic(value: str | None) -> str | None:
    """The Diagnostic-Code text without its `smtp;` type: the part a person reads."""
    if not value:
        return None
    match = _DIAGNOSTIC_TYPE.fullmatch(value)
    text = (match.group(2) if match else value).strip()
    return text or None


def _status(value: str | None) -> str | None:
    match = _ENHANCED.search(value) if value else None
    return ".".join(match.groups()) if match else None
