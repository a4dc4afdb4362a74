"""Receiving domains: the unit a receiver judges us by.

A `block` (the receiver refuses *us*: IP or domain reputation, authentication, content,
rate) says nothing about the HCP's address, so it never marks it; it says the receiving
system wants less of us for a while. Each block throttles that receiving domain for
`bounces.block_throttle`; `bounces.block_pause_threshold` blocks within
`bounces.block_window` pause it for `bounces.block_pause` and raise an alert (a warning log
line, the `trigger_email_domain_alerts_total` metric, and the deliverability view).

Domains are grouped by mail provider where the address domain says which one it is
(`gmail.com` and `googlemail.com` are one Gmail; `outlook.com`, `hotmail.com`, `live.com`
are one Microsoft): a block from Outlook is about all of Microsoft's consumer domains.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from core.db import engagement_events, messages, receiving_domains, upsert
from core.metrics import DOMAIN_ALERTS, DOMAIN_BLOCKS
from core.runtime import Runtime

log = logging.getLogger(__name__)

PROVIDERS: dict[str, str] = {
    **dict.fromkeys(["gmail.com", "googlemail.com"], "gmail"),
    **dict.fromkeys(
        ["outlook.com", "hotmail.com", "live.com", "msn.com", "hotmail.co.uk", "outlook.fr", "live.co.uk", "passport.com"],
        "microsoft",
    ),
    **dict.fromkeys(["yahoo.com", "ymail.com", "rocketmail.com", "aol.com", "yahoo.co.uk", "verizon.net", "aim.com"], "yahoo"),
    **dict.fromkeys(["icloud.com", "me.com", "mac.com"], "apple"),
}
"""Consumer domains of the big mailbox providers. A practice's own domain hosted by Google
Workspace or Microsoft 365 is its own group: its admins set their own policies."""


def domain_of(address: str | None) -> str | None:
    if not address or "@" not in address:
        return None
    return address.rpartition("@")[2].strip().lower().rstrip(".") or None


def group_of(address_or_domain: str | None) -> str | None:
    """The throttling group of an address or domain: the provider name, else the domain."""
    if not address_or_domain:
        return None
    domain = domain_of(address_or_domain) if "@" in address_or_domain else address_or_domain.lower()
    return PROVIDERS.get(domain or "", domain)


@dataclass(frozen=True)
class Hold:
    """Why sending to a domain waits, and until when."""

    group: str
    until: datetime
    state: str
    """`throttled` or `paused`."""
    reason: str


async def record_block(rt: Runtime, connection: AsyncConnection, address: str, reason: str, detail: str, now: datetime) -> Hold | None:
    """Count one block from the domain of `address`; throttle it, and pause it (with an
    alert) when the blocks within the window reach the threshold."""
    group = group_of(address)
    if group is None:
        return None
    settings = rt.config.bounces
    row = (
        await connection.execute(select(receiving_domains).where(receiving_domains.c.domain == group))
    ).mappings().first()
    fresh = row is None or row["window_started_at"] is None or now - row["window_started_at"] > settings.block_window
    blocks = 1 if fresh else row["blocks"] + 1  # type: ignore[index]
    window_start = now if fresh else row["window_started_at"]  # type: ignore[index]
    throttled_until = now + settings.block_throttle
    paused_until = row["paused_until"] if row is not None else None
    why = f"{reason}: {detail}"[:500]
    alert = blocks >= settings.block_pause_threshold and (paused_until is None or paused_until <= now)
    if blocks >= settings.block_pause_threshold:
        paused_until = max(paused_until or now, now + settings.block_pause)
        why = f"{blocks} blocks in {_span(settings.block_window)}; last {why}"[:500]
    await connection.execute(
        upsert(
            connection, receiving_domains, conflict=["domain"],
            update=["blocks", "window_started_at", "throttled_until", "paused_until", "reason", "updated_at"],
        ),
        [{
            "domain": group, "blocks": blocks, "window_started_at": window_start, "throttled_until": throttled_until,
            "paused_until": paused_until, "reason": why, "updated_at": now,
        }],
    )
    DOMAIN_BLOCKS.labels(group, reason).inc()
    if alert:
        DOMAIN_ALERTS.labels(group).inc()
        log.warning("deliverability alert: sending to %s paused until %s (%s)", group, paused_until.isoformat(), why)
    if paused_until is not None and paused_until > now:
        return Hold(group, paused_until, "paused", why)
    return Hold(group, throttled_until, "throttled", why)


async def hold_for(connection: AsyncConnection, address: str | None, now: datetime) -> Hold | None:
    """The pause on the domain of `address`, if one is running; None otherwise.

    A throttle alone does not hold an email: it spaces the retries of blocked emails (their
    backoff) and is shown in the view; a pause holds every email to that domain."""
    group = group_of(address)
    if group is None:
        return None
    row = (
        await connection.execute(select(receiving_domains).where(receiving_domains.c.domain == group))
    ).mappings().first()
    if row is None or row["paused_until"] is None or row["paused_until"] <= now:
        return None
    return Hold(group, row["paused_until"], "paused", row["reason"] or "")


def _span(duration: Any) -> str:
    seconds = int(duration.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


_EVENT_KINDS = {"hard_bounce": "hard", "soft_bounce": "soft", "block": "block", "complaint": "complaints"}


async def deliverability(rt: Runtime, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Per receiving domain group, between `start` and `end`: emails sent and delivered
    (sent and not bounced), hard and soft bounces, blocks, complaints, and the throttle or
    pause running now with its reason."""
    now = rt.clock.now()
    figures: dict[str, dict[str, Any]] = {}

    def entry(group: str) -> dict[str, Any]:
        return figures.setdefault(group, {
            "domain": group, "sent": 0, "delivered": 0, "hard": 0, "soft": 0, "block": 0, "complaints": 0,
            "state": "ok", "until": None, "reason": None,
        })

    async with rt.db.connect() as connection:
        sent_rows = await connection.execute(
            select(
                messages.c.to_address,
                func.count(),
                func.sum(case((messages.c.bounced_at.is_(None), 1), else_=0)),
            )
            .where(messages.c.sent_at >= start, messages.c.sent_at < end, messages.c.to_address.is_not(None))
            .group_by(messages.c.to_address)
        )
        for address, sent, delivered in sent_rows.all():
            group = group_of(address)
            if group:
                entry(group)["sent"] += sent
                entry(group)["delivered"] += int(delivered or 0)
        event_rows = await connection.execute(
            select(engagement_events.c.address, engagement_events.c.kind, func.count())
            .where(
                engagement_events.c.kind.in_(list(_EVENT_KINDS)),
                engagement_events.c.occurred_at >= start, engagement_events.c.occurred_at < end,
            )
            .group_by(engagement_events.c.address, engagement_events.c.kind)
        )
        for address, kind, count in event_rows.all():
            group = group_of(address)
            if group:
                entry(group)[_EVENT_KINDS[kind]] += count
        holds = await connection.execute(
            select(receiving_domains).where(
                or_(receiving_domains.c.paused_until > now, receiving_domains.c.throttled_until > now,
                    and_(receiving_domains.c.updated_at >= start, receiving_domains.c.updated_at < end))
            )
        )
        for row in holds.mappings().all():
            item = entry(row["domain"])
            if row["paused_until"] is not None and row["paused_until"] > now:
                item.update(state="paused", until=row["paused_until"], reason=row["reason"])
            elif row["throttled_until"] is not None and row["throttled_until"] > now:
                item.update(state="throttled", until=row["throttled_until"], reason=row["reason"])
    return sorted(figures.values(), key=lambda item: (-item["sent"], item["domain"]))


