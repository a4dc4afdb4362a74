"""The sweep: everything that is due in the database, picked up once a second by the
worker's cron. The database holds the due times, so a Redis flush or a restart loses nothing.

It promotes due resends (unless the HCP engaged), re-enqueues retries and lost jobs (never
before an item's backoff is over), puts back to `queued` the messages whose worker died
before their SMTP transaction started (expired lease), marks `unknown` those whose worker died
inside it, and lets adapters add steps (engagement triggers, the CRM pusher) without core
knowing them.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, Awaitable, Callable

from jinja2 import TemplateError
from sqlalchemy import func, select, update

from core.campaigns import is_paused, paused_ids
from core.db import inbound_events, messages, triggers
from core.decisions import pick_address
from core.directory import get_hcp
from core.metrics import MESSAGES
from core.queue import PROCESS_INBOUND, PROCESS_TRIGGER, SEND_MESSAGE
from core.quiet_hours import hold_reason, quiet_until
from core.render import render_campaign
from core.variants import ab_step
from core.runtime import Runtime
from core.sending import mark_trigger_unknown
from core.suppression import suppression_reason

log = logging.getLogger(__name__)

LOST_AFTER = timedelta(seconds=10)
"""A pending trigger or queued message this old with no job running is re-enqueued."""
BATCH = 500
PROCESSING_STUCK_AFTER = timedelta(minutes=5)
INBOUND_MAX_ATTEMPTS = 8
"""An inbound event whose worker died while processing it this many times ends `failed`."""


def engagement_column(config: Any, table: Any = messages) -> Any:
    """The message column whose being set means the HCP engaged (`tracking.engagement`)."""
    return table.c.clicked_at if config.tracking.engagement == "click" else table.c.opened_at


async def promote_resend(rt: Runtime, message_id: str) -> str | None:
    """Turn a due `scheduled` resend into a queued send, or cancel it; None if not due/ours."""
    now = rt.clock.now()
    async with rt.db.begin() as connection:
        claimed = await connection.execute(
            update(messages)
            .where(messages.c.id == message_id, messages.c.status == "scheduled", messages.c.due_at <= now)
            .values(status="promoting", claimed_at=now)
        )
        if claimed.rowcount != 1:
            return None
        message = (await connection.execute(select(messages).where(messages.c.id == message_id))).mappings().one()
        trigger = (await connection.execute(select(triggers).where(triggers.c.id == message["trigger_id"]))).mappings().one()
        status, values = await _resend_plan(rt, connection, message, trigger)
        await connection.execute(update(messages).where(messages.c.id == message_id).values(status=status, **values))
        if message["kind"] == "initial" and status != "scheduled":
            # An email held for quiet hours: its trigger now shows what became of it.
            outcome = {"queued": "queued", "failed": "failed"}.get(status, "cancelled")
            why = f"queued to {values['to_address']}" if status == "queued" else values.get("error")
            await connection.execute(update(triggers).where(triggers.c.id == trigger["id"]).values(status=outcome, reason=why))
    if status == "queued":
        await rt.queue.enqueue(SEND_MESSAGE, message_id, job_id=f"send:{message_id}:0")
    log.info("resend %s → %s %s", message_id, status, values.get("error", ""))
    return status


async def _resend_plan(rt: Runtime, connection: Any, message: Any, trigger: Any) -> tuple[str, dict[str, Any]]:
    """What a due `scheduled` message (a resend, or an email held for quiet hours) becomes.
    A pause holds it (never cancels it): it goes out after resume if still eligible."""
    campaign = rt.config.campaign(message["campaign_id"])
    if campaign is None:
        return "cancelled", {"error": "campaign no longer in the config", "due_at": None}
    if await is_paused(connection, campaign):
        return "scheduled", {"error": f"held: campaign {campaign.id} is paused; goes out after resume if still eligible"}
    column = engagement_column(rt.config)
    engaged_count = (
        await connection.execute(select(func.count()).where(messages.c.trigger_id == trigger["id"], column.is_not(None)))
    ).scalar_one()
    if engaged_count:
        return "cancelled", {"error": f"HCP engaged ({rt.config.tracking.engagement}) with an earlier email", "due_at": None}
    reason = await suppression_reason(connection, message["npi"], campaign)
    if reason:
        return "cancelled", {"error": f"suppressed: {reason}", "due_at": None}
    address = await pick_address(connection, message["npi"], campaign)
    if address is None:
        return "cancelled", {"error": "no deliverable address left", "due_at": None}
    hcp = await get_hcp(connection, message["npi"]) or {}
    window = campaign.quiet(rt.config.limits.quiet_hours)
    until = quiet_until(window, hcp, rt.clock.now()) if window is not None else None
    if until is not None:
        return "scheduled", {"due_at": until, "error": hold_reason(window, hcp, until)}  # type: ignore[arg-type]
    variant = message["variant"]
    if message["kind"] != "initial" and campaign.subjects:
        variant = (
            await connection.execute(
                select(messages.c.variant).where(messages.c.trigger_id == trigger["id"], messages.c.kind == "initial")
            )
        ).scalar()
    try:
        rendered = render_campaign(
            campaign, hcp, trigger["data"] or {}, resend=message["kind"] != "initial", variant=variant
        )
    except TemplateError as exc:
        return "failed", {"error": f"template error: {exc}", "due_at": None}
    return "queued", {
        "to_address": address, "subject": rendered.subject, "html": rendered.html, "due_at": None, "error": None,
        "campaign_version": campaign.version, "variant": variant,
    }


async def expire_claims(rt: Runtime) -> tuple[int, int]:
    """Claims whose lease ran out (their worker died or hung): back to `queued` when the SMTP
    transaction never started (nothing can have been delivered), `unknown` when it did.
    Rows claimed before leases existed fall back to `sending_stuck_after`. Returns
    (released, unknown)."""
    now = rt.clock.now()
    expired = (messages.c.claimed_until <= now) | (
        messages.c.claimed_until.is_(None)
        & (messages.c.claimed_at <= now - timedelta(seconds=rt.settings.sending_stuck_after))
    )
    async with rt.db.begin() as connection:
        released = await connection.execute(
            update(messages)
            .where(messages.c.status == "sending", messages.c.claimed_until <= now, messages.c.smtp_started_at.is_(None))
            .values(
                status="queued", claimed_until=None, due_at=None, attempts=messages.c.attempts - 1,
                error="its worker stopped before the SMTP transaction; put back",
            )
        )
        cut = (
            await connection.execute(
                select(messages.c.id, messages.c.trigger_id, messages.c.kind, messages.c.to_address, messages.c.claim_seq)
                .where(messages.c.status == "sending", expired)
                .limit(BATCH)
            )
        ).mappings().all()
        unknown = 0
        for message in cut:
            reason = "its worker stopped inside the SMTP transaction"
            marked = await connection.execute(
                update(messages)
                .where(messages.c.id == message["id"], messages.c.status == "sending", messages.c.claim_seq == message["claim_seq"])
                .values(status="unknown", claimed_until=None, error=f"{reason}; not resent automatically")
            )
            if marked.rowcount == 1:
                unknown += 1
                await mark_trigger_unknown(connection, message, reason)
    if unknown:
        MESSAGES.labels("unknown").inc(unknown)
        log.warning("%d message(s) became unknown: their worker stopped inside the SMTP transaction", unknown)
    return released.rowcount or 0, unknown


SweepStep = Callable[[Runtime], Awaitable[Any]]


async def sweep(rt: Runtime, extra_steps: list[SweepStep] | None = None) -> dict[str, int]:
    """One pass over everything due. Safe to run concurrently on several workers: every
    state change is a conditional UPDATE."""
    now = rt.clock.now()
    done = {"resends": 0, "retries": 0, "lost_triggers": 0, "inbound": 0, "unknown": 0, "released": 0}
    done["released"], done["unknown"] = await expire_claims(rt)
    async with rt.db.connect() as connection:
        # A paused campaign's due resends and retries wait in the database (not cancelled):
        # they are picked up again after resume.
        held = tuple(await paused_ids(connection, rt.config))
        not_held = messages.c.campaign_id.not_in(held) if held else messages.c.id.is_not(None)
        due_resends = (
            await connection.execute(
                select(messages.c.id).where(messages.c.status == "scheduled", messages.c.due_at <= now, not_held).limit(BATCH)
            )
        ).scalars().all()
        retries = (
            await connection.execute(
                select(messages.c.id, messages.c.attempts).where(
                    messages.c.status == "queued", not_held,
                    messages.c.claimed_until.is_(None) | (messages.c.claimed_until <= now),
                    ((messages.c.due_at.is_not(None)) & (messages.c.due_at <= now))
                    | ((messages.c.due_at.is_(None)) & (messages.c.created_at <= now - LOST_AFTER)),
                ).limit(BATCH)
            )
        ).all()
        lost = (
            await connection.execute(
                select(triggers.c.id).where(
                    triggers.c.status == "pending",
                    ((triggers.c.due_at.is_not(None)) & (triggers.c.due_at <= now))
                    | ((triggers.c.due_at.is_(None)) & (triggers.c.created_at <= now - LOST_AFTER)),
                ).limit(BATCH)
            )
        ).scalars().all()
        inbound = (
            await connection.execute(
                select(inbound_events.c.id).where(
                    inbound_events.c.status == "pending",
                    ((inbound_events.c.due_at.is_not(None)) & (inbound_events.c.due_at <= now))
                    | ((inbound_events.c.due_at.is_(None)) & (inbound_events.c.received_at <= now - LOST_AFTER)),
                ).limit(BATCH)
            )
        ).scalars().all()
    for message_id in due_resends:
        if await promote_resend(rt, message_id):
            done["resends"] += 1
    bucket = int(now.timestamp()) // 10
    for message_id, attempts in retries:
        if await rt.queue.enqueue(SEND_MESSAGE, message_id, job_id=f"send:{message_id}:{attempts}:{bucket}"):
            done["retries"] += 1
    for trigger_id in lost:
        if await rt.queue.enqueue(PROCESS_TRIGGER, trigger_id, job_id=f"trigger:{trigger_id}:{bucket}"):
            done["lost_triggers"] += 1
    for event_id in inbound:
        if await rt.queue.enqueue(PROCESS_INBOUND, event_id, job_id=f"inbound:{event_id}:{bucket}"):
            done["inbound"] += 1
    async with rt.db.begin() as connection:
        # An event whose worker died mid-processing is processed again (triggers made from it
        # carry idempotency keys, so nothing is sent twice), after a backoff and a bounded
        # number of times: an event that kills its worker must not loop.
        await connection.execute(
            update(inbound_events)
            .where(
                inbound_events.c.status == "processing", inbound_events.c.processed_at <= now - PROCESSING_STUCK_AFTER,
                inbound_events.c.attempts >= INBOUND_MAX_ATTEMPTS,
            )
            .values(status="failed", result=f"worker stopped while processing it, {INBOUND_MAX_ATTEMPTS} times")
        )
        await connection.execute(
            update(inbound_events)
            .where(inbound_events.c.status == "processing", inbound_events.c.processed_at <= now - PROCESSING_STUCK_AFTER)
            .values(status="pending", due_at=now + timedelta(minutes=1))
        )
    done["ab_decided"] = await ab_step(rt)
    for step in extra_steps or []:
        await step(rt)
    return done
