"""Durable storage of inbound CRM events: store first, acknowledge after, process later.

The unique key (source, event_key) is the dedupe: CRMs retry for a day or more, far longer
than any job id lives in Redis.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from core.activities import InboundEvent
from core.db import inbound_events, insert_ignore
from core.queue import PROCESS_INBOUND
from core.runtime import Runtime


def _jsonable(event: InboundEvent) -> dict[str, Any]:
    data = dataclasses.asdict(event)
    data["occurred_at"] = event.occurred_at.isoformat() if event.occurred_at else None
    return data


def event_from_row(data: dict[str, Any]) -> InboundEvent:
    data = dict(data)
    if data.get("occurred_at"):
        data["occurred_at"] = datetime.fromisoformat(data["occurred_at"])
    return InboundEvent(**data)


async def store_events(rt: Runtime, events: list[InboundEvent]) -> tuple[int, int]:
    """Store `events` in one transaction and enqueue the new ones; returns (new, duplicates)."""
    if not events:
        return 0, 0
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
    for event_id in new_ids:
        await rt.queue.enqueue(PROCESS_INBOUND, event_id, job_id=f"inbound:{event_id}")
    return len(new_ids), len(events) - len(new_ids)


async def claim_event(rt: Runtime, event_id: int) -> dict[str, Any] | None:
    async with rt.db.begin() as connection:
        claimed = await connection.execute(
            update(inbound_events)
            .where(inbound_events.c.id == event_id, inbound_events.c.status == "pending")
            .values(status="processing", processed_at=rt.clock.now())
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
