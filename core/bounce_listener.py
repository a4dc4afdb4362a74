"""The inbound SMTP listener for asynchronous bounces (RFC 3464) and complaints (RFC 5965).

It runs inside the caller's event loop (not aiosmtpd's threaded controller) so it can write
to the same database engine as the rest of the process.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from core.bounces import BounceReport, parse_reports
from core.compose import tokens_for
from core.engagement import record_bounce
from core.runtime import Runtime

log = logging.getLogger(__name__)


async def apply_report(rt: Runtime, report: BounceReport) -> str:
    """Act on one report. A report is unauthenticated mail, so it counts only when its VERP
    token is one we signed, or its recipient is an address in our directory."""
    if report.kind == "unknown":
        return "ignored: not a bounce or complaint"
    message_id = tokens_for(rt).read_bounce(report.token) if report.token else None
    detail = " ".join(part for part in (report.status, report.diagnostic or report.feedback_type) if part) or report.kind
    return await record_bounce(rt, kind=report.kind, message_id=message_id, address=report.recipient, detail=detail)


class BounceHandler:
    def __init__(self, rt: Runtime):
        self.rt = rt
        self.results: list[str] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content: Any = envelope.original_content or envelope.content or b""
        raw = content if isinstance(content, bytes) else str(content).encode()
        for report in parse_reports(raw, envelope_to=list(envelope.rcpt_tos)):
            try:
                result = await apply_report(self.rt, report)
            except Exception:  # noqa: BLE001 - the sender must not retry a report we cannot use
                log.exception("bounce report failed")
                result = "error"
            self.results.append(result)
            log.info("bounce report %s for %s: %s", report.kind, report.recipient, result)
        return "250 OK"


async def start_bounce_listener(rt: Runtime, host: str = "127.0.0.1", port: int = 2525) -> asyncio.Server:
    handler = BounceHandler(rt)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="trigger-email", data_size_limit=10 * 1024 * 1024, enable_SMTPUTF8=True),
        host=host, port=port,
    )
    server.handler = handler  # type: ignore[attr-defined]
    return server
