"""What HCPs do with their emails: opens, clicks, unsubscribes, bounces, complaints.

Each fact is recorded on the message, as an engagement event, and (the first open, each
clicked link, a bounce, an unsubscribe) as one outbox activity. Machine opens and clicks
(privacy proxies, security scanners, anything seconds after delivery) are counted apart and
engage nobody. Engagement (an open, or only a click under `tracking.engagement: click`)
cancels the pending resends of that campaign to that HCP; the cooldown then runs from the
open (decisions read `opened_at`). Email engagement rules (`from: email`) turn these facts
into new triggers, once each.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any, Literal

from sqlalchemy import String, and_, bindparam, func, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from config import parse_duration
from core.db import UTCDateTime, engagement_events, insert_ignore, messages, rule_firings, triggers
from core.decisions import pick_address
from core.directory import mark_address
from core.domains import paused_domains, record_block
from core.metrics import BOUNCES, TRACKING
from core.queue import SEND_MESSAGE
from core.outbox import Fact, record_activities, record_activity
from core.runtime import Runtime
from core.scheduler import SweepStep, engagement_column
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


def is_machine(rt: Runtime, user_agent: str | None, sent_at: datetime | None, now: datetime) -> bool:
    """Apple Mail Privacy Protection fetches every pixel through a proxy with a bare user
    agent; security gateways announce themselves; and anything within seconds of delivery is
    a prefetch, not a reader."""
    if _machine_agent((user_agent or "").strip()):
        return True
    return sent_at is not None and now - sent_at < rt.config.tracking.machine_open_window


@lru_cache(maxsize=4096)
def _machine_agent(agent: str) -> bool:
    """Cached: a handful of user agents make most hits, and the pattern is long."""
    return not agent or agent in _APPLE_MPP or bool(_MACHINE_AGENTS.search(agent))


async def _message(connection: AsyncConnection, message_id: str) -> dict[str, Any] | None:
    row = (await connection.execute(select(messages).where(messages.c.id == message_id))).mappings().first()
    return dict(row) if row else None


async def _cancel_resends(connection: AsyncConnection, where: Any, reason: str) -> int:
    result = await connection.execute(
        update(messages).where(messages.c.status == "scheduled", where).values(status="cancelled", error=reason, due_at=None)
    )
    return result.rowcount or 0


def _same_campaign(message: dict[str, Any]) -> Any:
    """Engagement stops every pending follow-up of that campaign to that HCP, not only the
    follow-ups of the email that was opened."""
    return and_(messages.c.npi == message["npi"], messages.c.campaign_id == message["campaign_id"])


async def _event(connection: AsyncConnection, message: dict[str, Any], kind: str, now: datetime, **extra: Any) -> None:
    await connection.execute(
        engagement_events.insert().values(
            message_id=message["id"], npi=message["npi"], address=message["to_address"], kind=kind, occurred_at=now, **extra
        )
    )


async def record_open(rt: Runtime, message_id: str, user_agent: str | None, *, prefetch: bool = False) -> bool:
    """Record a pixel load; False when the message does not exist or was never sent.
    `prefetch`: the request itself says no person is behind it (a HEAD request)."""
    return bool(await _writer(rt).submit(Hit("open", message_id, None, user_agent, prefetch)))


async def record_click(
    rt: Runtime, message_id: str, link_index: int, user_agent: str | None, *, prefetch: bool = False
) -> str | None:
    """Record a click; the original URL of link `link_index` of that message, or None (no redirect)."""
    return await _writer(rt).submit(Hit("click", message_id, link_index, user_agent, prefetch))


@dataclass
class Hit:
    """One pixel load or click, as the tracking route saw it."""

    kind: Literal["open", "click"]
    message_id: str
    link_index: int | None
    user_agent: str | None
    prefetch: bool = False
    future: asyncio.Future[Any] | None = None


class EngagementWriter:
    """Group commit for opens and clicks.

    A busy campaign brings bursts of pixel loads (Apple Mail fetches every pixel right after
    delivery); one transaction per hit would queue them on the database lock (SQLite) or on
    round trips (PostgreSQL). Hits that arrive while a batch is being written go together in
    the next transaction, so a lone hit is written at once and a burst costs a few statements
    per batch.

    When the writer is idle, a request is answered after its hit is committed. While a batch
    is in flight, a hit on an email already known to be sent (its answer, the GIF or the
    link, needs nothing from the database) is answered at once and written with the next
    batch: the mail client does not wait on our database, and a crash can lose at most the
    `max_queued` hits waiting, which no client would resend anyway. Past that, hits wait
    again, so a database that cannot keep up slows the responses instead of growing memory.

    SQLite takes one writer at a time anyway, so one batch is in flight; PostgreSQL gets a few
    at once, on separate pooled connections.
    """

    max_queued = 1000

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.known = SentMessages()
        self._pending: list[Hit] = []
        self._flushes = 0
        self._max_flushes = 1 if rt.db.is_sqlite else 4
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, hit: Hit) -> Any:
        busy = self._flushes > 0 and len(self._pending) < self.max_queued
        known = self.known.get(hit.message_id) if busy else None
        if known is not None:
            answer = _answer(hit, known)
            if answer is not None:
                self._queue(hit)  # the batch in flight picks it up when it is done
            return answer
        hit.future = asyncio.get_running_loop().create_future()
        self._queue(hit, waiting=True)
        return await hit.future

    async def flush(self) -> None:
        """Wait until every hit received so far is written."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _queue(self, hit: Hit, *, waiting: bool = False) -> None:
        """A hit whose request waits gets a batch of its own when a connection is free."""
        self._pending.append(hit)
        if self._flushes == 0 or (waiting and self._flushes < self._max_flushes):
            self._flushes += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                await self._apply(batch)
        finally:
            self._flushes -= 1

    async def _apply(self, batch: list[Hit]) -> None:
        try:
            results, fired = await write_hits(self.rt, batch, self.known)
        except Exception as exc:  # noqa: BLE001 - one bad hit must not fail the others in its batch
            self.known.clear()
            if len(batch) > 1:
                for hit in batch:
                    await self._apply([hit])
                return
            if batch[0].future is None:
                log.exception("engagement hit on %s lost", batch[0].message_id)
            _resolve(batch[0], exception=exc)
            return
        try:
            await _fire(self.rt, fired)
        except Exception:  # noqa: BLE001 - the hit is recorded; a rule that could not fire is logged
            log.exception("email rule failed to fire")
        for hit, result in zip(batch, results):
            _resolve(hit, result=result)


