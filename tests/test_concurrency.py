"""Concurrent identical triggers send one email: the database arbitrates, not a lock in
our process. Run in one process and across several `trigger-email worker` processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from core.db import triggers
from core.decisions import decide
from core.triggers import accept_trigger
from tests.harness import BASE_CONFIG, JANE, Harness, drain
from workers.jobs import process_trigger


async def outcomes(h: Harness) -> dict[str, int]:
    async with h.rt.db.connect() as connection:
        rows = await connection.execute(select(triggers.c.status, func.count()).group_by(triggers.c.status))
        return {status: count for status, count in rows}


async def test_fifty_concurrent_decisions_send_one_email(harness: Harness) -> None:
    accepted = [await accept_trigger(harness.rt, npi=JANE, campaign_id="asthma-launch") for _ in range(50)]
    await asyncio.gather(*(decide(harness.rt, a.id) for a in accepted))
    await drain(harness.rt)
    assert await outcomes(harness) == {"sent": 1, "cooldown": 49}
    assert len(harness.smtp.messages) == 1


async def test_jobs_running_twice_for_one_trigger_decide_and_send_it_once(harness: Harness) -> None:
    """arq or the sweep may run a trigger's job twice at once; the decisions of concurrent
    jobs are made together, and the trigger is still decided, claimed and sent once."""
    accepted = await accept_trigger(harness.rt, npi=JANE, campaign_id="asthma-launch")
    results = await asyncio.gather(*(process_trigger({"runtime": harness.rt}, accepted.id) for _ in range(3)))
    assert sorted(results, key=str) == [None, None, "sent"]
    assert len(harness.smtp.messages) == 1 and await outcomes(harness) == {"sent": 1}


async def test_fifty_identical_triggers_over_three_worker_processes_send_one_email(harness: Harness, tmp_path: Path) -> None:
    config = tmp_path / "trigger-email.yaml"
    config.write_text(BASE_CONFIG)
    settings = harness.rt.settings
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "SMTP_URL": settings.smtp_url,
        "SECRET_KEY": settings.secret_key,
        "TRIGGER_EMAIL_CONFIG": str(config),
        "LOG_LEVEL": "WARNING",
    }
    workers = [
        subprocess.Popen([sys.executable, "-m", "trigger_email", "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    try:
        ids = await asyncio.gather(*(harness.trigger() for _ in range(50)))
        assert len({item["id"] for item in ids}) == 50
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            counts = await outcomes(harness)
            if counts.get("pending", 0) == 0 and counts.get("queued", 0) == 0:
                break
            await asyncio.sleep(0.2)
    finally:
        for worker in workers:
            worker.terminate()
        errors = [worker.communicate(timeout=20)[1].decode() for worker in workers]
    assert await outcomes(harness) == {"sent": 1, "cooldown": 49}, errors
    assert len(harness.smtp.messages) == 1
