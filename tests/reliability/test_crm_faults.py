"""The CRM write-back meets a CRM that answers 429 with Retry-After, then 500 twice, then
takes a batch but loses its reply. The outbox keeps every activity until the CRM accepted
it, honours Retry-After, backs off on 5xx, and a retried batch keeps its `webhook-id`, so
the CRM (like any Standard Webhooks receiver) drops the repeat: every activity reaches the
CRM exactly once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.reliability.cluster import FakeCrm, Inbox, RedisServer
from tests.reliability.scenario import Scenario

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(900)]


async def test_crm_429_then_500s_then_a_lost_reply(
    postgres_url: str, redis_server: RedisServer, inbox: Inbox, crm: FakeCrm, workdir: Path
) -> None:
    crm.answers = [("429", 2), ("500",), ("500",), ("lost",)]
    async with Scenario("CRM 429, 500s, lost reply", database_url=postgres_url, redis=redis_server, inbox=inbox,
                        workdir=workdir, crm=crm, hcps=40) as run:
        await asyncio.gather(*(run.trigger(npi, serve=index % 2) for index, npi in enumerate(run.npis)))
        figures = await run.verify(settle_timeout=400)
    answers = [delivery["answer"] for delivery in crm.deliveries]
    assert answers[:1] == ["429"] and answers.count("500") == 2 and answers.count("lost") == 1, answers
    assert figures["crm_activities"] == 40, figures  # one "sent" activity per email, each once
    assert crm.duplicates_dropped >= 1, crm.deliveries  # the batch whose reply was lost came again