def _answer(hit: Hit, message: dict[str, Any]) -> Any:
    """What the route answers for a hit on a sent email: True (the GIF), or the link's URL
    (None: that email has no such link)."""
    if hit.kind == "open":
        return True
    links = message["links"] or []
    index = hit.link_index
    return str(links[index]) if index is not None and 0 <= index < len(links) else None


def _resolve(hit: Hit, *, result: Any = None, exception: BaseException | None = None) -> None:
    if hit.future is None or hit.future.done():  # the client went away
        return
    if exception is not None:
        hit.future.set_exception(exception)
    else:
        hit.future.set_result(result)


async def flush_engagement(rt: Runtime) -> None:
    """Write the opens and clicks still waiting in this process; call before closing the
    runtime so a graceful shutdown loses none of the hits answered ahead of their batch."""
    held = rt.extras.get("engagement_writer")
    if held is not None and held[0] is asyncio.get_running_loop():
        await held[1].flush()


def _writer(rt: Runtime) -> EngagementWriter:
    """One writer per runtime and event loop (tests and `dev` may run several loops in turn)."""
    loop = asyncio.get_running_loop()
    held = rt.extras.get("engagement_writer")
    if held is None or held[0] is not loop:
        held = rt.extras["engagement_writer"] = (loop, EngagementWriter(rt))
    return held[1]


