"""Durable storage of inbound CRM events: store first, acknowledge after, process later.

The unique key (source, event_key) is the dedupe: CRMs retry for a day or more, far longer
than any job id lives in Redis.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from core.activities import InboundEvent
from core.db import inbound_events, insert_ignore
from core.queue import PROCESS_INBOUND, PROCESS_INBOUND_BATCH
from core.runtime import Runtime


def _jsonable(event: InboundEvent) -> dict[str, Any]:
    """Shallow on purpose: `dataclasses.asdict` deep-copies every payload, which costs more
    than the insert on a 100-event webhook."""
    data = {item.name: getattr(event, item.name) for item in dataclasses.fields(event)}
    data["occurred_at"] = event.occurred_at.isoformat() if event.occurred_at else None
    return data


def event_from_row(data: dict[str, Any]) -> InboundEvent:
    data = dict(data)
    if data.get("occurred_at"):
        data["occurred_at"] = datetime.fromisoformat(data["occurred_at"])
    return InboundEvent(**data)


async def store_events(rt: Runtime, events: list[InboundEvent]) -> tuple[int, int]:
    """Store `events` in one transaction and enqueue the new ones; returns (new, duplicates)."""
    stored = await store_events_with_ids(rt, events)
    return stored.new, stored.duplicates


@dataclasses.dataclass
class Stored:
    new: int
    duplicates: int
    ids: list[int]
    """The stored event of each incoming event, in order (a duplicate names the first copy)."""


async def store_events_with_ids(rt: Runtime, events: list[InboundEvent]) -> Stored:
    """`store_events`, also telling which stored row each event is; a duplicate is counted on
    the row it repeats, so the console can show that the CRM sent it again."""
    if not events:
        return Stored(0, 0, [])
    now = rt.clock.now()
    rows = [
        {"source": event.source, "event_key": event.event_key, "event": _jsonable(event), "status": "pending", "received_at": now}
        for event in events
    ]
    async with rt.db.begin() as connection:
        result = await connection.execute(
            insert_ignore(connection, inbound_events, conflict=["source", "event_key"]).returning(inbound_events.c.id),
            rows,
        )
        new_ids = [row[0] for row in result.all()] if result.returns_rows else []
        ids = list(new_ids)
        if len(new_ids) < len(events):
            keys = {(event.source, event.event_key) for event in events}
            found = {
                (source, key): event_id
                for event_id, source, key in await connection.execute(
                    select(inbound_events.c.id, inbound_events.c.source, inbound_events.c.event_key).where(
                        inbound_events.c.source.in_({source for source, _ in keys}),
                        inbound_events.c.event_key.in_({key for _, key in keys}),
                    )
                )
            }
            ids = [found.get((event.source, event.event_key), 0) for event in events]
            repeated = sorted(set(ids) - set(new_ids) - {0})
            if repeated:
                await connection.execute(
                    update(inbound_events)
                    .where(inbound_events.c.id.in_(repeated))
                    .values(duplicates=inbound_events.c.duplicates + 1, last_duplicate_at=now)
                )
    if len(new_ids) == 1:
        await rt.queue.enqueue(PROCESS_INBOUND, new_ids[0], job_id=f"inbound:{new_ids[0]}")
    elif new_ids:
        # One job fans the batch out, so a 100-event webhook costs one enqueue, not 100.
        await rt.queue.enqueue(PROCESS_INBOUND_BATCH, new_ids, job_id=f"inbound-batch:{new_ids[0]}")
    return Stored(len(new_ids), len(events) - len(new_ids), ids)


async def fan_out(rt: Runtime, event_ids: list[int]) -> int:
    enqueued = 0
    for event_id in event_ids:
        enqueued += await rt.queue.enqueue(PROCESS_INBOUND, event_id, job_id=f"inbound:{event_id}")
    return enqueued


async def claim_event(rt: Runtime, event_id: int) -> dict[str, Any] | None:
    now = rt.clock.now()
    async with rt.db.begin() as connection:
        claimed = await connection.execute(
            update(inbound_events)
            .where(
                inbound_events.c.id == event_id,
                inbound_events.c.status == "pending",
                inbound_events.c.due_at.is_(None) | (inbound_events.c.due_at <= now),
            )
            .values(status="processing", processed_at=now, attempts=inbound_events.c.attempts + 1)
        )
        if claimed.rowcount != 1:
            return None
        row = (await connection.execute(select(inbound_events).where(inbound_events.c.id == event_id))).mappings().one()
        return dict(row)


async def finish_event(rt: Runtime, event_id: int, status: str, result: str) -> None:
    async with rt.db.begin() as connection:
        await connection.execute(
            update(inbound_events)
            .where(inbound_events.c.id == event_id)
            .values(status=status, result=result, processed_at=rt.clock.now())
        )


async def retry_event(rt: Runtime, event_id: int, error: str, delay: timedelta) -> None:
    """Put an event back for later: the CRM could not be asked now (rate limit, outage)."""
    async with rt.db.begin() as connection:
        await connection.execute(
            update(inbound_events)
            .where(inbound_events.c.id == event_id)
            .values(status="pending", result=error, due_at=rt.clock.now() + delay)
        )
