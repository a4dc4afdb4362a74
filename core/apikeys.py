"""API keys: shown once at creation, stored as SHA-256 hashes (they are 256-bit random, so a
slow hash adds nothing)."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Any, Iterable

from sqlalchemy import select, update

from core.db import Database, api_keys

PREFIX = "te_"
SCOPES = ("triggers:write", "read", "admin")
"""`triggers:write`: POST /v1/triggers; `read`: every GET; `admin`: pause/resume campaigns,
change the suppression list, retry the outbox."""
DEFAULT_SCOPES = SCOPES
LAST_USED_EVERY = timedelta(minutes=1)
"""`last_used_at` is written at most this often per key: not a write per request."""


def scopes_text(scopes: Iterable[str] | None) -> str:
    chosen = list(dict.fromkeys(scopes or DEFAULT_SCOPES))
    unknown = [scope for scope in chosen if scope not in SCOPES]
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r}; scopes are {', '.join(SCOPES)}")
    return " ".join(chosen)


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def create_key(db: Database, name: str, now: datetime, scopes: Iterable[str] | None = None) -> str:
    granted = scopes_text(scopes)
    key = PREFIX + secrets.token_urlsafe(32)
    async with db.begin() as connection:
        await connection.execute(
            api_keys.insert().values(name=name, key_hash=_hash(key), prefix=key[:10], created_at=now, scopes=granted)
        )
    return key


async def store_key(db: Database, name: str, key: str, now: datetime) -> None:
    """Register a key chosen elsewhere (dev mode keeps one across restarts)."""
    async with db.begin() as connection:
        exists = (await connection.execute(select(api_keys.c.id).where(api_keys.c.key_hash == _hash(key)))).first()
        if not exists:
            await connection.execute(api_keys.insert().values(name=name, key_hash=_hash(key), prefix=key[:10], created_at=now))


async def check_key(db: Database, key: str) -> dict[str, Any] | None:
    async with db.connect() as connection:
        row = (
            await connection.execute(
                select(api_keys).where(api_keys.c.key_hash == _hash(key), api_keys.c.revoked_at.is_(None))
            )
        ).mappings().first()
    return dict(row) if row else None


def has_scope(record: dict[str, Any], scope: str) -> bool:
    return scope in (record.get("scopes") or "").split()


async def touch_key(db: Database, record: dict[str, Any], now: datetime) -> bool:
    """Record that the key was used, when its `last_used_at` is a minute old or unset: the
    row was read to check the key anyway, so a busy key costs one UPDATE a minute, and the
    condition keeps concurrent processes from each writing it."""
    last = record.get("last_used_at")
    if last is not None and now - last < LAST_USED_EVERY:
        return False
    async with db.begin() as connection:
        result = await connection.execute(
            update(api_keys)
            .where(api_keys.c.id == record["id"],
                   api_keys.c.last_used_at.is_(None) | (api_keys.c.last_used_at < now - LAST_USED_EVERY))
            .values(last_used_at=now)
        )
    return bool(result.rowcount)


async def list_keys(db: Database) -> list[dict[str, Any]]:
    async with db.connect() as connection:
        rows = (await connection.execute(
            select(api_keys.c.id, api_keys.c.name, api_keys.c.prefix, api_keys.c.scopes, api_keys.c.created_at,
                   api_keys.c.last_used_at, api_keys.c.revoked_at).order_by(api_keys.c.id)
        )).mappings().all()
    return [dict(row) for row in rows]


async def revoke_key(db: Database, prefix_or_name: str, now: datetime) -> int:
    async with db.begin() as connection:
        result = await connection.execute(
            update(api_keys)
            .where((api_keys.c.prefix == prefix_or_name) | (api_keys.c.name == prefix_or_name), api_keys.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
    return result.rowcount or 0
