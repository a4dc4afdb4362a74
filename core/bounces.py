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

Everything here is pure and uses only the standard `email` package: the inbound SMTP
receiver, a worker and the tests can all call it without a database. Parsing never raises:
a report that cannot be understood comes back as kind "unknown", so one odd bounce cannot
stall the queue that processes the rest.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import BytesParser
from typing import Literal

__all__ = ["BounceKind", "BounceReport", "parse_report", "parse_reports", "token_from_verp", "verp_address"]

BounceKind = Literal["hard", "soft", "complaint", "unknown"]

VERP_PREFIX = "bounce+"
TOKEN_HEADER = "X-Trigger-Email-Token"

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

_SEVERITY: dict[BounceKind, int] = {"hard": 3, "complaint": 3, "soft": 2, "unknown": 0}

# Enhanced status codes (RFC 3463) and SMTP reply codes (RFC 5321). The look-arounds keep
# IP addresses ("10.5.1.100") and version strings ("v5.1.1") from passing for a status.
_ENHANCED = re.compile(r"(?<![\w.])([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
_REPLY_AND_ENHANCED = re.compile(r"(?<![\w.])([245]\d\d)[ -]([245]\.\d{1,3}\.\d{1,3})(?!\.?\d)")
_REPLY_IN_CONTEXT = re.compile(
    r"(?:(?:>|\b(?:said|replied|answered|response|responded|error|smtp|data|command))\s*[:;]|"
    r"\bfailed\s+with)\s*([245][0-5]\d)(?![\d.])",
    re.IGNORECASE,
)
_LEADING_REPLY = re.compile(r"\s*([245][0-5]\d)(?![\d.])")
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

    `kind`: "hard" (the address will not work: stop using it), "soft" (temporary: the
    message may still arrive or a later one may), "complaint" (the recipient reported the
    email as abuse) or "unknown" (not a failure we can act on, including success DSNs and
    unreadable input). `token` and `original_message_id` tie the report to the message row;
    either may be missing because MTAs are free to return only part of the original.
    """

    kind: BounceKind
    recipient: str | None = None
    status: str | None = None
    diagnostic: str | None = None
    token: str | None = None
    original_message_id: str | None = None
    feedback_type: str | None = None


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
        reports = _dsn_reports(message) or _arf_reports(message, original) or _fallback_reports(message)
        token = envelope_token or _token_from_message(message, original)
        message_id = _message_id(original.get("message-id")) if original else None
    except Exception:  # noqa: BLE001 - a malformed report must never stop bounce processing
        return [BounceReport(kind="unknown", token=envelope_token)]
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


# --- the three report shapes -----------------------------------------------------------


def _dsn_reports(message: Message) -> list[BounceReport]:
    """RFC 3464: one report per per-recipient block (the ones naming a recipient, action or
    status; the per-message block names the reporting MTA)."""
    reports: list[BounceReport] = []
    for part in _report_parts(message):
        if part.get_content_type() not in _DSN_TYPES:
            continue
        for block in _report_blocks(part):
            if not {"final-recipient", "original-recipient", "action", "status"} & block.keys():
                continue
            diagnostic = _diagnostic(block.get("diagnostic-code"))
            status = _status(block.get("status")) or _status(diagnostic)
            reports.append(
                BounceReport(
                    kind=_dsn_kind(block.get("action"), status, diagnostic),
                    recipient=_address(block.get("final-recipient")) or _address(block.get("original-recipient")),
                    status=status,
                    diagnostic=diagnostic,
                )
            )
    return reports


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


def _dsn_kind(action: str | None, status: str | None, diagnostic: str | None) -> BounceKind:
    """Classify one recipient. The status class decides (5 permanent, 4 transient), so an
    MTA that gives up after days of timeouts ("failed", 4.x.x) does not cost the HCP an
    address that may well be fine; "delayed" is soft whatever the status says. A failure
    with no code at all is soft too: hard marks the address dead, which needs evidence."""
    action = (action or "").strip().lower().split(" ")[0]
    if action in {"delivered", "relayed", "expanded"}:
        return "unknown"
    if action == "delayed":
        return "soft"
    code_class = status[0] if status else None
    if code_class is None and diagnostic:
        reply = _LEADING_REPLY.match(diagnostic) or _REPLY_IN_CONTEXT.search(diagnostic)
        code_class = reply.group(1)[0] if reply else None
    if code_class == "5":
        return "hard"
    if code_class == "4":
        return "soft"
    if code_class == "2":
        return "unknown"
    return "soft" if action == "failed" else "unknown"


def _arf_reports(message: Message, original: _Fields | None) -> list[BounceReport]:
    """RFC 5965: the complained-about recipient is Original-Rcpt-To, else the address the
    report asks to remove, else the To of the returned email (feedback loops often redact
    the first, and an HCP address left in the copy is still the right one to suppress)."""
    for part in _report_parts(message):
        if part.get_content_type() not in _ARF_TYPES:
            continue
        fields: _Fields = {}
        for block in _report_blocks(part):
            for name, value in block.items():
                fields.setdefault(name, value)
        feedback_type = (fields.get("feedback-type") or "").strip().lower() or None
        recipient = (
            _address(fields.get("original-rcpt-to"))
            or _address(fields.get("removal-recipient"))
            or _address((original or {}).get("to"))
        )
        # Feedback-Type is required (RFC 5965 3.1); without it the part is not a report.
        kind: BounceKind = "complaint" if feedback_type and feedback_type not in _NOT_COMPLAINTS else "unknown"
        return [BounceReport(kind=kind, recipient=recipient, feedback_type=feedback_type)]
    return []


def _explanation_text(message: Message, *, whole: bool = False) -> str:
    """The human-readable text of a report, outside any attached original; cut where a
    quoted copy of our email starts unless `whole`."""
    texts: list[str] = []
    for part in _report_parts(message):
        if part.get_content_maintype() == "multipart" or part.get_content_type() not in {"text/plain", "text/html"}:
            continue
        text = _part_text(part)
        if part.get_content_type() == "text/html":
            text = re.sub(r"<[^>]*>", " ", text)
        texts.append(text)
    joined = "\n".join(texts)
    if whole:
        return joined
    start = _ORIGINAL_STARTS.search(joined)
    return (joined[: start.start()] if start else joined)[:_MAX_SCAN]


def _fallback_reports(message: Message) -> list[BounceReport]:
    """Best effort for bounces that are not RFC 3464 (old qmail, some Exchange and webmail
    systems): an SMTP reply or enhanced status code in the explanation, read only where it
    is plainly an SMTP answer so a number in an auto-reply does not pass for a bounce."""
    text = _explanation_text(message)
    status: str | None = None
    code_class: str | None = None
    position: int | None = None
    for pattern in (_REPLY_AND_ENHANCED, _ENHANCED, _REPLY_IN_CONTEXT):
        match = pattern.search(text)
        if match:
            position = match.start(1)
            if pattern is _REPLY_AND_ENHANCED:
                status = match.group(2)
            elif pattern is _ENHANCED:
                status = ".".join(match.groups())
            code_class = match.group(1)[0]
            break
    kinds: dict[str, BounceKind] = {"5": "hard", "4": "soft"}
    kind = kinds.get(code_class or "", "unknown")
    if position is None:
        return [BounceReport(kind="unknown", recipient=_address(_raw_header(message, "x-failed-recipients")))]
    line_start = text.rfind("\n", 0, position) + 1
    line_end = text.find("\n", position)
    line = text[line_start : line_end if line_end != -1 else len(text)]
    return [
        BounceReport(
            kind=kind,
            recipient=_address(_raw_header(message, "x-failed-recipients")) or _failed_address(message, text, line),
            status=status,
            diagnostic=_unfold(line)[:500] or None,
        )
    ]


def _failed_address(message: Message, text: str, code_line: str) -> str | None:
    """The address the failure is about: on the line with the code if there is one, else
    the first in the explanation, skipping our own VERP address and the report's From/To."""
    own = {
        found.lower()
        for name in ("from", "to", "delivered-to", "x-original-to")
        for found in _ADDRESS.findall(_raw_header(message, name) or "")
    }
    for source in (code_line, text):
        for found in _ADDRESS.finditer(source):
            address = found.group(0).rstrip(".").lower()
            if address not in own and token_from_verp(address) is None:
                return address
    return None
