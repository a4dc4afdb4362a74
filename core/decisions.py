"""The one place that decides whether a trigger becomes an email.

The checks run in DESIGN order and the first that fails is the outcome, stored with a reason
a marketing-ops admin can read. Cooldown and the frequency cap are made race-free by the
database: the decision transaction first takes a write lock on the HCP's row
(`UPDATE hcps SET send_seq = send_seq + 1`), so decisions for one HCP run one at a time on
PostgreSQL (row lock, any number of workers) and on SQLite (database write lock), while
decisions for different HCPs run in parallel on PostgreSQL.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from jinja2 import TemplateError
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from config import Campaign, Config, format_duration
from core.campaigns import is_paused
from core.db import hcps, messages, new_id, triggers
from core.directory import address_counts, deliverable_addresses, get_hcp
from core.npi import npi_problem
from core.metrics import TRIGGERS
from core.queue import SEND_MESSAGE
from core.render import render_campaign
from core.runtime import Runtime
from core.suppression import suppressed_addresses, suppression_reason

log = logging.getLogger(__name__)

ACTIVE = ("queued", "sending", "sent", "unknown")
"""Message states that count as 'an email went (or may have gone) out'."""


@dataclass(frozen=True)
class Decision:
    status: str
    reason: str
    message_id: str | None = None


def audience_problem(campaign: Campaign, hcp: dict[str, Any]) -> str | None:
    audience = campaign.audience
    if audience.specialties is not None and hcp["specialty"] not in audience.specialties:
        return f"specialty {hcp['specialty'] or '(none)'!r} is not in the audience of {campaign.id}"
    if audience.states is not None and hcp["state"] not in audience.states:
        return f"state {hcp['state'] or '(none)'!r} is not in the audience of {campaign.id}"
    return None


async def last_contact(connection: AsyncConnection, npi: str, campaign_id: str) -> datetime | None:
    """When this HCP last received (or opened) an email of this campaign."""
    sent = func.coalesce(messages.c.sent_at, messages.c.created_at)
    row = await connection.execute(
        select(func.max(sent), func.max(messages.c.opened_at)).where(
            messages.c.npi == npi, messages.c.campaign_id == campaign_id, messages.c.status.in_(ACTIVE)
        )
    )
    last_sent, last_open = row.one()
    moments = [moment for moment in (last_sent, last_open) if moment is not None]
    return max(moments) if moments else None


async def sends_since(connection: AsyncConnection, npi: str, since: datetime) -> int:
    sent = func.coalesce(messages.c.sent_at, messages.c.created_at)
    row = await connection.execute(
        select(func.count()).where(
            messages.c.npi == npi, messages.c.status.in_(ACTIVE), messages.c.created_at >= since - timedelta(days=1), sent >= since
        )
    )
    return int(row.scalar_one())


async def pick_address(connection: AsyncConnection, npi: str, campaign: Campaign) -> str | None:
    blocked = await suppressed_addresses(connection, npi, campaign)
    for candidate in await deliverable_addresses(connection, npi):
        if candidate["address"] not in blocked:
            return candidate["address"]
    return None


async def decide(rt: Runtime, trigger_id: str) -> Decision | None:
    """Decide a pending trigger; None when it was already decided (a duplicate job)."""
    async with rt.db.begin() as connection:
        now = rt.clock.now()
        claimed = await connection.execute(
            update(triggers).where(triggers.c.id == trigger_id, triggers.c.status == "pending").values(decided_at=now)
        )
        if claimed.rowcount != 1:
            return None
        trigger = (await connection.execute(select(triggers).where(triggers.c.id == trigger_id))).mappings().one()
        decision = await _decide(connection, rt.config, trigger, now)
        await connection.execute(
            update(triggers).where(triggers.c.id == trigger_id).values(status=decision.status, reason=decision.reason)
        )
    if decision.message_id:
        await rt.queue.enqueue(SEND_MESSAGE, decision.message_id, job_id=f"send:{decision.message_id}:0")
    TRIGGERS.labels(decision.status).inc()
    log.info("trigger %s → %s (%s)", trigger_id, decision.status, decision.reason)
    return decision


async def _decide(connection: AsyncConnection, config: Config, trigger: Any, now: datetime) -> Decision:
    npi = trigger["npi"]
    problem = npi_problem(npi)
    if problem:
        return Decision("invalid_npi", problem)
    campaign = config.campaign(trigger["campaign_id"])
    if campaign is None:
        return Decision("unknown_campaign", f"no campaign {trigger['campaign_id']!r} in the config")
    if await is_paused(connection, campaign):
        return Decision("campaign_paused", f"campaign {campaign.id} is paused")
    # The HCP row lock: from here on, decisions for this NPI are serialised.
    locked = await connection.execute(update(hcps).where(hcps.c.npi == npi).values(send_seq=hcps.c.send_seq + 1))
    if locked.rowcount != 1:
        return Decision("unknown_hcp", f"NPI {npi} is not in the HCP directory")
    hcp = await get_hcp(connection, npi)
    assert hcp is not None
    problem = audience_problem(campaign, hcp)
    if problem:
        return Decision("not_in_audience", problem)
    reason = await suppression_reason(connection, npi, campaign)
    if reason:
        return Decision("suppressed", reason)
    counts = await address_counts(connection, npi)
    if counts and counts.get("ok", 0) == 0 and counts.get("hard_bounced", 0) > 0:
        return Decision("suppressed", f"all {counts['hard_bounced']} address(es) of NPI {npi} hard-bounced")
    last = await last_contact(connection, npi, campaign.id)
    if last is not None and last + campaign.cooldown > now:
        until = last + campaign.cooldown
        return Decision(
            "cooldown",
            f"{campaign.id} reached NPI {npi} on {last:%Y-%m-%d %H:%M} UTC; cooldown "
            f"{format_duration(campaign.cooldown)} runs until {until:%Y-%m-%d %H:%M} UTC",
        )
    cap = config.limits.per_hcp
    if cap is not None and campaign.kind == "marketing":
        recent = await sends_since(connection, npi, now - cap.per)
        if recent >= cap.max:
            return Decision(
                "frequency_cap", f"NPI {npi} already got {recent} emails in the last {format_duration(cap.per)} (cap {cap.max})"
            )
    address = await pick_address(connection, npi, campaign)
    if address is None:
        return Decision("no_deliverable_email", f"NPI {npi} has no deliverable address")
    try:
        rendered = render_campaign(campaign, hcp, trigger["data"] or {})
    except TemplateError as exc:
        return Decision("failed", f"template error: {exc}")
    message_id = new_id("msg")
    await connection.execute(
        messages.insert().values(
            id=message_id, trigger_id=trigger["id"], npi=npi, campaign_id=campaign.id, kind="initial", seq=0,
            to_address=address, subject=rendered.subject, html=rendered.html, status="queued", attempts=0,
            created_at=now,
        )
    )
    return Decision("queued", f"queued to {address}", message_id)
