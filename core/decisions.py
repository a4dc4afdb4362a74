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
from functools import lru_cache
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from jinja2 import TemplateError
from sqlalchemy import and_, bindparam, case, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from config import Campaign, Config, format_duration
from core.campaigns import is_paused
from core.clock import iso
from core.db import hcp_emails, hcps, messages, new_id, triggers
from core.directory import SOURCE_PRIORITY
from core.errors import describe_error
from core.npi import npi_problem
from core.metrics import TRIGGERS
from core.queue import SEND_MESSAGE
from core.quiet_hours import hold_reason, quiet_until
from core.render import render_campaign
from core.variants import pick_variant, winners_of
from core.runtime import Runtime
from core.suppression import suppression_check

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


@lru_cache(maxsize=32)
def _history_statement(uncapped: tuple[str, ...]) -> Any:
    """Built once per set of uncapped campaigns: building a statement costs more Python than
    running it, on the hottest path of the worker."""
    moment = func.coalesce(messages.c.sent_at, messages.c.created_at)
    mine = messages.c.campaign_id == bindparam("campaign_id")
    capped = moment >= bindparam("since", type_=messages.c.created_at.type)
    if uncapped:
        capped = and_(capped, messages.c.campaign_id.not_in(uncapped))
    # An initial email held for quiet hours counts as sent: a second trigger in the window
    # must not queue a second email.
    held = and_(messages.c.status == "scheduled", messages.c.kind == "initial")
    return select(
        func.max(case((mine, moment))),
        func.max(case((mine, messages.c.opened_at))),
        func.count(case((capped, 1))),
    ).where(messages.c.npi == bindparam("npi"), or_(messages.c.status.in_(ACTIVE), held))


async def contact_history(
    connection: AsyncConnection, config: Config, npi: str, campaign_id: str, since: datetime
) -> tuple[datetime | None, int]:
    """One query over this HCP's emails: when this campaign last reached them (sent or
    opened, whichever is later) and how many capped (marketing) emails went out since `since`."""
    uncapped = tuple(c.id for c in config.campaigns if c.kind == "transactional")
    row = await connection.execute(
        _history_statement(uncapped), {"npi": npi, "campaign_id": campaign_id, "since": since}
    )
    last_sent, last_open, recent = row.one()
    moments = [value for value in (last_sent, last_open) if value is not None]
    return (max(moments) if moments else None), int(recent or 0)


_ADDRESS_BOOK = select(
    hcp_emails.c.address, hcp_emails.c.status, hcp_emails.c.source, hcp_emails.c.rank, hcp_emails.c.id
).where(hcp_emails.c.npi == bindparam("npi"))
_CLAIM_TRIGGER = (
    update(triggers)
    .where(
        triggers.c.id == bindparam("trigger_id"), triggers.c.status == "pending",
        triggers.c.due_at.is_(None) | (triggers.c.due_at <= bindparam("now")),
    )
    .values(decided_at=bindparam("now"))
    .returning(*triggers.c)
)
_LOCK_HCP = (
    update(hcps).where(hcps.c.npi == bindparam("lock_npi")).values(send_seq=hcps.c.send_seq + 1).returning(*hcps.c)
)
_SET_OUTCOME = update(triggers).where(triggers.c.id == bindparam("trigger_id")).values(
    status=bindparam("outcome"), reason=bindparam("why"), trail=bindparam("trail", type_=triggers.c.trail.type)
)

CHECKS = ("npi_valid", "campaign", "paused", "hcp_known", "audience", "suppression", "cooldown", "frequency_cap", "address")
"""The decision trail's checks, in the order they run."""


def _step(trail: list[dict[str, Any]], check: str, ok: bool, detail: str, **facts: Any) -> None:
    """One check of the decision trail: its name, passed or not, in words, and the facts
    behind it (times as ISO strings)."""
    entry: dict[str, Any] = {"check": check, "result": "pass" if ok else "fail", "detail": detail}
    for key, value in facts.items():
        entry[key] = iso(value) if isinstance(value, datetime) else value
    trail.append(entry)


