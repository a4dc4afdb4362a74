"""Redis loses everything: flushed mid-run, and its server restarted (no persistence). The
database holds every accepted trigger and every due time; the sweep finds what Redis forgot
and arq runs it again, so nothing is lost and nothing is sent twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.reliability.cluster import Inbox, RedisServer
from tests.reliability.scenario import Scenario

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(600)]


async def steady(run: Scenario, npis: list[str], per_second: float) -> None:
    """Triggers at a steady pace, alternating serves; a client retries for a while on errors."""
    for index, npi in enumerate(npis):
        await run.trigger(npi, serve=index % 2, retry_for=60)
        await asyncio.sleep(1 / per_second)


async def test_redis_flushed_mid_run_loses_nothing(
    postgres_url: str, redis_server: RedisServer, inbox: Inbox, workdir: Path
) -> None:
    inbox.delay = 0.05  # sends take a moment, so some are in flight when Redis is flushed
    async with Scenario("Redis flushed mid-run", database_url=postgres_url, redis=redis_server, inbox=inbox,
                        workdir=workdir, hcps=120) as run:
        load = asyncio.create_task(steady(run, run.npis, 20))
        for _ in range(3):
            await asyncio.sleep(1.5)
            redis_server.flush()
        await load
        run.fault_healed()
        figures = await run.verify()
    assert figures["sent"] == figures["received"] == 120, figures


async def test_redis_restarted_mid_run_loses_nothing(
    postgres_url: str, redis_server: RedisServer, inbox: Inbox, workdir: Path
) -> None:
    inbox.delay = 0.05
    async with Scenario("Redis restarted mid-run", database_url=postgres_url, redis=redis_server, inbox=inbox,
                        workdir=workdir, hcps=120) as run:
        load = asyncio.create_task(steady(run, run.npis, 20))
        await asyncio.sleep(2)
        redis_server.stop()
        await asyncio.sleep(3)  # serve keeps accepting into the database; workers wait for Redis
        redis_server.start()
        run.fault_healed()
        await load
        figures = await run.verify()
    assert figures["sent"] == figures["received"] == 120, figures
