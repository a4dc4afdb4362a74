"""100 identical triggers at once, through both `serve` processes, decided by both workers:
the database arbitrates (the HCP row lock and the cooldown), so exactly one email goes out."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.reliability.cluster import FakeCrm, Inbox, RedisServer
from tests.reliability.scenario import Scenario

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(600)]


async def test_a_hundred_identical_triggers_send_one_email(
    postgres_url: str, redis_server: RedisServer, inbox: Inbox, workdir: Path
) -> None:
    async with Scenario("100 identical triggers", database_url=postgres_url, redis=redis_server, inbox=inbox,
                        workdir=workdir, hcps=10) as run:
        npi = run.npis[3]
        ids = await asyncio.gather(*(run.trigger(npi, serve=n % 2) for n in range(100)))
        assert len(set(ids)) == 100
        figures = await run.verify()
    assert figures["sent"] == 1 and figures["received"] == 1, figures
    assert figures["outcomes"] == {"sent": 1, "cooldown": 99}, figures
