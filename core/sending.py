"""Delivering one message row: claim it, compose, send over SMTP, record the outcome.

A message moves `queued → sending → sent | failed`; the claim is a conditional UPDATE, so two
workers handed the same job send once. A message found in `sending` by someone else is left
alone: after a crash it is marked `unknown` by the sweep and never resent automatically.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from config import Campaign
from core.compose import compose
from core.db import messages, new_id, triggers
from core.decisions import pick_address
from core.directory import mark_address
from core.domains import Hold, paused_domains
from core.mailer import DeliveryError
from core.outbox import record_activity
from core.metrics import MESSAGES, SEND_SECONDS
from core.queue import SEND_MESSAGE
from core.runtime import Runtime

log = logging.getLogger(__name__)


_MARK_SENT = (
    update(messages)
    .where(messages.c.id == bindparam("message"), messages.c.status == "sending")
    .values(
        status="sent", sent_at=bindparam("now"), message_id=bindparam("header_id"), error=None, due_at=None,
        links=bindparam("links", type_=messages.c.links.type),
    )
)
_SET_TRIGGER = update(triggers).where(triggers.c.id == bindparam("trigger_id")).values(
    status=bindparam("outcome"), reason=bindparam("why")
)
"""Built once: on the send path, building a statement costs more Python than running it."""


def retry_delay(attempts: int) -> timedelta:
    """30 s, 1 min, 2 min, … capped at one hour."""
    return timedelta(seconds=min(30 * 2 ** max(attempts - 1, 0), 3600))


async def _claim(rt: Runtime, message_id: str, now: datetime) -> dict[str, Any] | None:
    async with rt.db.begin() as connection:
        row = (
            await connection.execute(
                update(messages)
                .where(
                    messages.c.id == message_id,
                    messages.c.status == "queued",
                    (messages.c.due_at.is_(None)) | (messages.c.due_at <= now),
                )
                .values(status="sending", claimed_at=now, attempts=messages.c.attempts + 1)
                .returning(*messages.c)
            )
        ).mappings().first()
        if row is None:
            return None
        message = dict(row)
        message["source_ref"] = (
            await connection.execute(select(triggers.c.source_ref).where(triggers.c.id == message["trigger_id"]))
        ).scalar()
        return message


async def send_message(rt: Runtime, message_id: str) -> str | None:
    """Send one queued message; returns its new status, or None when it was not ours to send."""
    now = rt.clock.now()
    message = await _claim(rt, message_id, now)
    if message is None:
        return None
    return await deliver(rt, message)


async def deliver(rt: Runtime, message: dict[str, Any]) -> str:
    """Compose and hand a claimed (`sending`) message to SMTP, then record the outcome."""
    campaign = rt.config.campaign(message["campaign_id"])
    if campaign is None:
        return await _finish_failed(rt, message, f"campaign {message['campaign_id']} is no longer in the config")
    hold = await paused_domains(rt).hold(rt, message["to_address"], rt.clock.now())
    if hold is not None:
        return await _held(rt, message, hold)
    email, mime = compose(rt, message, campaign)
    try:
        with SEND_SECONDS.time():
            answer = await rt.mailer.send(mime, envelope_from=email.envelope_from or email.sender, recipient=message["to_address"])
    except DeliveryError as error:
        MESSAGES.labels(error.kind).inc()
        return await _delivery_failed(rt, message, campaign, error)
    MESSAGES.labels("sent").inc()
    return await _sent(rt, message, campaign, mime["Message-ID"], answer)


async def _sent(rt: Runtime, message: dict[str, Any], campaign: Campaign, header_id: str, answer: str) -> str:
    now = rt.clock.now()
    async with rt.db.begin() as connection:
        await connection.execute(
            _MARK_SENT, {"message": message["id"], "now": now, "header_id": header_id, "links": message.get("links")}
        )
        await _set_trigger(connection, message, "sent", f"sent to {message['to_address']}")
        if campaign.resend and message["seq"] < campaign.resend.max:
            await connection.execute(messages.insert(), {
                "id": new_id("msg"), "trigger_id": message["trigger_id"], "npi": message["npi"],
                "campaign_id": campaign.id, "kind": "resend", "seq": message["seq"] + 1, "status": "scheduled",
                "attempts": 0, "due_at": now + campaign.resend.after, "created_at": now,
            })
        await record_activity(rt, connection, message, "sent", now, {"to": message["to_address"]})
    log.info("message %s sent to %s", message["id"], message["to_address"])
    return "sent"


async def _delivery_failed(rt: Runtime, message: dict[str, Any], campaign: Campaign, error: DeliveryError) -> str:
    now = rt.clock.now()
    if error.kind == "recipient_rejected":
        async with rt.db.begin() as connection:
            await mark_address(connection, message["npi"], message["to_address"], "hard_bounced", str(error), now)
            await record_activity(rt, connection, message, "bounced", now, {"to": message["to_address"], "reason": str(error)})
            following = await pick_address(connection, message["npi"], campaign)
            if following is not None:
                await connection.execute(
                    update(messages)
                    .where(messages.c.id == message["id"])
                    .values(status="queued", to_address=following, due_at=None,
                            error=f"{message['to_address']} rejected: {error}")
                )
        if following is not None:
            log.info("message %s: %s rejected (%s), trying %s", message["id"], message["to_address"], error, following)
            await rt.queue.enqueue(SEND_MESSAGE, message["id"], job_id=f"send:{message['id']}:{message['attempts']}")
            return "queued"
        return await _finish_failed(
            rt, message, f"no deliverable address left: {message['to_address']} rejected ({error})",
            trigger_status="no_deliverable_email",
        )
    if error.kind == "transient" and message["attempts"] < rt.settings.send_max_attempts:
        due = now + retry_delay(message["attempts"])
        async with rt.db.begin() as connection:
            await connection.execute(
                update(messages)
                .where(messages.c.id == message["id"], messages.c.status == "sending")
                .values(status="queued", due_at=due, error=f"attempt {message['attempts']}: {error}")
            )
        log.info("message %s: temporary failure (%s), retry at %s", message["id"], error, due.isoformat())
        return "queued"
    return await _finish_failed(rt, message, f"after {message['attempts']} attempt(s): {error}")


async def _held(rt: Runtime, message: dict[str, Any], hold: Hold) -> str:
    """Sending to the receiving domain is paused after repeated blocks: the email waits
    until the pause ends, without spending an attempt."""
    async with rt.db.begin() as connection:
        await connection.execute(
            update(messages)
            .where(messages.c.id == message["id"], messages.c.status == "sending")
            .values(status="queued", due_at=hold.until, attempts=messages.c.attempts - 1,
                    error=f"{hold.group} paused until {hold.until.isoformat()}: {hold.reason}"[:1000])
        )
    log.info("message %s waits: %s paused until %s", message["id"], hold.group, hold.until.isoformat())
    return "queued"


async def _finish_failed(
    rt: Runtime, message: dict[str, Any], reason: str, *, trigger_status: str = "failed"
) -> str:
    async with rt.db.begin() as connection:
        await connection.execute(
            update(messages).where(messages.c.id == message["id"]).values(status="failed", error=reason, due_at=None)
        )
        await _set_trigger(connection, message, trigger_status, reason)
    log.warning("message %s failed: %s", message["id"], reason)
    return "failed"


async def _set_trigger(connection: AsyncConnection, message: dict[str, Any], status: str, reason: str) -> None:
    """Only the initial message decides the trigger's outcome; resends are shown per message."""
    if message["kind"] != "initial":
        return
    await connection.execute(_SET_TRIGGER, {"trigger_id": message["trigger_id"], "outcome": status, "why": reason})
