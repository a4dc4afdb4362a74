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
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from jinja2 import TemplateError
from sqlalchemy import and_, bindparam, case, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from config import Campaign, Config, format_duration
from core.campaigns import paused_as_stored, stored_pause
from core.clock import iso
from core.db import hcp_emails, hcps, member_of, messages, new_id, one_of, triggers
from core.directory import SOURCE_PRIORITY
from core.errors import describe_error
from core.npi import npi_problem
from core.metrics import TRIGGERS
from core.queue import SEND_MESSAGE
from core.quiet_hours import hold_reason, quiet_until
from core.render import render_campaign
from core.variants import pick_variant, winners_of
from core.runtime import Runtime
from core.group_commit import GroupCommit
from core.suppression import judge, suppression_check, suppression_rows

log = logging.getLogger(__name__)

ACTIVE = ("queued", "sending", "sent", "unknown")
"""Message states that count as 'an email went (or may have gone) out'."""


@dataclass(frozen=True)
class Decision:
    status: str
    reason: str
    message_id: str | None = None
    claimed: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    """The message row, already claimed (`sending`), when the decision was asked to claim it."""


def audience_problem(campaign: Campaign, hcp: dict[str, Any]) -> str | None:
    audience = campaign.audience
    if audience.specialties is not None and hcp["specialty"] not in audience.specialties:
        return f"specialty {hcp['specialty'] or '(none)'!r} is not in the audience of {campaign.id}"
    if audience.states is not None and hcp["state"] not in audience.states:
        return f"state {hcp['state'] or '(none)'!r} is not in the audience of {campaign.id}"
    return None


_CLAIM_TRIGGERS = (
    update(triggers)
    .where(
        member_of(triggers.c.id, "trigger_ids"), triggers.c.status == "pending",
        triggers.c.due_at.is_(None) | (triggers.c.due_at <= bindparam("now")),
    )
    .values(decided_at=bindparam("now"))
    .returning(*triggers.c, stored_pause(triggers.c.campaign_id).label("campaign_paused"))
)
_LOCK_HCPS = (
    update(hcps)
    .where(member_of(hcps.c.npi, "npis"))
    .values(send_seq=hcps.c.send_seq + 1)
    .returning(*hcps.c)
)
"""The HCP row locks of a batch in one statement. PostgreSQL takes them in index order (the
NPIs sorted), so two workers locking overlapping batches queue instead of deadlocking."""
_ADDRESS_BOOKS = select(
    hcp_emails.c.npi, hcp_emails.c.address, hcp_emails.c.status, hcp_emails.c.source, hcp_emails.c.rank, hcp_emails.c.id
).where(member_of(hcp_emails.c.npi, "npis"))
_INSERT_CLAIMED = messages.insert().returning(*messages.c)
_SET_OUTCOME = update(triggers).where(triggers.c.id == bindparam("trigger_id")).values(
    status=bindparam("outcome"), reason=bindparam("why"), trail=bindparam("trail", type_=triggers.c.trail.type)
)


@lru_cache(maxsize=32)
def _histories_statement(uncapped: tuple[str, ...]) -> Any:
    """Per HCP of a batch and per campaign: the last email (sent or held), the last open,
    and how many capped emails since `since`."""
    moment = func.coalesce(messages.c.sent_at, messages.c.created_at)
    capped = moment >= bindparam("since", type_=messages.c.created_at.type)
    if uncapped:
        capped = and_(capped, one_of(messages.c.campaign_id, uncapped, negate=True))
    # An initial email held for quiet hours counts as sent: a second trigger in the window
    # must not queue a second email.
    held = and_(messages.c.status == "scheduled", messages.c.kind == "initial")
    return (
        select(messages.c.npi, messages.c.campaign_id, func.max(moment), func.max(messages.c.opened_at), func.count(case((capped, 1))))
        .where(member_of(messages.c.npi, "npis"), or_(one_of(messages.c.status, ACTIVE), held))
        .group_by(messages.c.npi, messages.c.campaign_id)
    )