class PausedDomains:
    """The pauses running now, read at most every `refresh` seconds: the send path asks
    for every email, and a pause is minutes to hours long, so a few seconds of staleness
    cost nothing while a SELECT per email would."""

    def __init__(self, refresh: float = 5.0):
        self.refresh = refresh
        self._loaded_at: datetime | None = None
        self._paused: dict[str, Hold] = {}

    async def hold(self, rt: Runtime, address: str | None, now: datetime) -> Hold | None:
        if self._loaded_at is None or (now - self._loaded_at).total_seconds() >= self.refresh or now < self._loaded_at:
            async with rt.db.connect() as connection:
                rows = await connection.execute(
                    select(receiving_domains).where(receiving_domains.c.paused_until > now)
                )
                self._paused = {
                    row["domain"]: Hold(row["domain"], row["paused_until"], "paused", row["reason"] or "")
                    for row in rows.mappings().all()
                }
            self._loaded_at = now
        hold = self._paused.get(group_of(address) or "")
        return hold if hold is not None and hold.until > now else None

    def forget(self) -> None:
        self._loaded_at = None


def paused_domains(rt: Runtime) -> PausedDomains:
    held = rt.extras.get("paused_domains")
    if held is None:
        held = rt.extras["paused_domains"] = PausedDomains()
    return held


