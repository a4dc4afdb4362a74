"""Accepting triggers (API, CLI, CRM events) and showing what became of them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from core.clock import iso
from core.db import messages, new_id, triggers
from core.queue import PROCESS_TRIGGER
from core.runtime import Runtime

class IdempotencyMismatch(Exception):
    """The idempotency key was used before with another request (Stripe answers 422 too)."""


def request_hash(npi: str, campaign_id: str, data: dict[str, Any] | None) -> str:
    canonical = json.dumps([npi, campaign_id, data or {}], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Accepted:
    id: str
    status: str
    created: bool


async def accept_trigger(
    rt: Runtime,
    *,
    npi: str,
    campaign_id: str,
    data: dict[str, Any] | None = None,
    source: str = "api",
    source_ref: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    check_request: bool = False,
) -> Accepted:
    """Store a trigger, then enqueue its decision. The row is committed before this returns,
    so a 202 means the trigger survives any crash; the same idempotency key returns the
    first trigger and does nothing again. With `check_request`, reusing the key with another
    npi, campaign or data raises IdempotencyMismatch instead."""
    trigger_id = new_id("trg")
    fingerprint = request_hash(npi, campaign_id, data) if check_request and idempotency_key else None
    row = {
        "id": trigger_id,
        "npi": npi,
        "campaign_id": campaign_id,
        "data": data or {},
        "source": source,
        "source_ref": source_ref,
        "idempotency_key": idempotency_key,
        "request_hash": fingerprint,
        "status": "pending",
        "created_at": rt.clock.now(),
    }
    try:
        async with rt.db.begin() as connection:
            await connection.execute(triggers.insert().values(**row))
    except IntegrityError:
        if idempotency_key is None:
            raise
        async with rt.db.connect() as connection:
            existing = (
                await connection.execute(
                    select(triggers.c.id, triggers.c.status, triggers.c.request_hash)
                    .where(triggers.c.idempotency_key == idempotency_key)
                )
            ).first()
        if existing is None:
            raise
        if fingerprint and existing.request_hash and existing.request_hash != fingerprint:
            raise IdempotencyMismatch(existing.id) from None
        return Accepted(id=existing.id, status=existing.status, created=False)
    await rt.queue.enqueue(PROCESS_TRIGGER, trigger_id, job_id=f"trigger:{trigger_id}")
    return Accepted(id=trigger_id, status="pending", created=True)


async def trigger_view(rt: Runtime, trigger_id: str) -> dict[str, Any] | None:
    from core.console import full_trail

    async with rt.db.connect() as connection:
        row = (await connection.execute(select(triggers).where(triggers.c.id == trigger_id))).mappings().first()
        if row is None:
            return None
        message_rows = (
            await connection.execute(
                select(messages).where(messages.c.trigger_id == trigger_id).order_by(messages.c.seq, messages.c.created_at)
            )
        ).mappings().all()
    return {
        "id": row["id"],
        "npi": row["npi"],
        "campaign_id": row["campaign_id"],
        "status": row["status"],
        "reason": row["reason"],
        "source": row["source"],
        "data": row["data"],
        "created_at": iso(row["created_at"]),
        "decided_at": iso(row["decided_at"]),
        "messages": [message_view(message) for message in message_rows],
        "trail": full_trail(row),
    }


def message_view(message: Any) -> dict[str, Any]:
    """One message as the API shows it, with what the HCP did with it: human opens apart from
    machine opens (privacy proxies, scanners), clicks, and whether it bounced or led to an
    unsubscribe."""
    return {
        "id": message["id"],
        "to": message["to_address"],
        "subject": message["subject"],
        "status": message["status"],
        "kind": message["kind"],
        "sent_at": iso(message["sent_at"]),
        "due_at": iso(message["due_at"]) if message["status"] in ("scheduled", "queued") else None,
        "attempts": message["attempts"],
        "error": message["error"],
        "message_id": message["message_id"],
        "opened_at": iso(message["opened_at"]),
        "open_count": message["open_count"] or 0,
        "machine_opens": message["machine_opens"] or 0,
        "clicked_at": iso(message["clicked_at"]),
        "clicks": message["click_count"] or 0,
        "links": list(message["links"] or []),
        "bounced": message["bounced_at"] is not None,
        "bounce_reason": message["bounce_reason"],
        "unsubscribed": message["unsubscribed_at"] is not None,
    }
