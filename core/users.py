"""Dashboard users: an email and a password stored with scrypt (a memory-hard KDF from the
standard library), checked in constant time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from core.db import Database, dashboard_users

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD = 10


class UserError(ValueError):
    pass


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    encode = lambda raw: base64.b64encode(raw).decode().rstrip("=")  # noqa: E731
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encode(salt)}${encode(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        decode = lambda text: base64.b64decode(text + "=" * (-len(text) % 4))  # noqa: E731
        expected = decode(digest)
        actual = hashlib.scrypt(password.encode(), salt=decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


_DUMMY = hash_password(secrets.token_urlsafe(16))
"""Checked against when the email is unknown, so a wrong email costs the same time as a wrong password."""


def generate_password() -> str:
    return secrets.token_urlsafe(12)


def normalise_email(email: str) -> str:
    email = email.strip().lower()
    local, _, domain = email.partition("@")
    if not local or "." not in domain or " " in email or len(email) > 320:
        raise UserError(f"EMAIL: {email!r} is not an email address")
    return email


async def create_user(db: Database, email: str, password: str, now: datetime, *, replace: bool = False) -> dict[str, Any]:
    email = normalise_email(email)
    if len(password) < MIN_PASSWORD:
        raise UserError(f"password: at least {MIN_PASSWORD} characters")
    hashed = hash_password(password)
    async with db.begin() as connection:
        existing = (await connection.execute(select(dashboard_users.c.id).where(dashboard_users.c.email == email))).scalar()
        if existing is not None:
            if not replace:
                raise UserError(f"EMAIL: user {email} exists (delete it first, or use --reset)")
            await connection.execute(update(dashboard_users).where(dashboard_users.c.id == existing).values(password_hash=hashed))
            return {"id": existing, "email": email}
        try:
            result = await connection.execute(
                dashboard_users.insert().values(email=email, password_hash=hashed, created_at=now).returning(dashboard_users.c.id)
            )
        except IntegrityError:
            raise UserError(f"EMAIL: user {email} exists") from None
        return {"id": result.scalar_one(), "email": email}


async def authenticate(db: Database, email: str, password: str, now: datetime) -> dict[str, Any] | None:
    try:
        email = normalise_email(email)
    except UserError:
        verify_password(password, _DUMMY)
        return None
    async with db.connect() as connection:
        row = (await connection.execute(select(dashboard_users).where(dashboard_users.c.email == email))).mappings().first()
    if row is None:
        verify_password(password, _DUMMY)
        return None
    if not verify_password(password, row["password_hash"]):
        return None
    async with db.begin() as connection:
        await connection.execute(update(dashboard_users).where(dashboard_users.c.id == row["id"]).values(last_login_at=now))
    return {"id": row["id"], "email": row["email"]}


async def get_user(db: Database, user_id: int) -> dict[str, Any] | None:
    async with db.connect() as connection:
        row = (
            await connection.execute(select(dashboard_users.c.id, dashboard_users.c.email).where(dashboard_users.c.id == user_id))
        ).mappings().first()
    return dict(row) if row else None


async def list_users(db: Database) -> list[dict[str, Any]]:
    async with db.connect() as connection:
        rows = (await connection.execute(
            select(dashboard_users.c.id, dashboard_users.c.email, dashboard_users.c.created_at, dashboard_users.c.last_login_at)
            .order_by(dashboard_users.c.email)
        )).mappings().all()
    return [dict(row) for row in rows]


async def delete_user(db: Database, email: str) -> bool:
    async with db.begin() as connection:
        result = await connection.execute(delete(dashboard_users).where(dashboard_users.c.email == email.strip().lower()))
    return bool(result.rowcount)