class SentMessages:
    """What the tracking routes need of sent messages, kept between batches so a repeat open
    costs no SELECT: everything here is fixed once the email left, except the first-open and
    first-click times, which only ever go from empty to set. A copy that is behind another
    process only repeats first-open side effects, and those are idempotent (outbox dedupe
    key, rule_firings, COALESCE)."""

    def __init__(self, size: int = 50_000):
        self.size = size
        self._rows: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def get(self, message_id: str) -> dict[str, Any] | None:
        row = self._rows.get(message_id)
        if row is not None:
            self._rows.move_to_end(message_id)
        return row

    def put(self, row: dict[str, Any]) -> None:
        if row["sent_at"] is None:
            return  # not sent yet: it may be by the next hit
        self._rows[row["id"]] = row
        self._rows.move_to_end(row["id"])
        while len(self._rows) > self.size:
            self._rows.popitem(last=False)

    def clear(self) -> None:
        self._rows.clear()


@dataclass
class _Tally:
    """What a batch of hits changes, gathered in memory and written set-wise."""

    rt: Runtime
    now: datetime
    counts: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    facts: list[Fact] = field(default_factory=list)
    engaged: dict[tuple[str, str], str] = field(default_factory=dict)
    rules: list[tuple[dict[str, Any], str, str | None]] = field(default_factory=list)

    def add(self, hit: Hit, message: dict[str, Any] | None) -> Any:
        """Apply one hit; returns what its route answers with (True / the URL, or None)."""
        if message is None or message["sent_at"] is None:
            return None
        answer = _answer(hit, message)
        if hit.kind == "open":
            self._open(hit, message)
        elif answer is not None:
            self._click(hit, message, hit.link_index or 0, answer)
        return answer

    def _count(self, message: dict[str, Any]) -> dict[str, Any]:
        return self.counts.setdefault(
            message["id"], {"mid": message["id"], "opens": 0, "machine": 0, "clicks": 0, "opened": None, "clicked": None}
        )

    def _event(self, message: dict[str, Any], kind: str, hit: Hit, url: str | None = None) -> None:
        self.events.append({
            "message_id": message["id"], "npi": message["npi"], "address": message["to_address"], "kind": kind,
            "link_index": hit.link_index if hit.kind == "click" else None, "url": url, "user_agent": hit.user_agent,
            "detail": None, "occurred_at": self.now,
        })

    def _open(self, hit: Hit, message: dict[str, Any]) -> None:
        if hit.prefetch or is_machine(self.rt, hit.user_agent, message["sent_at"], self.now):
            self._count(message)["machine"] += 1
            self._event(message, "machine_open", hit)
            return
        self._count(message)["opens"] += 1
        self._event(message, "open", hit)
        self._first_open(message)

    def _first_open(self, message: dict[str, Any]) -> None:
        if message["opened_at"] is not None:
            return
        message["opened_at"] = self._count(message)["opened"] = self.now
        self.facts.append(Fact(message, "opened", {"to": message["to_address"]}))
        if self.rt.config.tracking.engagement == "open":
            self.engaged[(message["npi"], message["campaign_id"])] = "HCP opened an earlier email"
        self.rules.append((message, "opened", None))

    def _click(self, hit: Hit, message: dict[str, Any], index: int, url: str) -> None:
        if hit.prefetch or is_machine(self.rt, hit.user_agent, message["sent_at"], self.now):
            self._event(message, "machine_click", hit, url)
            return
        counts = self._count(message)
        if message["opened_at"] is None:
            counts["opens"] += 1  # a click proves the email was opened, even with images blocked
        self._first_open(message)
        counts["clicks"] += 1
        if message["clicked_at"] is None:
            message["clicked_at"] = counts["clicked"] = self.now
        self._event(message, "click", hit, url)
        self.facts.append(Fact(message, "clicked", {"to": message["to_address"], "link": url}, dedupe=str(index)))
        self.engaged[(message["npi"], message["campaign_id"])] = "HCP clicked an earlier email"
        self.rules.append((message, "clicked", url))