class DomainLimiter:
    """Per worker, per receiving domain group: at most `concurrency` SMTP transactions at
    once and `rate` emails a second (a token bucket), from `delivery` in the config. A rate
    answer (421, 4.7.x `rate_limited`) halves that group's rate for `delivery.slow_down`:
    the whole domain slows, not only the message that got the answer.

    In-process by design: the limits are per worker (N workers send N times the rate), the
    way receivers count connections and the way a pool of kept-open connections works."""

    def __init__(self, delivery: Any, *, clock: Any = None):
        import time

        self.delivery = delivery
        self._clock = clock or time.monotonic
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._tokens: dict[str, tuple[float, float]] = {}
        self._slowed: dict[str, tuple[float, float]] = {}
        """group -> (factor, until)"""

    def limit(self, group: str) -> Any:
        return self.delivery.providers.get(group, self.delivery.per_domain)

    def rate(self, group: str) -> float:
        base = float(self.limit(group).rate)
        factor, until = self._slowed.get(group, (1.0, 0.0))
        if until <= self._clock():
            return base
        return max(base * factor, 1 / 60)

    def slow_down(self, group: str) -> float:
        """A rate answer from `group`: halve its rate (again, if already slowed)."""
        factor, until = self._slowed.get(group, (1.0, 0.0))
        now = self._clock()
        factor = factor / 2 if until > now else 0.5
        self._slowed[group] = (factor, now + self.delivery.slow_down.total_seconds())
        log.info("receiving domain %s answered with a rate limit: %.3g emails/s for %s", group, self.rate(group), self.delivery.slow_down)
        return self.rate(group)

    def wait_for(self, group: str) -> float:
        """Seconds until `group` may take one more email (0: now), taking the token if so."""
        rate = self.rate(group)
        now = self._clock()
        burst = max(1.0, rate)
        tokens, then = self._tokens.get(group, (burst, now))
        tokens = min(burst, tokens + (now - then) * rate)
        if tokens >= 1.0:
            self._tokens[group] = (tokens - 1.0, now)
            return 0.0
        self._tokens[group] = (tokens, now)
        return (1.0 - tokens) / rate

    def slot(self, address: str | None) -> "_Slot":
        """Hold one of the group's transaction slots and one of its rate tokens.

        A plain class rather than @asynccontextmanager: the exceptions passing through
        (DeliveryError, a frozen dataclass) must not be touched on the way out."""
        group = group_of(address) or ""
        semaphore = self._slots.get(group)
        if semaphore is None:
            semaphore = self._slots[group] = asyncio.Semaphore(self.limit(group).concurrency)
        return _Slot(self, group, semaphore)


class _Slot:
    def __init__(self, limiter: DomainLimiter, group: str, semaphore: asyncio.Semaphore):
        self.limiter = limiter
        self.group = group
        self.semaphore = semaphore

    async def __aenter__(self) -> str:
        await self.semaphore.acquire()
        try:
            while (delay := self.limiter.wait_for(self.group)) > 0:
                await asyncio.sleep(delay)
        except BaseException:
            self.semaphore.release()
            raise
        return self.group

    async def __aexit__(self, *exc_info: Any) -> None:
        self.semaphore.release()


def limiter_of(rt: Runtime) -> DomainLimiter:
    held = rt.extras.get("domain_limiter")
    if held is None or held.delivery is not rt.config.delivery:
        held = rt.extras["domain_limiter"] = DomainLimiter(rt.config.delivery)
    return held
