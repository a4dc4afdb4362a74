"""The activity outbox: engagement facts waiting to be written to a CRM timeline.

One row per fact (`sent`, first `opened`, `clicked` per link, `bounced`, `unsubscribed`),
written in the same transaction as the fact itself. A pusher drains it in batches through
whatever `ActivitySink` serves that CRM; a row leaves the pending queue only when the CRM
accepted it, and is dead-lettered after too many failures, to be retried by hand.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Mapping, Protocol

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from core.activities import Activity, PushResult
from core.db import crm_pauses, insert_ignore, messages, outbox, triggers
from core.runtime import Runtime

log = logging.getLogger(__name__)


class ActivitySink(Protocol):
    batch_size: int

    async def push_activities(self, batch: list[Activity]) -> list[PushResult]: ...


def destination(rt: Runtime, trigger: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """Which CRM hears about this trigger's emails, and which record they go on."""
    ref = dict(trigger["source_ref"] or {})
    crm = ref.get("crm") or rt.config.crm.writeback
    return crm, ref


@dataclass
class Fact:
    """One engagement fact about one sent message, waiting to become an outbox row."""

    message: Mapping[str, Any]
    kind: str
    details: dict[str, Any] = field(default_factory=dict)
    dedupe: str | None = None
    """Tells apart facts of one kind on one message that are each worth a row (the link of a click)."""

    @property
    def key(self) -> str:
        return f"{self.message['id']}:{self.kind}" + (f":{self.dedupe}" if self.dedupe else "")


async def record_activity(
    rt: Runtime,
    connection: AsyncConnection,
    message: Mapping[str, Any],
    kind: str,
    now: datetime,
    details: dict[str, Any] | None = None,
    *,
    dedupe: str | None = None,
) -> bool:
    """Queue one activity for the CRM the trigger came from; a repeat of the same fact is ignored."""
    return bool(await record_activities(rt, connection, [Fact(message, kind, details or {}, dedupe)], now))


async def record_activities(rt: Runtime, connection: AsyncConnection, facts: list[Fact], now: datetime) -> int:
    """Queue many facts in two statements (the tracking routes write opens and clicks in
    batches); returns how many rows were new."""
    # A message row read with its trigger's `source_ref` (the send path) saves the query.
    refs = {fact.message["trigger_id"]: fact.message["source_ref"] for fact in facts if "source_ref" in fact.message}
    missing = {fact.message["trigger_id"] for fact in facts} - set(refs)
    if missing:
        refs.update(
            (await connection.execute(select(triggers.c.id, triggers.c.source_ref).where(triggers.c.id.in_(missing)))).all()
        )
    if not refs:
        return 0
    rows: dict[str, dict[str, Any]] = {}
    for fact in facts:
        if fact.message["trigger_id"] not in refs:
            continue
        crm, ref = destination(rt, {"source_ref": refs[fact.message["trigger_id"]]})
        if crm and fact.key not in rows:
            rows[fact.key] = _outbox_row(fact, crm, ref, now)
    if not rows:
        return 0
    statement = insert_ignore(connection, outbox, conflict=["dedupe_key"])
    if len(rows) == 1:
        result = await connection.execute(statement.values(**next(iter(rows.values()))))
        return result.rowcount or 0
    result = await connection.execute(statement, list(rows.values()))
    return result.rowcount or 0


def _outbox_row(fact: Fact, crm: str, ref: dict[str, Any], now: datetime) -> dict[str, Any]:
    message = fact.message
    return {
        "crm": crm, "kind": fact.kind, "dedupe_key": fact.key, "npi": message["npi"], "campaign_id": message["campaign_id"],
        "message_id": message["id"], "subject": message["subject"] or "", "object_type": ref.get("object_type"),
        "object_id": ref.get("object_id"), "details": fact.details, "occurred_at": now, "status": "pending",
        "attempts": 0, "next_attempt_at": now, "created_at": now,
    }


def backoff(attempts: int) -> timedelta:
    """15 s, 30 s, 1 min, … capped at one hour; a Retry-After longer than that wins."""
    return timedelta(seconds=min(15 * 2 ** max(attempts - 1, 0), 3600))


LEASE = timedelta(minutes=5)
"""A claimed batch is invisible to other pushers this long. It is longer than any CRM call
can last (connectors time out in well under a minute), so a lease only expires when its
pusher died; the next pusher then finds the row `verify`-marked and asks the CRM whether the
earlier call wrote it before creating it again."""

SPLIT_LIMIT = 64
"""Most extra calls one batch may spend isolating an activity that makes the connector raise."""


async def push_outbox(rt: Runtime, sinks: Mapping[str, ActivitySink], *, max_batches: int = 20) -> dict[str, int]:
    """Push due activities; returns counts of pushed / retried / dead rows."""
    counts = {"pushed": 0, "retried": 0, "dead": 0}
    for crm, sink in sinks.items():
        before = dict(counts)
        try:
            await _push_crm(rt, crm, sink, counts, max_batches)
        except Exception:  # noqa: BLE001 - one CRM's trouble must not stop the others
            log.exception("pushing activities to %s failed", crm)
        _log_pushes(crm, {key: counts[key] - before[key] for key in counts})
    return counts