_BUMP = (
    update(messages)
    .where(messages.c.id == bindparam("mid"))
    .values(
        open_count=messages.c.open_count + bindparam("opens"),
        machine_opens=messages.c.machine_opens + bindparam("machine"),
        click_count=messages.c.click_count + bindparam("clicks"),
        opened_at=func.coalesce(messages.c.opened_at, bindparam("opened", type_=UTCDateTime)),
        clicked_at=func.coalesce(messages.c.clicked_at, bindparam("clicked", type_=UTCDateTime)),
    )
)


async def write_hits(
    rt: Runtime, batch: list[Hit], known: SentMessages | None = None
) -> tuple[list[Any], list[tuple[str, dict[str, Any]]]]:
    """Write a batch of hits in one transaction; returns each hit's answer and the email
    rules they fired (to run once committed)."""
    known = known if known is not None else SentMessages()
    tally = _Tally(rt, rt.clock.now())
    async with rt.db.begin() as connection:
        found = await _messages_by_id(connection, {hit.message_id for hit in batch}, known)
        results = [tally.add(hit, found.get(hit.message_id)) for hit in batch]
        if tally.counts:
            # Row locks in one order (PostgreSQL): concurrent batches wait, never deadlock.
            await connection.execute(_BUMP, [tally.counts[key] for key in sorted(tally.counts)])
        if tally.events:
            await connection.execute(engagement_events.insert(), tally.events)
            for kind, count in Counter(event["kind"] for event in tally.events).items():
                TRACKING.labels(kind).inc(count)
        if tally.facts:
            await record_activities(rt, connection, tally.facts, tally.now)
        for reason in set(tally.engaged.values()):
            pairs = [pair for pair, why in tally.engaged.items() if why == reason]
            where = or_(*(and_(messages.c.npi == npi, messages.c.campaign_id == campaign) for npi, campaign in pairs))
            await _cancel_resends(connection, where, reason)
        fired = []
        for message, on, url in tally.rules:
            fired += await _email_rules(rt, connection, message, on, url, tally.now)
    for message in found.values():
        known.put(message)  # committed: the batch's first opens and clicks are now facts
    return results, fired


_SENT_COLUMNS = [
    messages.c.id, messages.c.trigger_id, messages.c.npi, messages.c.campaign_id, messages.c.to_address,
    messages.c.subject, messages.c.sent_at, messages.c.opened_at, messages.c.clicked_at, messages.c.links,
]


async def _messages_by_id(connection: AsyncConnection, ids: set[str], known: SentMessages) -> dict[str, dict[str, Any]]:
    """Copies (the batch may roll back) of the messages hit, from `known` or the database."""
    found: dict[str, dict[str, Any]] = {}
    for message_id in ids:
        row = known.get(message_id)
        if row is not None:
            found[message_id] = dict(row)
    missing = ids - found.keys()
    if missing:
        rows = await connection.execute(select(*_SENT_COLUMNS).where(messages.c.id.in_(missing)))
        found.update((row["id"], dict(row)) for row in rows.mappings())
    return found


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
        # A marketing unsubscribe leaves transactional follow-ups alone.
        blocked = [campaign_id] if campaign_id else [c.id for c in rt.config.campaigns if c.kind == "marketing"]
        await _cancel_resends(
            connection, and_(messages.c.npi == message["npi"], messages.c.campaign_id.in_(blocked)), "HCP unsubscribed"
        )
    TRACKING.labels("unsubscribe").inc()
    return {"npi": message["npi"], "scope": scope, "campaign_id": campaign_id}