async def address_book(connection: AsyncConnection, npi: str) -> list[dict[str, Any]]:
    """All of the HCP's addresses, best first: directory before other sources, then rank."""
    rows = await connection.execute(_ADDRESS_BOOK, {"npi": npi})
    book = [dict(row) for row in rows.mappings()]
    book.sort(key=lambda entry: (SOURCE_PRIORITY.get(entry["source"], 10), entry["rank"], entry["id"]))
    return book


def first_deliverable(book: list[dict[str, Any]], blocked: set[str]) -> str | None:
    for entry in book:
        if entry["status"] == "ok" and entry["address"] not in blocked:
            return str(entry["address"])
    return None


async def pick_address(connection: AsyncConnection, npi: str, campaign: Campaign) -> str | None:
    _reason, blocked = await suppression_check(connection, npi, campaign)
    return first_deliverable(await address_book(connection, npi), blocked)


async def decide(rt: Runtime, trigger_id: str, *, send_now: bool = False) -> Decision | None:
    """Decide a pending trigger; None when it was already decided (a duplicate job) or not due.

    The message is created `queued`; it is claimed (`sending`) only once a worker holds an
    SMTP connection for it. With `send_now` the caller sends it in the same job: the row
    carries a lease (`claimed_until`) so the sweep does not enqueue it again while this
    worker waits for a connection; a worker that dies lets the lease run out. Otherwise a
    send job is enqueued."""
    try:
        async with rt.db.begin() as connection:
            now = rt.clock.now()
            trigger = (await connection.execute(_CLAIM_TRIGGER, {"trigger_id": trigger_id, "now": now})).mappings().first()
            if trigger is None:
                return None
            lease_until = now + timedelta(seconds=rt.settings.claim_lease) if send_now else None
            trail: list[dict[str, Any]] = []
            decision = await _decide(connection, rt.config, trigger, now, lease_until=lease_until, trail=trail, rt=rt)
            await connection.execute(
                _SET_OUTCOME, {"trigger_id": trigger_id, "outcome": decision.status, "why": decision.reason, "trail": trail}
            )
    except Exception as exc:  # noqa: BLE001 - a poison trigger is retried a bounded number of times, then failed
        log.exception("trigger %s: the decision raised", trigger_id)
        return await decision_failed(rt, trigger_id, describe_error(exc))
    if decision.message_id and not send_now and decision.status == "queued":
        await rt.queue.enqueue(SEND_MESSAGE, decision.message_id, job_id=f"send:{decision.message_id}:0")
    TRIGGERS.labels(decision.status).inc()
    log.info("trigger %s → %s (%s)", trigger_id, decision.status, decision.reason)
    return decision


async def decision_failed(rt: Runtime, trigger_id: str, error: str) -> Decision | None:
    """Record an unexpected error of a decision (rolled back): the trigger stays `pending`
    and is due again after a backoff (30 s, 1 min, 2 min, …); after `trigger_max_attempts`
    it ends `failed` with the error as its reason. None while it will be retried."""
    now = rt.clock.now()
    async with rt.db.begin() as connection:
        row = (
            await connection.execute(
                update(triggers)
                .where(triggers.c.id == trigger_id, triggers.c.status == "pending")
                .values(attempts=triggers.c.attempts + 1)
                .returning(triggers.c.attempts)
            )
        ).first()
        if row is None:
            return None
        attempts = row[0]
        if attempts >= rt.settings.trigger_max_attempts:
            reason = f"after {attempts} attempt(s): {error}"
            await connection.execute(
                update(triggers).where(triggers.c.id == trigger_id)
                .values(status="failed", reason=reason, decided_at=now, due_at=None)
            )
            TRIGGERS.labels("failed").inc()
            log.warning("trigger %s failed: %s", trigger_id, reason)
            return Decision("failed", reason)
        due = now + timedelta(seconds=min(30 * 2 ** (attempts - 1), 3600))
        await connection.execute(
            update(triggers).where(triggers.c.id == trigger_id)
            .values(due_at=due, reason=f"attempt {attempts} failed: {error}; next at {due:%Y-%m-%d %H:%M:%S} UTC")
        )
    return None