@dataclass
class Facts:
    """What the checks read about the HCPs of a batch, fetched in a few set-based statements."""

    hcps: dict[str, dict[str, Any]] = field(default_factory=dict)
    suppressions: dict[str, list[Any]] = field(default_factory=dict)
    books: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    history: dict[str, dict[str, tuple[datetime | None, datetime | None, int]]] = field(default_factory=dict)

    def contact(self, config: Config, npi: str, campaign_id: str) -> tuple[datetime | None, int]:
        """When `campaign_id` last reached the HCP (sent or opened, whichever is later), and how
        many capped (marketing) emails went out to them in the window."""
        uncapped = {c.id for c in config.campaigns if c.kind == "transactional"}
        per_campaign = self.history.get(npi, {})
        last_sent, last_open, _ = per_campaign.get(campaign_id, (None, None, 0))
        moments = [value for value in (last_sent, last_open) if value is not None]
        recent = sum(count for campaign, (_s, _o, count) in per_campaign.items() if campaign not in uncapped)
        return (max(moments) if moments else None), recent


async def gather_facts(connection: AsyncConnection, config: Config, npis: list[str], since: datetime) -> Facts:
    """Lock the HCPs' rows, then read their suppressions, addresses and email history."""
    facts = Facts()
    if not npis:
        return facts
    facts.hcps = {row["npi"]: dict(row) for row in (await connection.execute(_LOCK_HCPS, {"npis": npis})).mappings()}
    known = sorted(facts.hcps)
    if not known:
        return facts
    for row in await suppression_rows(connection, known):
        facts.suppressions.setdefault(row[-1], []).append(row[:-1])
    facts.books = await _address_books(connection, known)
    facts.history = await _histories(connection, config, known, since)
    return facts


async def _address_books(connection: AsyncConnection, npis: list[str]) -> dict[str, list[dict[str, Any]]]:
    books: dict[str, list[dict[str, Any]]] = {}
    for row in (await connection.execute(_ADDRESS_BOOKS, {"npis": npis})).mappings():
        entry = dict(row)
        books.setdefault(entry.pop("npi"), []).append(entry)
    for book in books.values():
        book.sort(key=_book_order)
    return books


async def _histories(
    connection: AsyncConnection, config: Config, npis: list[str], since: datetime
) -> dict[str, dict[str, tuple[datetime | None, datetime | None, int]]]:
    uncapped = tuple(c.id for c in config.campaigns if c.kind == "transactional")
    history: dict[str, dict[str, tuple[datetime | None, datetime | None, int]]] = {}
    for npi, campaign_id, last_sent, last_open, count in await connection.execute(
        _histories_statement(uncapped), {"npis": npis, "since": since}
    ):
        history.setdefault(npi, {})[campaign_id] = (last_sent, last_open, int(count or 0))
    return history


async def contact_history(
    connection: AsyncConnection, config: Config, npi: str, campaign_id: str, since: datetime
) -> tuple[datetime | None, int]:
    """One HCP's contact history as a decision reads it (`Facts.contact`), since `since`."""
    return Facts(history=await _histories(connection, config, [npi], since)).contact(config, npi, campaign_id)


def _book_order(entry: dict[str, Any]) -> tuple[int, int, int]:
    return SOURCE_PRIORITY.get(entry["source"], 10), entry["rank"], entry["id"]


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
    return (await _address_books(connection, [npi])).get(npi, [])


def first_deliverable(book: list[dict[str, Any]], blocked: set[str]) -> str | None:
    for entry in book:
        if entry["status"] == "ok" and entry["address"] not in blocked:
            return str(entry["address"])
    return None


async def pick_address(connection: AsyncConnection, npi: str, campaign: Campaign) -> str | None:
    _reason, blocked = await suppression_check(connection, npi, campaign)
    return first_deliverable(await address_book(connection, npi), blocked)


