"""HubSpot redelivers: 20 % of the webhook deliveries arrive twice, some of them at the same
moment at the other `serve` process, some later with the next `attemptNumber`. Dedupe lives in
the database (unique event key), so each event makes one trigger and one email."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Awaitable

import pytest

from tests.reliability.cluster import Inbox, RedisServer, hubspot_event
from tests.reliability.scenario import Scenario

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(600)]


async def after(seconds: float, delivery: Awaitable[None]) -> None:
    await asyncio.sleep(seconds)
    await delivery


async def test_duplicated_webhook_deliveries_across_two_serves_send_once(
    postgres_url: str, redis_server: RedisServer, inbox: Inbox, workdir: Path
) -> None:
    rng = random.Random(12)
    async with Scenario("webhooks: 20 % duplicated across 2 serve", database_url=postgres_url, redis=redis_server,
                        inbox=inbox, workdir=workdir, hcps=100) as run:
        batches = [[hubspot_event(1000 + n, 5000 + n, npi)] for n, npi in enumerate(run.npis)]
        concurrent = later = 0
        deliveries = []
        for batch in batches:
            deliveries.append(run.hubspot(batch, serve=0))
            if rng.random() < 0.2:
                if rng.random() < 0.5:  # the same delivery at the same time, at the other serve
                    deliveries.append(run.hubspot(batch, serve=1))
                    concurrent += 1
                else:  # HubSpot's retry: same eventId, next attempt
                    retry = [{**batch[0], "attemptNumber": 1}]
                    deliveries.append(after(0.5 + 2 * rng.random(), run.hubspot(retry, serve=1)))
                    later += 1
        await asyncio.gather(*deliveries)
        run.notes.append(f"{concurrent} concurrent duplicates, {later} later redeliveries")
        figures = await run.verify()
    assert concurrent + later >= 10
    assert figures["triggers"] == len(batches) == figures["sent"] == figures["received"], figures
