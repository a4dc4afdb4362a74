"""PgBouncer in transaction mode between the processes and PostgreSQL (docs/deploy.md):
consecutive transactions of one client run on different server connections, so asyncpg's
prepared statements must not outlive a transaction. Without `DATABASE_PGBOUNCER=true` most
transactions fail ("prepared statement … does not exist"); with it, serve and the workers
run the usual guarantees through 3 shared server connections."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import text

from core.db import Database
from tests.reliability.cluster import Inbox, PgBouncer, RedisServer
from tests.reliability.scenario import Scenario

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(600)]


@pytest.fixture
def pgbouncer(postgres_url: str) -> Iterator[PgBouncer]:
    try:
        bouncer = PgBouncer(postgres_url)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield bouncer
    bouncer.close()


async def concurrent_transactions(url: str, *, pgbouncer: bool, count: int = 100) -> list[BaseException]:
    db = Database(url, pgbouncer=pgbouncer)

    async def one(n: int) -> int:
        async with db.begin() as connection:
            return (await connection.execute(text("SELECT count(*) FROM pg_class WHERE relpages > :n"), {"n": n})).scalar_one()

    try:
        results = await asyncio.gather(*(one(n) for n in range(count)), return_exceptions=True)
    finally:
        await db.dispose()
    return [result for result in results if isinstance(result, BaseException)]


async def test_the_setting_is_what_makes_transaction_pooling_work(pgbouncer: PgBouncer) -> None:
    without = await concurrent_transactions(pgbouncer.url, pgbouncer=False)
    assert without and "prepared statement" in str(without[0]), without[:1]
    assert await concurrent_transactions(pgbouncer.url, pgbouncer=True) == []


async def test_serve_and_workers_through_pgbouncer(
    postgres_url: str, pgbouncer: PgBouncer, redis_server: RedisServer, inbox: Inbox, workdir: Path
) -> None:
    async with Scenario("through PgBouncer (transaction mode)", database_url=postgres_url, redis=redis_server,
                        inbox=inbox, workdir=workdir, hcps=60, app_database_url=pgbouncer.url,
                        DATABASE_PGBOUNCER="true") as run:
        await asyncio.gather(
            *(run.trigger(npi, serve=n % 2) for n, npi in enumerate(run.npis)),
            *(run.trigger(run.npis[0], serve=n % 2) for n in range(30)),  # identical: still one email
        )
        figures = await run.verify()
    assert figures["sent"] == figures["received"] == 60, figures
    assert figures["outcomes"] == {"sent": 60, "cooldown": 30}, figures