def _log_pushes(crm: str, done: dict[str, int]) -> None:
    if done["pushed"]:
        log.info("%s: %d activit%s pushed", crm, done["pushed"], "y" if done["pushed"] == 1 else "ies")
    if done["dead"]:
        log.warning("%s: %d activit%s dead-lettered (retry from the dashboard's CRM outbox)", crm, done["dead"],
                    "y" if done["dead"] == 1 else "ies")


async def _push_crm(rt: Runtime, crm: str, sink: ActivitySink, counts: dict[str, int], max_batches: int) -> None:
    for _ in range(max_batches):
        batch = await _claim_batch(rt, crm, sink.batch_size)
        if not batch:
            break
        results = await _push_isolating(sink, crm, batch, [SPLIT_LIMIT])
        await _record_results(rt, batch, results, counts)
        wait = max((result.retry_after or 0 for result in results), default=0)
        if wait:
            await pause_crm(rt, crm, rt.clock.now() + timedelta(seconds=wait), reason=_reason(results))
        if _crm_unavailable(results):
            break


async def _push_isolating(sink: ActivitySink, crm: str, batch: list[Activity], budget: list[int]) -> list[PushResult]:
    """`sink.push_activities(batch)`; when the connector raises instead of answering (a bug, a
    record it cannot translate), the batch is halved and each half pushed again, so one poison
    activity fails alone and the others still go."""
    try:
        return await sink.push_activities(batch)
    except Exception as exc:  # noqa: BLE001 - a connector bug must not stall the outbox
        log.exception("push of %d activities to %s failed", len(batch), crm)
        if len(batch) > 1 and budget[0] >= 2:
            budget[0] -= 2
            middle = len(batch) // 2
            first = await _push_isolating(sink, crm, batch[:middle], budget)
            if any(result.retry_after for result in first):
                rest = [PushResult(a.id, ok=False, error="not tried: the CRM asked to wait", retry_after=0.0) for a in batch[middle:]]
                return first + rest
            return first + await _push_isolating(sink, crm, batch[middle:], budget)
        return [PushResult(activity.id, ok=False, error=f"{type(exc).__name__}: {exc}") for activity in batch]


def _reason(results: list[PushResult]) -> str | None:
    return next((result.error for result in results if result.retry_after), None)


async def pause_crm(rt: Runtime, crm: str, until: datetime, *, reason: str | None = None) -> None:
    """Honour a CRM's Retry-After for every push to it, in the database, so each worker's
    pusher waits (activities written after the 429 too), not only the batch that was refused."""
    now = rt.clock.now()
    async with rt.db.begin() as connection:
        extended = await connection.execute(
            update(crm_pauses).where(crm_pauses.c.crm == crm, crm_pauses.c.until < until)
            .values(until=until, reason=reason, updated_at=now)
        )
        if not extended.rowcount:
            await connection.execute(
                insert_ignore(connection, crm_pauses, conflict=["crm"]).values(crm=crm, until=until, reason=reason, updated_at=now)
            )
        # Shown in the outbox listing: the rows due before the pause wait for it.
        await connection.execute(
            update(outbox)
            .where(outbox.c.crm == crm, outbox.c.status == "pending", outbox.c.next_attempt_at < until)
            .values(next_attempt_at=until)
        )


async def paused_until(rt: Runtime, connection: AsyncConnection | None = None) -> dict[str, datetime]:
    """CRMs paused now, and until when."""
    query = select(crm_pauses.c.crm, crm_pauses.c.until).where(crm_pauses.c.until > rt.clock.now())
    if connection is not None:
        return {crm: until for crm, until in (await connection.execute(query)).all()}
    async with rt.db.connect() as own:
        return {crm: until for crm, until in (await own.execute(query)).all()}


def _crm_unavailable(results: list[PushResult]) -> bool:
    """A 429, or a whole batch refused for a retryable reason (5xx, network): the CRM is
    struggling, so its next batches wait for their turn instead of failing one by one."""
    if any(result.retry_after for result in results):
        return True
    return bool(results) and all(not result.ok and not result.permanent for result in results)


