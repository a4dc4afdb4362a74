"""`serve` restarted (SIGTERM, a new process on the same socket) twice while clients send
triggers and retry failed requests with the same Idempotency-Key: each key makes one
trigger, each HCP one email, whichever process answered."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from tests.reliability.cluster import Inbox, RedisServer
from tests.reliability.scenario import Scenario

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(900)]


async def test_serve_restarted_while_clients_retry_with_the_same_key(
    postgres_url: str, redis_server: RedisServer, inbox: Inbox, workdir: Path
) -> None:
    async with Scenario("serve restarted, clients retry (Idempotency-Key)", database_url=postgres_url,
                        redis=redis_server, inbox=inbox, workdir=workdir, hcps=150, serves=1) as run:
        answers: dict[str, set[str]] = {}

        async def client(npis: list[str]) -> None:
            for npi in npis:
                key = f"order-{npi}"
                trigger_id = await run.trigger(npi, key=key, retry_for=90)
                # a client that is not sure its first answer arrived asks again: same key, same trigger
                again = await run.trigger(npi, key=key, retry_for=90)
                answers.setdefault(key, set()).update({trigger_id, again})
                await asyncio.sleep(0.02)

        clients = [asyncio.create_task(client(run.npis[n::5])) for n in range(5)]
        for _ in range(2):
            await asyncio.sleep(2)
            old = run.cluster.serves[0]
            assert old is not None
            old.send_signal(signal.SIGTERM)
            await asyncio.to_thread(old.wait, 60)
            run.cluster.start_serve(0)
        run.fault_healed()
        await asyncio.gather(*clients)
        figures = await run.verify(settle_timeout=300)
    assert all(len(ids) == 1 for ids in answers.values()), [k for k, ids in answers.items() if len(ids) > 1][:5]
    assert len(answers) == figures["triggers"] == figures["sent"] == 150, figures
