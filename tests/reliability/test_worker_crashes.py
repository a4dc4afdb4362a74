"""Workers die mid-send: one SIGKILLed, one SIGTERMed, with many SMTP transactions in flight
(the SMTP server takes half a second in DATA), replacements started. SIGTERM lets the
transactions in flight finish and puts the rest back; after the SIGKILL the claims of the
messages that never reached MAIL FROM expire and go back to `queued`; only a message cut
inside its SMTP transaction becomes `unknown` (never resent blindly, settled by an operator
with `trigger-email messages resolve`). No HCP gets two emails."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from tests.reliability.cluster import Inbox, RedisServer
from tests.reliability.scenario import Scenario

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(900)]


async def test_workers_killed_and_terminated_mid_send(
    postgres_url: str, redis_server: RedisServer, inbox: Inbox, workdir: Path
) -> None:
    inbox.delay = 0.5
    async with Scenario("worker SIGKILL + SIGTERM mid-send", database_url=postgres_url, redis=redis_server,
                        inbox=inbox, workdir=workdir, hcps=150, CLAIM_LEASE="6") as run:
        cluster = run.cluster

        async def load() -> None:
            for index, npi in enumerate(run.npis):
                await run.trigger(npi, serve=index % 2, retry_for=30)
                await asyncio.sleep(0.02)

        traffic = asyncio.create_task(load())
        await asyncio.sleep(3)
        before = len(inbox.received)
        killed = cluster.workers[0]
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=10)
        cluster.start_worker()
        await asyncio.sleep(3)
        terminated = cluster.workers[1]
        terminated.send_signal(signal.SIGTERM)
        cluster.start_worker()
        await asyncio.to_thread(terminated.wait, 60)
        run.fault_healed()
        await traffic
        run.notes.append(f"{before} emails received before the SIGKILL; SIGTERMed worker exited {terminated.returncode}")
        figures = await run.verify(settle_timeout=300, allow_unknown=True)
    assert terminated.returncode == 0, cluster.tail()
    assert figures["sent"] + figures["unknown"] == 150, figures
    assert figures["unknown"] <= 40, figures  # at most one worker's transactions in flight
