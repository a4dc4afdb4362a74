"""The SMTP server misbehaves: it answers 421, then 451, to every recipient for a while,
then drops every new connection for a while, and always answers 550 for some addresses.
Temporary failures are retried with backoff until the server takes the email; a 550 marks
that address bad and the email goes to the HCP's next address, or the trigger ends
`no_deliverable_email`. Nothing is lost, nothing is sent twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.reliability.cluster import Inbox, RedisServer
from tests.reliability.scenario import Scenario

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(900)]

HCPS = 70


async def test_smtp_421_451_closed_and_550_settle_without_loss_or_duplicates(
    postgres_url: str, redis_server: RedisServer, inbox: Inbox, workdir: Path
) -> None:
    rejected = {index for index in range(HCPS) if index % 7 == 0}
    inbox.reject = {f"hcp{index}@clinic.example" for index in rejected}
    async with Scenario("SMTP 421/451, closed, 550 for some", database_url=postgres_url, redis=redis_server,
                        inbox=inbox, workdir=workdir, hcps=HCPS) as run:

        async def load() -> None:
            for index, npi in enumerate(run.npis):
                await run.trigger(npi, serve=index % 2, retry_for=30)
                await asyncio.sleep(0.1)

        traffic = asyncio.create_task(load())
        for mode in ("421", "451", "closed"):
            inbox.mode = mode
            await asyncio.sleep(2.5)
        inbox.mode = "ok"
        run.fault_healed()
        await traffic
        figures = await run.verify(settle_timeout=400, expect_all_sent=False)
    outcomes = figures["outcomes"]
    second_address = {index for index in rejected if index % 5 == 0}  # these have a second address
    assert outcomes.get("no_deliverable_email") == len(rejected - second_address), outcomes
    assert outcomes.get("sent") == HCPS - len(rejected - second_address), outcomes
    assert figures["received"] == figures["sent"] == outcomes["sent"], figures
    received = inbox.count_by_recipient()
    assert all(received[f"hcp{index}@home.example"] == 1 for index in second_address), received
    assert not any(address in received for address in inbox.reject)
    assert sum(inbox.refused[code] for code in ("421", "451", "closed")) > 0, inbox.refused