async def decide(rt: Runtime, trigger_id: str, *, claim: bool = False) -> Decision | None:
    """Decide a pending trigger; None when it was already decided (a duplicate job) or not due.

    The message is created `queued` and a send job is enqueued. With `claim`, the caller sends
    the message in the same job: it is created already claimed (`sending`, with a lease the
    caller renews while it waits for an SMTP connection), in the decision's own transaction,
    and comes back in `Decision.claimed`; a worker that dies lets the lease run out and the
    sweep puts the message back.

    The decisions of concurrent jobs are made together (core.group_commit): one transaction
    and a handful of set-based statements for the whole batch."""
    try:
        return await deciders_of(rt).submit((trigger_id, claim))
    except Exception as exc:  # noqa: BLE001 - a poison trigger is retried a bounded number of times, then failed
        log.error("trigger %s: the decision raised: %s", trigger_id, describe_error(exc), exc_info=exc)
        return await decision_failed(rt, trigger_id, describe_error(exc))


def deciders_of(rt: Runtime) -> GroupCommit[tuple[str, bool], Decision | None]:
    batcher = rt.extras.get("deciders")
    if batcher is None:
        batcher = rt.extras["deciders"] = GroupCommit(lambda items: decide_batch(rt, items), name="decisions")
    return batcher


async def decide_batch(rt: Runtime, items: list[tuple[str, bool]]) -> list[Decision | None]:
    """Decide several triggers (id, claim) in one transaction. Triggers of one HCP are
    decided one batch after the other, as the HCP row lock would order them anyway."""
    now = rt.clock.now()
    config = rt.config
    decided: dict[str, Decision | None] = {}
    duplicates: set[int] = set()
    """Positions of a trigger asked for twice in one batch (two jobs for it): only the first
    decides it, the other gets None, as it would after waiting for the first's row lock."""
    later: list[tuple[str, bool]] = []
    async with rt.db.lean() as connection:
        rows = (
            await connection.execute(_CLAIM_TRIGGERS, {"trigger_ids": list({t for t, _ in items}), "now": now})
        ).mappings().all()
        by_id = {row["id"]: row for row in rows}
        chosen: list[tuple[Any, bool]] = []
        npis: set[str] = set()
        for position, (trigger_id, claim) in enumerate(items):
            trigger = by_id.get(trigger_id)
            if trigger_id in decided or any(trigger_id == other for other, _ in later):
                duplicates.add(position)
                continue
            if trigger is None:
                decided[trigger_id] = None
                continue
            if trigger["npi"] in npis:
                later.append((trigger_id, claim))
                continue
            npis.add(trigger["npi"])
            decided[trigger_id] = None
            chosen.append((trigger, claim))
        trails = {trigger["id"]: [] for trigger, _ in chosen}
        outcomes: dict[str, Decision] = {}
        for trigger, _claim in chosen:
            early = _precheck(config, trigger, trails[trigger["id"]])
            if early is not None:
                outcomes[trigger["id"]] = early
        cap = config.limits.per_hcp
        facts = await gather_facts(
            connection, config, sorted({t["npi"] for t, _ in chosen if t["id"] not in outcomes}),
            now - cap.per if cap is not None else now,
        )
        inserts: list[dict[str, Any]] = []
        claimed_inserts: list[dict[str, Any]] = []
        for trigger, claim in chosen:
            if trigger["id"] in outcomes:
                continue
            campaign = config.campaign(trigger["campaign_id"])
            assert campaign is not None  # _precheck
            winner = await winners_of(rt).winner(connection, campaign) if campaign.subjects and campaign.ab else None
            claim_until = now + timedelta(seconds=rt.settings.claim_lease) if claim else None
            decision, row = _decide(config, trigger, campaign, facts, now, trails[trigger["id"]], winner, claim_until)
            outcomes[trigger["id"]] = decision
            if row is not None:
                (claimed_inserts if row["status"] == "sending" else inserts).append(row)
        if inserts:
            await connection.execute(messages.insert(), inserts)
        claimed = {
            row["id"]: dict(row) for row in (await connection.execute(_INSERT_CLAIMED, claimed_inserts)).mappings()
        } if claimed_inserts else {}
        if outcomes:
            await connection.execute(_SET_OUTCOME, [
                {"trigger_id": trigger_id, "outcome": decision.status, "why": decision.reason, "trail": trails[trigger_id]}
                for trigger_id, decision in outcomes.items()
            ])
    for trigger, _claim in chosen:
        decision = outcomes[trigger["id"]]
        if decision.message_id in claimed:
            message = claimed[decision.message_id]
            message["source_ref"] = trigger["source_ref"]
            decision = replace(decision, claimed=message)
        elif decision.message_id and decision.status == "queued":
            await rt.queue.enqueue(SEND_MESSAGE, decision.message_id, job_id=f"send:{decision.message_id}:0")
        decided[trigger["id"]] = decision
        TRIGGERS.labels(decision.status).inc()
        log.info("trigger %s → %s (%s)", trigger["id"], decision.status, decision.reason)
    if later:
        decided.update(zip((trigger_id for trigger_id, _ in later), await decide_batch(rt, later)))
    return [None if position in duplicates else decided[trigger_id] for position, (trigger_id, _) in enumerate(items)]


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