async def _decide(
    connection: AsyncConnection, config: Config, trigger: Any, now: datetime, *, lease_until: datetime | None = None,
    trail: list[dict[str, Any]] | None = None,
    rt: Runtime | None = None,
) -> Decision:
    """Run the checks in order; each one, passed or failed, is appended to `trail`."""
    trail = [] if trail is None else trail
    npi = trigger["npi"]
    problem = npi_problem(npi)
    if problem:
        _step(trail, "npi_valid", False, problem, npi=npi)
        return Decision("invalid_npi", problem)
    _step(trail, "npi_valid", True, f"NPI {npi} is well formed and its check digit is right")
    campaign = config.campaign(trigger["campaign_id"])
    if campaign is None:
        _step(trail, "campaign", False, f"no campaign {trigger['campaign_id']!r} in the config")
        return Decision("unknown_campaign", f"no campaign {trigger['campaign_id']!r} in the config")
    _step(trail, "campaign", True, f"campaign {campaign.id} ({campaign.kind}) is in the config")
    if await is_paused(connection, campaign):
        _step(trail, "paused", False, f"campaign {campaign.id} is paused")
        return Decision("campaign_paused", f"campaign {campaign.id} is paused")
    _step(trail, "paused", True, f"campaign {campaign.id} is live")
    # The HCP row lock: from here on, decisions for this NPI are serialised.
    hcp = (await connection.execute(_LOCK_HCP, {"lock_npi": npi})).mappings().first()
    if hcp is None:
        _step(trail, "hcp_known", False, f"NPI {npi} is not in the HCP directory")
        return Decision("unknown_hcp", f"NPI {npi} is not in the HCP directory")
    hcp = dict(hcp)
    _step(
        trail, "hcp_known", True,
        f"{hcp['first_name']} {hcp['last_name']} {hcp['credential']}".strip() + f", {hcp['specialty'] or 'no specialty'}, {hcp['state'] or 'no state'}",
    )
    problem = audience_problem(campaign, hcp)
    if problem:
        _step(trail, "audience", False, problem)
        return Decision("not_in_audience", problem)
    audience = campaign.audience.model_dump(exclude_none=True)
    _step(trail, "audience", True, "in the audience" + (f" ({_in_words(audience)})" if audience else " (the campaign has no audience limits)"))
    reason, blocked = await suppression_check(connection, npi, campaign)
    if reason:
        _step(trail, "suppression", False, reason)
        return Decision("suppressed", reason)
    book = await address_book(connection, npi)
    bounced = sum(1 for entry in book if entry["status"] == "hard_bounced")
    if book and bounced and not any(entry["status"] == "ok" for entry in book):
        _step(trail, "suppression", False, f"all {bounced} address(es) of NPI {npi} hard-bounced")
        return Decision("suppressed", f"all {bounced} address(es) of NPI {npi} hard-bounced")
    _step(
        trail, "suppression", True,
        "not suppressed" + (f"; {len(blocked)} address(es) on the suppression list are skipped" if blocked else ""),
    )
    cap = config.limits.per_hcp
    since = now - cap.per if cap is not None else now
    last, recent = await contact_history(connection, config, npi, campaign.id, since)
    if last is not None and last + campaign.cooldown > now:
        until = last + campaign.cooldown
        why = (
            f"{campaign.id} reached NPI {npi} on {last:%Y-%m-%d %H:%M} UTC; cooldown "
            f"{format_duration(campaign.cooldown)} runs until {until:%Y-%m-%d %H:%M} UTC"
        )
        _step(trail, "cooldown", False, why, last_contact=last, until=until, cooldown=format_duration(campaign.cooldown))
        return Decision("cooldown", why)
    _step(
        trail, "cooldown", True,
        (f"last contact {last:%Y-%m-%d %H:%M} UTC; the {format_duration(campaign.cooldown)} cooldown ended "
         f"{last + campaign.cooldown:%Y-%m-%d %H:%M} UTC") if last else f"no earlier email of {campaign.id} to this HCP",
        last_contact=last, until=(last + campaign.cooldown) if last else None, cooldown=format_duration(campaign.cooldown),
    )
    if cap is not None and campaign.kind == "marketing" and recent >= cap.max:
        why = f"NPI {npi} already got {recent} emails in the last {format_duration(cap.per)} (cap {cap.max})"
        _step(trail, "frequency_cap", False, why, count=recent, max=cap.max, per=format_duration(cap.per))
        return Decision("frequency_cap", why)
    if cap is None:
        _step(trail, "frequency_cap", True, "no frequency cap configured", count=recent)
    elif campaign.kind != "marketing":
        _step(trail, "frequency_cap", True, f"{campaign.kind} emails are not capped", count=recent)
    else:
        _step(
            trail, "frequency_cap", True, f"{recent} of {cap.max} emails in the last {format_duration(cap.per)}",
            count=recent, max=cap.max, per=format_duration(cap.per),
        )
    usable = {entry["address"] for entry in book if entry["status"] == "ok"}
    if usable and usable <= blocked:
        _step(trail, "address", False, f"every address of NPI {npi} is on the suppression list")
        return Decision("suppressed", f"every address of NPI {npi} is on the suppression list")
    address = first_deliverable(book, blocked)
    if address is None:
        _step(trail, "address", False, f"NPI {npi} has no deliverable address", candidates=_candidates(book, blocked))
        return Decision("no_deliverable_email", f"NPI {npi} has no deliverable address")
    chosen = next(entry for entry in book if entry["address"] == address)
    passed_over = [f"{entry['address']} ({'suppressed' if entry['address'] in blocked else entry['status']})"
                   for entry in book[: book.index(chosen)]]
    _step(
        trail, "address", True,
        f"{address}: the best deliverable address ({chosen['source']}, rank {chosen['rank']})"
        + (f"; passed over {', '.join(passed_over)}" if passed_over else "")
        + (f"; {len(book) - 1} other address(es) on file" if len(book) > 1 and not passed_over else ""),
        address=address, candidates=_candidates(book, blocked),
    )
    data = trigger["data"] or {}
    if campaign.require_attachments and not campaign.files and not data.get("attachments"):
        why = "require_attachments: the campaign has no attachments and the trigger's data.attachments is empty"
        _step(trail, "attachments", False, why)
        return Decision("failed", why)
    variant = None
    if campaign.subjects:
        winner = await winners_of(rt).winner(connection, campaign) if rt is not None and campaign.ab else None
        variant = pick_variant(campaign, npi, winner)
        _step(trail, "subject_variant", True, f"A/B variant {variant}" + (" (the decided winner)" if winner is not None else ""),
              variant=variant)
    try:
        rendered = render_campaign(campaign, hcp, data, variant=variant)
    except TemplateError as exc:
        trail.append({"check": "render", "result": "fail", "detail": f"template error: {exc}"})
        return Decision("failed", f"template error: {exc}")
    window = campaign.quiet(config.limits.quiet_hours)
    until = quiet_until(window, hcp, now) if window is not None else None
    row: dict[str, Any] = {
        "id": new_id("msg"), "trigger_id": trigger["id"], "npi": npi, "campaign_id": campaign.id, "kind": "initial",
        "seq": 0, "to_address": address, "subject": rendered.subject, "html": rendered.html,
        "status": "queued", "attempts": 0, "claimed_until": lease_until, "created_at": now,
        "campaign_version": campaign.version, "variant": variant,
    }
    if until is not None:
        reason = hold_reason(window, hcp, until)  # type: ignore[arg-type]
        trail.append({"check": "quiet_hours", "result": "hold", "detail": reason, "until": iso(until)})
        row.update(status="scheduled", claimed_until=None, due_at=until, error=reason)
        await connection.execute(messages.insert(), row)
        return Decision("scheduled", reason, row["id"])
    await connection.execute(messages.insert(), row)
    return Decision("queued", f"queued to {address}", row["id"])


def _in_words(audience: dict[str, Any]) -> str:
    return "; ".join(f"{key}: {', '.join(map(str, value)) if isinstance(value, list) else value}" for key, value in audience.items())


def _candidates(book: list[dict[str, Any]], blocked: set[str]) -> list[dict[str, Any]]:
    return [
        {"address": entry["address"], "source": entry["source"], "rank": entry["rank"],
         "status": "suppressed" if entry["address"] in blocked and entry["status"] == "ok" else entry["status"]}
        for entry in book
    ]
