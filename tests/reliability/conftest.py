"""Fixtures of the fault-injection suite. It needs a real PostgreSQL: TEST_DATABASE_URL
(CI), else a database of its own it creates on a PostgreSQL at 127.0.0.1:5432; when neither
can be reached every scenario FAILS saying so (a skipped reliability suite proves nothing).
Redis is a redis-server each scenario starts itself."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator

import pytest

from tests.reliability.cluster import ROOT, FakeCrm, Inbox, RedisServer, SmtpServer

LOCAL_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


async def _dedicated_database() -> str:
    """No TEST_DATABASE_URL: a database of this checkout's own on the local PostgreSQL."""
    import asyncpg

    name = "test_reliability_" + hashlib.sha1(str(ROOT).encode()).hexdigest()[:10]
    try:
        connection = await asyncpg.connect(LOCAL_ADMIN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            "tests/reliability need a real PostgreSQL: set TEST_DATABASE_URL=postgresql://…/test… (a throwaway "
            f"database), or run PostgreSQL on 127.0.0.1:5432 with a `postgres` user ({type(exc).__name__}: {exc})",
            pytrace=False,
        )
    try:
        if not await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


@pytest.fixture
async def postgres_url() -> str:
    from tests.harness import reset_database

    url = os.environ.get("TEST_DATABASE_URL") or await _dedicated_database()
    if not url.startswith("postgres"):
        pytest.fail(f"tests/reliability need PostgreSQL, TEST_DATABASE_URL is {url.split(':', 1)[0]}", pytrace=False)
    await reset_database(url)
    return url


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    try:
        server = RedisServer()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    server.start()
    yield server
    server.close()


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    box = Inbox()
    server = SmtpServer(box)
    server.start()
    box.url = server.url  # type: ignore[attr-defined]
    yield box
    server.stop()


@pytest.fixture
def crm() -> Iterator[FakeCrm]:
    receiver = FakeCrm().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
