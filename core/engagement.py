"""What HCPs do with their emails: opens, clicks, unsubscribes, bounces, complaints.

Each fact is recorded on the message, as an engagement event, and as one outbox activity.
Engagement (an open, or only a click under `tracking.engagement: click`) cancels the pending
resends of that trigger; the cooldown then runs from the open (decisions read `opened_at`).
Email engagement rules (`from: email`) turn these facts into new triggers, once each.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from config import parse_duration
from core.db import engagement_events, hcp_emails, insert_ignore, messages, rule_firings, triggers
from core.directory import mark_address
from core.metrics import TRACKING
from core.outbox import record_activity
from core.runtime import Runtime
from core.scheduler import SweepStep
from core.suppression import add_suppression
from core.triggers import accept_trigger

log = logging.getLogger(__name__)

_MACHINE_AGENTS = re.compile(
    r"(bot|crawler|spider|preview|prefetch|scanner|barracuda|mimecast|proofpoint|symantec|messagelabs|"
    r"trendmicro|forcepoint|fireeye|cisco|ironport|safelinks|linkscanner|headless|python-requests|go-http-client)",
    re.IGNORECASE,
)
_APPLE_MPP = {
    # The Mail Privacy Protection proxy fetches with a bare "Mozilla/5.0"; Apple Mail's own
    # prefetch announces WebKit without the Safari/Version part a browser would add.
    "Mozilla/5.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
}
SOFT_BOUNCES_FOR_HARD = 3
SOFT_BOUNCE_WINDOW = timedelta(days=7)


def is_machine(rt: Runtime, user_agent: str | None, sent_at: datetime | None, now: datetime) -> bool:
    """Apple Mail Privacy Protection fetches every pixel with a bare WebKit user agent;
    security gateways announce themselves; and anything within seconds of delivery is a
    prefetch, not a reader."""
    agent = (user_agent or "").strip()
    if not agent or agent in _APPLE_MPP or _MACHINE_AGENTS.search(agent):
        return True
    return sent_at is not None and now - sent_at < rt.config.tracking.machine_open_window


async def _message(connection: AsyncConnection, message_id: str) -> dict[str, Any] | None:
    row = (await connection.execute(select(messages).where(messages.c.id == message_id))).mappings().first()
    return dict(row) if row else None


async def _cancel_resends(connection: AsyncConnection, where: Any, reason: str) -> int:
    result = await connection.execute(
        update(messages).where(messages.c.status == "scheduled", where).values(status="cancelled", error=reason, due_at=None)
    )
    return result.rowcount or 0


async def _event(connection: AsyncConnection, message: dict[str, Any], kind: str, now: datetime, **extra: Any) -> None:
    await connection.execute(
        engagement_events.insert().values(
            message_id=message["id"], npi=message["npi"], address=message["to_address"], kind=kind, occurred_at=now, **extra
        )
    )


async def record_open(rt: Runtime, message_id: str, user_agent: str | None) -> bool:
    """Returns False when the message does not exist or was never sent."""
    now = rt.clock.now()
    fired: list[tuple[str, dict[str, Any]]] = []
    async with rt.db.begin() as connection:
        message = await _message(connection, message_id)
        if message is None or message["sent_at"] is None:
            return False
        if is_machine(rt, user_agent, message["sent_at"], now):
            await connection.execute(
                update(messages).where(messages.c.id == message_id).values(machine_opens=messages.c.machine_opens + 1)
            )
            await _event(connection, message, "machine_open", now, user_agent=user_agent)
            TRACKING.labels("machine_open").inc()
            return True
        first = message["opened_at"] is None
        await connection.execute(
            update(messages)
            .where(messages.c.id == message_id)
            .values(open_count=messages.c.open_count + 1, opened_at=func.coalesce(messages.c.opened_at, now))
        )
        await _event(connection, message, "open", now, user_agent=user_agent)
        if first:
            await record_activity(rt, connection, message, "opened", now, {"to": message["to_address"]})
            if rt.config.tracking.engagement == "open":
                await _cancel_resends(connection, messages.c.trigger_id == message["trigger_id"], "HCP opened an earlier email")
            fired = await _email_rules(rt, connection, message, "opened", None, now)
    TRACKING.labels("open").inc()
    await _fire(rt, fired)
    return True


async def record_click(rt: Runtime, message_id: str, link_index: int, user_agent: str | None) -> str | None:
    """The original URL of link `link_index` of that message, or None (no redirect)."""
    now = rt.clock.now()
    fired: list[tuple[str, dict[str, Any]]] = []
    async with rt.db.begin() as connection:
        message = await _message(connection, message_id)
        links = (message or {}).get("links") or []
        if message is None or not (0 <= link_index < len(links)):
            return None
        url = str(links[link_index])
        if is_machine(rt, user_agent, message["sent_at"], now):
            await _event(connection, message, "machine_click", now, link_index=link_index, url=url, user_agent=user_agent)
            TRACKING.labels("machine_click").inc()
            return url
        first_open = message["opened_at"] is None
        await connection.execute(
            update(messages)
            .where(messages.c.id == message_id)
            .values(
                click_count=messages.c.click_count + 1,
                clicked_at=func.coalesce(messages.c.clicked_at, now),
                # A click proves the email was opened, even with images blocked.
                opened_at=func.coalesce(messages.c.opened_at, now),
                open_count=messages.c.open_count + (1 if first_open else 0),
            )
        )
        await _event(connection, message, "click", now, link_index=link_index, url=url, user_agent=user_agent)
        if first_open:
            await record_activity(rt, connection, message, "opened", now, {"to": message["to_address"]})
        await record_activity(
            rt, connection, message, "clicked", now, {"to": message["to_address"], "link": url}, dedupe=str(link_index)
        )
        await _cancel_resends(connection, messages.c.trigger_id == message["trigger_id"], "HCP clicked an earlier email")
        fired = await _email_rules(rt, connection, message, "clicked", url, now)
        if first_open:
            fired += await _email_rules(rt, connection, message, "opened", None, now)
    TRACKING.labels("click").inc()
    await _fire(rt, fired)
    return url


async def unsubscribe(rt: Runtime, message_id: str, *, via: str) -> dict[str, Any] | None:
    now = rt.clock.now()
    async with rt.db.begin() as connection:
        message = await _message(connection, message_id)
        if message is None:
            return None
        scope = rt.config.unsubscribe.scope
        campaign_id = message["campaign_id"] if scope == "campaign" else None
        await add_suppression(
            connection, reason="unsubscribed", now=now, npi=message["npi"], campaign_id=campaign_id,
            detail=f"{via} from message {message_id}",
        )
        if message["unsubscribed_at"] is None:
            await connection.execute(update(messages).where(messages.c.id == message_id).values(unsubscribed_at=now))
            await _event(connection, message, "unsubscribe", now, detail=via)
            await record_activity(rt, connection, message, "unsubscribed", now, {"to": message["to_address"], "scope": scope})
        where = messages.c.npi == message["npi"]
        if campaign_id:
            where = and_(where, messages.c.campaign_id == campaign_id)
        await _cancel_resends(connection, where, "HCP unsubscribed")
    TRACKING.labels("unsubscribe").inc()
    return {"npi": message["npi"], "scope": scope, "campaign_id": campaign_id}


async def record_bounce(
    rt: Runtime, *, kind: str, message_id: str | None, address: str | None, detail: str
) -> str:
    """Apply an asynchronous bounce or complaint; returns what was done."""
    now = rt.clock.now()
    async with rt.db.begin() as connection:
        message = await _message(connection, message_id) if message_id else None
        address = (address or (message or {}).get("to_address") or "").lower() or None
        npi = message["npi"] if message else None
        if npi is None and address:
            npi = (await connection.execute(select(hcp_emails.c.npi).where(hcp_emails.c.address == address))).scalar()
        if npi is None or address is None:
            return "ignored: no message or address of ours"
        context = message or {"id": None, "npi": npi, "to_address": address}
        if kind == "complaint":
            await add_suppression(connection, reason="complained", now=now, npi=npi, detail=detail)
            await _cancel_resends(connection, messages.c.npi == npi, "HCP complained")
            if message:
                await _event(connection, message, "complaint", now, detail=detail)
                await record_activity(rt, connection, message, "unsubscribed", now, {"to": address, "reason": "complaint"})
            return f"complaint: NPI {npi} suppressed"
        if kind == "soft":
            await connection.execute(
                engagement_events.insert().values(
                    message_id=context["id"], npi=npi, address=address, kind="soft_bounce", detail=detail, occurred_at=now
                )
            )
            recent = (
                await connection.execute(
                    select(func.count()).where(
                        engagement_events.c.address == address, engagement_events.c.kind == "soft_bounce",
                        engagement_events.c.occurred_at >= now - SOFT_BOUNCE_WINDOW,
                    )
                )
            ).scalar_one()
            if recent < SOFT_BOUNCES_FOR_HARD:
                return f"soft bounce {recent} of {SOFT_BOUNCES_FOR_HARD} for {address}"
            detail = f"{recent} soft bounces in 7 days; last: {detail}"
        await mark_address(connection, npi, address, "hard_bounced", detail, now)
        if message:
            await connection.execute(
                update(messages).where(messages.c.id == message["id"]).values(bounced_at=now, bounce_reason=detail)
            )
            await _event(connection, message, "hard_bounce", now, detail=detail)
            await record_activity(rt, connection, message, "bounced", now, {"to": address, "reason": detail})
    TRACKING.labels("bounce").inc()
    return f"hard bounce: {address} marked"


async def _email_rules(
    rt: Runtime, connection: AsyncConnection, message: dict[str, Any], on: str, url: str | None, now: datetime
) -> list[tuple[str, dict[str, Any]]]:
    """Email rules that this open/click satisfies, each claimed once (rule_firings)."""
    fired = []
    for index, rule in enumerate(rt.config.triggers):
        if rule.from_ != "email" or rule.on != on or rule.where.get("campaign") not in (None, message["campaign_id"]):
            continue
        if on == "clicked" and "link" in rule.where and not (url and fnmatchcase(url, str(rule.where["link"]))):
            continue
        key = f"rule{index}:{rule.send}:{message['trigger_id']}"
        claimed = await connection.execute(
            insert_ignore(connection, rule_firings, conflict=["rule_key"]).values(rule_key=key, fired_at=now)
        )
        if claimed.rowcount:
            fired.append((key, {"rule": index, "send": rule.send, "message": message, "url": url, "on": on}))
    return fired


async def _fire(rt: Runtime, fired: list[tuple[str, dict[str, Any]]]) -> None:
    for key, info in fired:
        message = info["message"]
        async with rt.db.connect() as connection:
            ref = (
                await connection.execute(select(triggers.c.source_ref).where(triggers.c.id == message["trigger_id"]))
            ).scalar()
        data = {"after": info["on"], "campaign": message["campaign_id"], "message_id": message["id"]}
        if info["url"]:
            data["link"] = info["url"]
        accepted = await accept_trigger(
            rt, npi=message["npi"], campaign_id=info["send"], data=data, source="email", source_ref=ref,
            idempotency_key=f"email:{key}",
        )
        async with rt.db.begin() as connection:
            await connection.execute(update(rule_firings).where(rule_firings.c.rule_key == key).values(trigger_id=accepted.id))
        log.info("email rule %s fired trigger %s", key, accepted.id)


async def no_engagement_step(rt: Runtime) -> int:
    """`{from: email, on: no_engagement, where: {campaign, after}}`: initial emails sent
    `after` ago whose trigger saw no engagement fire the rule once."""
    now = rt.clock.now()
    column = messages.c.clicked_at if rt.config.tracking.engagement == "click" else messages.c.opened_at
    fired: list[tuple[str, dict[str, Any]]] = []
    for index, rule in enumerate(rt.config.triggers):
        if rule.from_ != "email" or rule.on != "no_engagement":
            continue
        after = parse_duration(rule.where["after"])
        engaged = select(messages.c.trigger_id).where(column.is_not(None)).where(messages.c.campaign_id == rule.where["campaign"])
        async with rt.db.begin() as connection:
            candidates = (
                await connection.execute(
                    select(messages)
                    .where(
                        messages.c.campaign_id == rule.where["campaign"], messages.c.kind == "initial",
                        messages.c.status == "sent", messages.c.sent_at <= now - after,
                        messages.c.sent_at >= now - after - timedelta(days=30),
                        messages.c.trigger_id.not_in(engaged),
                    )
                    .limit(500)
                )
            ).mappings().all()
            for message in candidates:
                key = f"rule{index}:{rule.send}:{message['trigger_id']}"
                claimed = await connection.execute(
                    insert_ignore(connection, rule_firings, conflict=["rule_key"]).values(rule_key=key, fired_at=now)
                )
                if claimed.rowcount:
                    fired.append((key, {"rule": index, "send": rule.send, "message": dict(message), "url": None, "on": "no_engagement"}))
    await _fire(rt, fired)
    return len(fired)


def sweep_steps() -> list[SweepStep]:
    return [no_engagement_step]
