"""The inbound SMTP listener for asynchronous bounces (RFC 3464), complaints (RFC 5965) and
the `mailto:` unsubscribe requests of List-Unsubscribe.

It runs inside the caller's event loop (not aiosmtpd's threaded controller) so it can write
to the same database engine as the rest of the process.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from email import policy
from email.parser import BytesParser
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from core.bounces import BounceReport, parse_reports
from core.compose import tokens_for
from core.engagement import record_bounce, unsubscribe
from core.runtime import Runtime

log = logging.getLogger(__name__)


async def apply_report(rt: Runtime, report: BounceReport) -> str:
    """Act on one report. A report is unauthenticated mail, so it counts only when its VERP
    token is one we signed, or its recipient is an address we sent email to."""
    if report.kind == "not_a_bounce":
        return "ignored: not a bounce or complaint"
    message_id = tokens_for(rt).read_bounce(report.token) if report.token else None
    detail = " ".join(part for part in (report.status, report.diagnostic or report.feedback_type) if part) or report.kind
    return await record_bounce(
        rt, kind=report.kind, reason=report.reason, message_id=message_id, address=report.recipient, detail=detail
    )


_UNSUBSCRIBE_SUBJECT = re.compile(r"\bunsubscribe-([0-9a-f]+\.[0-9a-f]+)\b", re.IGNORECASE)


async def apply_mailto_unsubscribe(rt: Runtime, raw: bytes) -> str | None:
    """The `mailto:` half of List-Unsubscribe: a reader's client mails us a subject of
    `unsubscribe-{token}`. The token is signed, so only someone who got the email can send it.
    None when the mail is not such a request."""
    subject = BytesParser(policy=policy.default).parsebytes(raw, headersonly=True).get("Subject", "")
    match = _UNSUBSCRIBE_SUBJECT.search(str(subject))
    message_id = tokens_for(rt).read_bounce(match.group(1)) if match else None
    if message_id is None:
        return None
    done = await unsubscribe(rt, message_id, via="mailto")
    return f"unsubscribed NPI {done['npi']} by mail" if done else "ignored: unsubscribe for an unknown email"


TRY_LATER = "451 4.3.0 Temporary failure, please try again later"


class BounceHandler:
    def __init__(self, rt: Runtime):
        self.rt = rt
        self.results: deque[str] = deque(maxlen=1000)
        """What became of the latest reports, newest last (logs say the same)."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """250 once the mail is acted on, or is not ours to act on; a temporary failure when
        we could not record it (database down), so the sending MTA tries again later rather
        than an unsubscribe or a bounce being lost."""
        content: Any = envelope.original_content or envelope.content or b""
        raw = content if isinstance(content, bytes) else str(content).encode()
        try:
            unsubscribed = await apply_mailto_unsubscribe(self.rt, raw)
            if unsubscribed is not None:
                self._done(unsubscribed, f"mailto unsubscribe from {envelope.mail_from}")
                return "250 OK"
            for report in parse_reports(raw, envelope_to=list(envelope.rcpt_tos)):
                self._done(await apply_report(self.rt, report), f"bounce report {report.kind} for {report.recipient}")
        except Exception:  # noqa: BLE001 - anything that stops us recording is worth a retry
            log.exception("could not record mail from %s", envelope.mail_from)
            return TRY_LATER
        return "250 OK"

    def _done(self, result: str, what: str) -> None:
        self.results.append(result)
        log.info("%s: %s", what, result)


async def start_bounce_listener(rt: Runtime, host: str = "127.0.0.1", port: int = 2525) -> asyncio.Server:
    handler = BounceHandler(rt)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="trigger-email", data_size_limit=10 * 1024 * 1024, enable_SMTPUTF8=True),
        host=host, port=port,
    )
    server.handler = handler  # type: ignore[attr-defined]
    return server