async def record_bounce(
    rt: Runtime, *, kind: str, message_id: str | None, address: str | None, detail: str, reason: str = "undefined"
) -> str:
    """Apply an asynchronous bounce, block, complaint or auto-reply about an email we sent;
    returns what was done (docs/deliverability.md has the table).

    The report names the email by its VERP token (`message_id`); without one, only an address
    we actually mailed counts, so mail to the bounce domain cannot mark arbitrary addresses."""
    now = rt.clock.now()
    requeued: str | None = None
    async with rt.db.begin() as connection:
        message = await _reported_message(connection, message_id, address)
        if message is None:
            return "ignored: not about an email we sent"
        if kind == "complaint":
            result = await _complaint(rt, connection, message, detail, now)
        elif kind == "auto_reply":
            await _event(connection, message, "auto_reply", now, detail=detail)
            result = f"auto-reply from {message['to_address']} recorded"
        elif kind == "block":
            result, requeued = await _block(rt, connection, message, reason, detail, now)
        elif kind == "soft":
            result, requeued = await _soft_bounce(rt, connection, message, detail, now)
        else:
            result, requeued = await _hard_bounce(rt, connection, message, detail, now)
    BOUNCES.labels(kind, reason).inc()
    if kind == "block":
        paused_domains(rt).forget()
    TRACKING.labels("complaint" if kind == "complaint" else "bounce").inc()
    if requeued is not None:
        await rt.queue.enqueue(SEND_MESSAGE, requeued, job_id=f"send:{requeued}:bounce:{int(now.timestamp())}")
    return result


async def _reported_message(connection: AsyncConnection, message_id: str | None, address: str | None) -> dict[str, Any] | None:
    """The sent email a report is about: the one its token names, else the latest one we
    sent to the reported address."""
    if message_id:
        message = await _message(connection, message_id)
        if message is not None and message["to_address"]:
            return message
    if not address:
        return None
    row = (
        await connection.execute(
            select(messages)
            .where(messages.c.to_address == address.lower(), messages.c.sent_at.is_not(None))
            .order_by(messages.c.sent_at.desc())
            .limit(1)
        )
    ).mappings().first()
    return dict(row) if row else None


async def _complaint(rt: Runtime, connection: AsyncConnection, message: dict[str, Any], detail: str, now: datetime) -> str:
    """A spam report: never mail this HCP again, whatever the campaign."""
    await add_suppression(connection, reason="complained", now=now, npi=message["npi"], detail=detail)
    await _cancel_resends(connection, messages.c.npi == message["npi"], "HCP complained")
    await _event(connection, message, "complaint", now, detail=detail)
    await record_activity(rt, connection, message, "unsubscribed", now, {"to": message["to_address"], "reason": "complaint"})
    return f"complaint: NPI {message['npi']} suppressed"


async def _soft_bounce(
    rt: Runtime, connection: AsyncConnection, message: dict[str, Any], detail: str, now: datetime
) -> tuple[str, str | None]:
    """A full mailbox or a greylist is temporary, but an address that keeps failing is not:
    `bounces.soft_limit` soft bounces within `bounces.soft_window` count as a hard one."""
    settings = rt.config.bounces
    await _event(connection, message, "soft_bounce", now, detail=detail)
    recent = (
        await connection.execute(
            select(func.count()).where(
                engagement_events.c.address == message["to_address"], engagement_events.c.kind == "soft_bounce",
                engagement_events.c.occurred_at > now - settings.soft_window,
            )
        )
    ).scalar_one()
    if recent < settings.soft_limit:
        return f"soft bounce {recent} of {settings.soft_limit} for {message['to_address']}", None
    window = _span(settings.soft_window)
    return await _hard_bounce(rt, connection, message, f"{recent} soft bounces in {window}; last: {detail}", now)


