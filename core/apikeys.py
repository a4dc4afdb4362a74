"""API keys: shown once at creation, stored as SHA-256 hashes (they are 256-bit random, so a
slow hash adds nothing)."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from core.db import Database, api_keys

PREFIX = "te_"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def create_key(db: Database, name: str, now: datetime) -> str:
    key = PREFIX + secrets.token_urlsafe(32)
    async with db.begin() as connection:
        await connection.execute(api_keys.insert().values(name=name, key_hash=_hash(key), prefix=key[:10], created_at=now))
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


async def revoke_key(db: Database, prefix_or_name: str, now: datetime) -> int:
    async with db.begin() as connection:
        result = await connection.execute(
            update(api_keys)
            .where((api_keys.c.prefix == prefix_or_name) | (api_keys.c.name == prefix_or_name), api_keys.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
    return result.rowcount or 0
