"""Accepting triggers (API, CLI, CRM events) and showing what became of them."""

from __future__ import annotations

import hashlib
import json
import math
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


MAX_TEXT = 10_000
"""Characters in one string of a trigger's `data` (a CRM long-text field can hold 128 KB)."""
MAX_KEY = 200
MAX_DEPTH = 32


def storage_problem(value: Any, depth: int = 0) -> str | None:
    """Why `value` cannot be stored in a trigger's `data` (PostgreSQL refuses NUL in jsonb,
    nothing encodes a lone surrogate, NaN is not JSON), or None."""
    if depth > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH} levels"
    if isinstance(value, str):
        if "\x00" in value:
            return "contains a NUL character"
        if len(value) > MAX_TEXT:
            return f"longer than {MAX_TEXT} characters ({len(value)})"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "contains a lone UTF-16 surrogate"
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a JSON number"
    if isinstance(value, dict):
        for key, item in value.items():
            problem = storage_problem(key, depth + 1) if isinstance(key, str) else "has a key that is not a string"
            if problem is None and isinstance(key, str) and len(key) > MAX_KEY:
                problem = f"has a key longer than {MAX_KEY} characters"
            problem = problem or storage_problem(item, depth + 1)
            if problem:
                return problem
    elif isinstance(value, (list, tuple)):
        for item in value:
            problem = storage_problem(item, depth + 1)
            if problem:
                return problem
    elif value is not None and not isinstance(value, (bool, int, float)):
        return f"a {type(value).__name__} is not JSON"
    return None


def storable_data(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`data` without the fields that cannot be stored, and one note per field dropped."""
    kept: dict[str, Any] = {}
    notes: list[str] = []
    for key, value in data.items():
        shown = _shown_key(key)
        problem = storage_problem(key) if isinstance(key, str) else "its name is not a string"
        if problem is None and len(key) > MAX_KEY:
            problem = f"its name is longer than {MAX_KEY} characters"
        problem = problem or storage_problem(value)
        if problem:
            notes.append(f"data field {shown} dropped: {problem}")
        else:
            kept[key] = value
    return kept, notes


def _shown_key(key: Any) -> str:
    text = str(key).encode("utf-8", "backslashreplace").decode().replace("\x00", "\\0")
    return repr(text if len(text) <= 60 else text[:59] + "…")


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
    # Fields copied from a CRM record may hold what no database stores: they are dropped with
    # a note the trigger shows, instead of failing its insert (and the event with it).
    data, notes = storable_data(data or {})
    if storage_problem(npi):  # an NPI field holding NUL or worse: kept readable, ends as invalid_npi
        npi = npi.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\0")[:64]
    if notes:
        source_ref = {**(source_ref or {}), "notes": notes}
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
        "notes": list((row["source_ref"] or {}).get("notes", [])) if isinstance(row["source_ref"], dict) else [],
        "created_at": iso(row["created_at"]),
        "decided_at": iso(row["decided_at"]),
        "attempts": row["attempts"],
        "due_at": iso(row["due_at"]) if row["status"] == "pending" else None,
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
        "campaign_version": message["campaign_version"],
        "variant": message["variant"],
    }