def _span(duration: timedelta) -> str:
    seconds = int(duration.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


async def _hard_bounce(
    rt: Runtime, connection: AsyncConnection, message: dict[str, Any], detail: str, now: datetime
) -> tuple[str, str | None]:
    """The address is gone: mark it. The same email goes to the HCP's next address when the
    bounce came within `bounces.reroute_within` of sending; its follow-ups then run from the
    email that reached the HCP. An email that reached nobody gets no follow-up: nobody is
    reminded of an email they never received."""
    address = message["to_address"]
    await mark_address(connection, message["npi"], address, "hard_bounced", detail, now)
    await connection.execute(
        update(messages).where(messages.c.id == message["id"]).values(
            bounced_at=func.coalesce(messages.c.bounced_at, now), bounce_reason=detail
        )
    )
    await _event(connection, message, "hard_bounce", now, detail=detail)
    await record_activity(rt, connection, message, "bounced", now, {"to": address, "reason": detail})
    rerouted = await _reroute_queued(rt, connection, message["npi"], address)
    outcome = f"hard bounce: {address} marked"
    if rerouted:
        outcome += f"; {rerouted} queued email(s) moved to the next address"
    requeued: str | None = None
    if message["status"] == "sent":
        requeued, note = await _reroute_sent(rt, connection, message, address, now)
        outcome += f"; {note}"
    return outcome, requeued


async def _reroute_sent(
    rt: Runtime, connection: AsyncConnection, message: dict[str, Any], address: str, now: datetime
) -> tuple[str | None, str]:
    """Send the email that bounced again, the same email, to the HCP's next address; or
    cancel its pending follow-ups when it cannot be."""
    follow_ups = and_(messages.c.trigger_id == message["trigger_id"], messages.c.status == "scheduled")
    campaign = rt.config.campaign(message["campaign_id"])
    following = await pick_address(connection, message["npi"], campaign) if campaign else None
    sent_at = message["sent_at"]
    in_time = sent_at is not None and now - sent_at <= rt.config.bounces.reroute_within
    if message["kind"] == "initial" and in_time and following is not None:
        # The follow-ups are scheduled again when the rerouted email goes out.
        await _cancel_resends(connection, follow_ups, f"{address} bounced; follow-ups restart from the email to {following}")
        await connection.execute(
            update(messages).where(messages.c.id == message["id"], messages.c.status == "sent").values(
                status="queued", to_address=following, due_at=None, sent_at=None, bounced_at=None,
                error=f"{address} bounced ({message.get('bounce_reason') or 'hard'}); now to {following}",
            )
        )
        return message["id"], f"the same email goes to {following}"
    why = (
        "a follow-up is not rerouted: its reader never got the first email" if message["kind"] != "initial"
        else "no deliverable address left" if following is None
        else f"bounce came after {_span(rt.config.bounces.reroute_within)}"
    )
    cancelled = await _cancel_resends(connection, follow_ups, f"the email never reached the HCP ({address} bounced)")
    return None, f"not rerouted ({why})" + (f"; {cancelled} follow-up(s) cancelled" if cancelled else "")


async def _block(
    rt: Runtime, connection: AsyncConnection, message: dict[str, Any], reason: str, detail: str, now: datetime
) -> tuple[str, str | None]:
    """The receiver refused us, not the address: the address stays usable, the receiving
    domain is throttled (or paused, with an alert), and the email is tried again later
    with backoff, a bounded number of times."""
    await _event(connection, message, "block", now, detail=f"{reason}: {detail}"[:1000])
    hold = await record_block(rt, connection, message["to_address"], reason, detail, now)
    settings = rt.config.bounces
    blocked_before = (
        await connection.execute(
            select(func.count()).where(engagement_events.c.message_id == message["id"], engagement_events.c.kind == "block")
        )
    ).scalar_one()
    outcome = f"block ({reason}) from {hold.group if hold else message['to_address']}: address kept"
    if message["status"] != "sent":
        return outcome, None
    if blocked_before > settings.block_retries:
        await connection.execute(
            update(messages).where(messages.c.id == message["id"]).values(
                bounced_at=func.coalesce(messages.c.bounced_at, now), bounce_reason=f"blocked: {detail}"[:1000]
            )
        )
        return outcome + f"; given up after {blocked_before} blocks", None
    await _cancel_resends(
        connection, and_(messages.c.trigger_id == message["trigger_id"], messages.c.status == "scheduled"),
        "the email was blocked; follow-ups restart when it is delivered",
    )
    due = now + settings.block_retry_after * (2 ** (blocked_before - 1))
    if hold is not None and hold.until > due:
        due = hold.until
    await connection.execute(
        update(messages).where(messages.c.id == message["id"], messages.c.status == "sent").values(
            status="queued", due_at=due, error=f"blocked ({reason}): {detail}"[:1000]
        )
    )
    return outcome + f"; retry at {due.isoformat()}", None


async def _reroute_queued(rt: Runtime, connection: AsyncConnection, npi: str, address: str) -> int:
    """Emails already queued for the bounced address (a resend waiting for an SMTP retry) go
    to the HCP's next deliverable address; scheduled resends pick their address when due."""
    queued = (
        await connection.execute(
            select(messages.c.id, messages.c.campaign_id, messages.c.kind).where(
                messages.c.npi == npi, messages.c.to_address == address, messages.c.status == "queued"
            )
        )
    ).all()
    moved = 0
    for message_id, campaign_id, kind in queued:
        campaign = rt.config.campaign(campaign_id)
        following = await pick_address(connection, npi, campaign) if campaign else None
        if following is not None:
            values: dict[str, Any] = {"to_address": following, "error": f"{address} bounced; now to {following}"}
        elif kind == "resend":
            values = {"status": "cancelled", "error": "no deliverable address left", "due_at": None}
        else:
            continue
        result = await connection.execute(
            update(messages).where(messages.c.id == message_id, messages.c.status == "queued").values(**values)
        )
        moved += result.rowcount or 0
    return moved


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
    sibling = messages.alias("sibling")
    column = engagement_column(rt.config, sibling)
    engaged = select(sibling.c.id).where(sibling.c.trigger_id == messages.c.trigger_id, column.is_not(None)).exists()
    fired: list[tuple[str, dict[str, Any]]] = []
    for index, rule in enumerate(rt.config.triggers):
        if rule.from_ != "email" or rule.on != "no_engagement":
            continue
        after = parse_duration(rule.where["after"])
        prefix = f"rule{index}:{rule.send}:"
        # Triggers this rule already fired for are left out in SQL: otherwise the same first
        # 500 candidates would come back on every sweep and starve the newer ones.
        fired_before = select(rule_firings.c.rule_key).where(
            rule_firings.c.rule_key == literal(prefix, String) + messages.c.trigger_id
        ).exists()
        async with rt.db.begin() as connection:
            candidates = (
                await connection.execute(
                    select(messages)
                    .where(
                        messages.c.campaign_id == rule.where["campaign"], messages.c.kind == "initial",
                        messages.c.status == "sent", messages.c.sent_at <= now - after,
                        messages.c.sent_at >= now - after - timedelta(days=30),
                        ~engaged,
                        ~fired_before,
                    )
                    .order_by(messages.c.sent_at)
                    .limit(500)
                )
            ).mappings().all()
            for message in candidates:
                key = f"{prefix}{message['trigger_id']}"
                claimed = await connection.execute(
                    insert_ignore(connection, rule_firings, conflict=["rule_key"]).values(rule_key=key, fired_at=now)
                )
                if claimed.rowcount:
                    fired.append((key, {"rule": index, "send": rule.send, "message": dict(message), "url": None, "on": "no_engagement"}))
    await _fire(rt, fired)
    return len(fired)


def sweep_steps() -> list[SweepStep]:
    return [no_engagement_step]
