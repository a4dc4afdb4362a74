"""PostgreSQL connections terminated (`pg_terminate_backend`) again and again while triggers
arrive and emails go out. Requests that fail are retried by the client with the same
Idempotency-Key; jobs that fail are retried by arq and the sweep. A message whose SMTP
transaction completed but whose `sent` could not be recorded is `unknown`, never resent."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from tests.reliability.cluster import Inbox, RedisServer
from tests.reliability.scenario import Scenario

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(900)]


async def terminate_all(database_url: str) -> int:
    """Terminate every other connection to the database: what a failover or an admin does."""
    connection = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return len(await connection.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ))
    finally:
        await connection.close()


async def test_postgres_connections_terminated_mid_run(
    postgres_url: str, redis_server: RedisServer, inbox: Inbox, workdir: Path
) -> None:
    inbox.delay = 0.05
    async with Scenario("PostgreSQL connections terminated", database_url=postgres_url, redis=redis_server,
                        inbox=inbox, workdir=workdir, hcps=120) as run:

        async def load() -> None:
            for index, npi in enumerate(run.npis):
                await run.trigger(npi, serve=index % 2, key=f"rel-{npi}", retry_for=60)
                await asyncio.sleep(0.05)

        traffic = asyncio.create_task(load())
        terminated = 0
        for _ in range(4):
            await asyncio.sleep(1.5)
            terminated += await terminate_all(postgres_url)
        run.fault_healed()
        await traffic
        await run.db.engine.dispose()  # our own pooled connections were terminated too
        run.notes.append(f"{terminated} connections terminated in 4 rounds")
        figures = await run.verify(settle_timeout=300, allow_unknown=True)
    assert terminated > 0
    assert figures["triggers"] == 120, figures  # one per Idempotency-Key, whatever the retries
    assert figures["sent"] + figures["unknown"] == 120, figures