def _precheck(config: Config, trigger: Any, trail: list[dict[str, Any]]) -> Decision | None:
    """The checks that need nothing from the database: the NPI, the campaign, its pause
    (read with the trigger). Each is appended to `trail`; the failed one's decision, or None."""
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
    if paused_as_stored(campaign, trigger["campaign_paused"]):
        _step(trail, "paused", False, f"campaign {campaign.id} is paused")
        return Decision("campaign_paused", f"campaign {campaign.id} is paused")
    _step(trail, "paused", True, f"campaign {campaign.id} is live")
    return None


def _decide(
    config: Config, trigger: Any, campaign: Campaign, facts: Facts, now: datetime, trail: list[dict[str, Any]],
    winner: int | None, claim_until: datetime | None,
) -> tuple[Decision, dict[str, Any] | None]:
    """The checks that read the HCP (`facts`, read under the HCP's row lock), in order, each
    appended to `trail`; the decision and the message row to insert, if any."""
    npi = trigger["npi"]
    hcp = facts.hcps.get(npi)
    if hcp is None:
        _step(trail, "hcp_known", False, f"NPI {npi} is not in the HCP directory")
        return Decision("unknown_hcp", f"NPI {npi} is not in the HCP directory"), None
    hcp = dict(hcp)
    _step(
        trail, "hcp_known", True,
        f"{hcp['first_name']} {hcp['last_name']} {hcp['credential']}".strip() + f", {hcp['specialty'] or 'no specialty'}, {hcp['state'] or 'no state'}",
    )
    problem = audience_problem(campaign, hcp)
    if problem:
        _step(trail, "audience", False, problem)
        return Decision("not_in_audience", problem), None
    _step(trail, "audience", True, _audience_detail(campaign.audience))
    reason, blocked = judge(facts.suppressions.get(npi, []), campaign)
    if reason:
        _step(trail, "suppression", False, reason)
        return Decision("suppressed", reason), None
    book = facts.books.get(npi, [])
    bounced = sum(1 for entry in book if entry["status"] == "hard_bounced")
    if book and bounced and not any(entry["status"] == "ok" for entry in book):
        _step(trail, "suppression", False, f"all {bounced} address(es) of NPI {npi} hard-bounced")
        return Decision("suppressed", f"all {bounced} address(es) of NPI {npi} hard-bounced"), None
    _step(
        trail, "suppression", True,
        "not suppressed" + (f"; {len(blocked)} address(es) on the suppression list are skipped" if blocked else ""),
    )
    cap = config.limits.per_hcp
    last, recent = facts.contact(config, npi, campaign.id)
    if last is not None and last + campaign.cooldown > now:
        until = last + campaign.cooldown
        why = (
            f"{campaign.id} reached NPI {npi} on {last:%Y-%m-%d %H:%M} UTC; cooldown "
            f"{format_duration(campaign.cooldown)} runs until {until:%Y-%m-%d %H:%M} UTC"
        )
        _step(trail, "cooldown", False, why, last_contact=last, until=until, cooldown=format_duration(campaign.cooldown))
        return Decision("cooldown", why), None
    _step(
        trail, "cooldown", True,
        (f"last contact {last:%Y-%m-%d %H:%M} UTC; the {format_duration(campaign.cooldown)} cooldown ended "
         f"{last + campaign.cooldown:%Y-%m-%d %H:%M} UTC") if last else f"no earlier email of {campaign.id} to this HCP",
        last_contact=last, until=(last + campaign.cooldown) if last else None, cooldown=format_duration(campaign.cooldown),
    )
    if cap is not None and campaign.kind == "marketing" and recent >= cap.max:
        why = f"NPI {npi} already got {recent} emails in the last {format_duration(cap.per)} (cap {cap.max})"
        _step(trail, "frequency_cap", False, why, count=recent, max=cap.max, per=format_duration(cap.per))
        return Decision("frequency_cap", why), None
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
        return Decision("suppressed", f"every address of NPI {npi} is on the suppression list"), None
    address = first_deliverable(book, blocked)
    if address is None:
        _step(trail, "address", False, f"NPI {npi} has no deliverable address", candidates=_candidates(book, blocked))
        return Decision("no_deliverable_email", f"NPI {npi} has no deliverable address"), None
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
        return Decision("failed", why), None
    variant = None
    if campaign.subjects:
        variant = pick_variant(campaign, npi, winner)
        _step(trail, "subject_variant", True, f"A/B variant {variant}" + (" (the decided winner)" if winner is not None else ""),
              variant=variant)
    try:
        rendered = render_campaign(campaign, hcp, data, variant=variant)
    except TemplateError as exc:
        trail.append({"check": "render", "result": "fail", "detail": f"template error: {exc}"})
        return Decision("failed", f"template error: {exc}"), None
    window = campaign.quiet(config.limits.quiet_hours)
    until = quiet_until(window, hcp, now) if window is not None else None
    row: dict[str, Any] = {
        "id": new_id("msg"), "trigger_id": trigger["id"], "npi": npi, "campaign_id": campaign.id, "kind": "initial",
        "seq": 0, "to_address": address, "subject": rendered.subject, "html": rendered.html,
        "status": "queued", "attempts": 0, "claim_seq": 0, "claimed_at": None, "claimed_until": None, "due_at": None,
        "error": None, "created_at": now, "campaign_version": campaign.version, "variant": variant,
    }
    if until is not None:
        reason = hold_reason(window, hcp, until)  # type: ignore[arg-type]
        trail.append({"check": "quiet_hours", "result": "hold", "detail": reason, "until": iso(until)})
        row.update(status="scheduled", due_at=until, error=reason)
        return Decision("scheduled", reason, row["id"]), row
    if claim_until is not None:
        row.update(status="sending", attempts=1, claim_seq=1, claimed_at=now, claimed_until=claim_until)
    return Decision("queued", f"queued to {address}", row["id"]), row


_AUDIENCE_DETAILS: dict[int, tuple[Any, str]] = {}


def _audience_detail(audience: Any) -> str:
    """The passed audience check in words, once per audience object (a config's lifetime)."""
    found = _AUDIENCE_DETAILS.get(id(audience))
    if found is not None and found[0] is audience:
        return found[1]
    limits = audience.model_dump(exclude_none=True)
    detail = "in the audience" + (f" ({_in_words(limits)})" if limits else " (the campaign has no audience limits)")
    if len(_AUDIENCE_DETAILS) > 256:
        _AUDIENCE_DETAILS.clear()
    _AUDIENCE_DETAILS[id(audience)] = (audience, detail)
    return detail


def _in_words(audience: dict[str, Any]) -> str:
    return "; ".join(f"{key}: {', '.join(map(str, value)) if isinstance(value, list) else value}" for key, value in audience.items())


def _candidates(book: list[dict[str, Any]], blocked: set[str]) -> list[dict[str, Any]]:
    return [
        {"address": entry["address"], "source": entry["source"], "rank": entry["rank"],
         "status": "suppressed" if entry["address"] in blocked and entry["status"] == "ok" else entry["status"]}
        for entry in book
    ]