async def _claim_batch(rt: Runtime, crm: str, size: int) -> list[Activity]:
    now = rt.clock.now()
    async with rt.db.begin() as connection:
        pause = (
            await connection.execute(select(crm_pauses.c.until).where(crm_pauses.c.crm == crm, crm_pauses.c.until > now))
        ).scalar()
        if pause is not None:
            return []
        due = (
            await connection.execute(
                select(outbox.c.id)
                .where(outbox.c.crm == crm, outbox.c.status == "pending", outbox.c.next_attempt_at <= now)
                .order_by(outbox.c.id)
                .limit(size)
            )
        ).scalars().all()
        if not due:
            return []
        claimed = (
            await connection.execute(
                update(outbox)
                .where(outbox.c.id.in_(due), outbox.c.status == "pending", outbox.c.next_attempt_at <= now)
                .values(next_attempt_at=now + LEASE, claims=outbox.c.claims + 1)
                .returning(outbox.c.id)
            )
        ).scalars().all()
        rows = (
            await connection.execute(
                select(outbox, messages.c.open_count, messages.c.click_count, messages.c.to_address)
                .join(messages, messages.c.id == outbox.c.message_id, isouter=True)
                .where(outbox.c.id.in_(claimed))
                .order_by(outbox.c.id)
            )
        ).mappings().all()
        activities = []
        for row in rows:
            try:
                activities.append(_activity(row))
            except Exception as exc:  # noqa: BLE001 - a row that cannot be read must not block the queue
                log.exception("outbox row %s cannot be read", row["id"])
                await connection.execute(
                    update(outbox).where(outbox.c.id == row["id"])
                    .values(status="dead", last_error=f"unreadable row: {type(exc).__name__}: {exc}")
                )
    return activities


def _activity(row: Mapping[str, Any]) -> Activity:
    details = dict(row["details"] or {})
    details.setdefault("to", row["to_address"])
    if row["kind"] == "opened":
        details["open_count"] = max(row["open_count"] or 0, 1)
    if row["kind"] == "clicked":
        details["click_count"] = row["click_count"] or 0
    return Activity(
        id=row["id"], crm=row["crm"], kind=row["kind"], npi=row["npi"], campaign_id=row["campaign_id"],
        subject=row["subject"], message_id=row["message_id"], occurred_at=row["occurred_at"],
        object_type=row["object_type"], object_id=row["object_id"], details=details,
        key=row["dedupe_key"], claim=row["claims"], verify=row["clean_claims"] < row["claims"] - 1,
        lease_until=row["next_attempt_at"],
    )


async def _record_results(rt: Runtime, batch: list[Activity], results: list[PushResult], counts: dict[str, int]) -> None:
    now = rt.clock.now()
    by_id = {result.activity_id: result for result in results}
    limit = rt.settings.outbox_max_attempts
    async with rt.db.begin() as connection:
        for activity in batch:
            result = by_id.get(activity.id) or PushResult(activity.id, ok=False, error="no result from the connector")
            if result.ok:
                await connection.execute(
                    update(outbox).where(outbox.c.id == activity.id)
                    .values(status="pushed", pushed_at=now, last_error=None)
                )
                counts["pushed"] += 1
                continue
            # A rate limit says nothing is wrong with the row: it waits, but does not
            # spend one of its attempts (a daily limit would otherwise dead-letter it).
            throttled = result.retry_after is not None and not result.permanent
            # Refused or rate-limited: the CRM wrote nothing. Anything else (5xx, a lost
            # answer, a connector error) may have written it, and the next try looks first.
            clean = {"clean_claims": outbox.c.clean_claims + 1} if throttled or result.permanent else {}
            current = (
                await connection.execute(select(outbox.c.attempts, outbox.c.claims, outbox.c.status).where(outbox.c.id == activity.id))
            ).one()
            if current.status != "pending" or (activity.claim and current.claims != activity.claim):
                # Another pusher took the row after this one's lease ran out: its answer decides.
                if clean:
                    await connection.execute(update(outbox).where(outbox.c.id == activity.id).values(**clean))
                continue
            attempts = current.attempts + (0 if throttled else 1)
            if result.permanent or attempts >= limit:
                values: dict[str, Any] = {"status": "dead", "attempts": attempts, "last_error": result.error}
                counts["dead"] += 1
            else:
                wait = timedelta(seconds=result.retry_after or 0) if throttled else backoff(attempts)
                values = {"attempts": attempts, "next_attempt_at": now + wait, "last_error": result.error}
                counts["retried"] += 1
            await connection.execute(update(outbox).where(outbox.c.id == activity.id).values(**values, **clean))


async def list_outbox(rt: Runtime, *, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    query = select(outbox).order_by(outbox.c.id.desc()).limit(limit)
    if status:
        query = query.where(outbox.c.status == status)
    async with rt.db.connect() as connection:
        rows = (await connection.execute(query)).mappings().all()
    return [dict(row) for row in rows]


async def retry_dead(rt: Runtime, ids: list[int] | None = None) -> int:
    """Give dead rows (those in `ids`, or all when None) a fresh set of attempts."""
    statement = update(outbox).where(outbox.c.status == "dead")
    if ids is not None:
        statement = statement.where(outbox.c.id.in_(ids))
    async with rt.db.begin() as connection:
        result = await connection.execute(statement.values(status="pending", attempts=0, next_attempt_at=rt.clock.now()))
    return result.rowcount or 0


async def outbox_counts(rt: Runtime) -> dict[str, int]:
    async with rt.db.connect() as connection:
        rows = await connection.execute(select(outbox.c.status, func.count()).group_by(outbox.c.status))
        return {status: count for status, count in rows}
