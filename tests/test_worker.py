"""The arq worker with its real cron: due work is picked up within 2 s of its time, a
duplicate enqueue runs once, and a Redis flush loses nothing (the database holds the work)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from config import Settings
from core.clock import Clock
from core.queue import PROCESS_TRIGGER
from core.runtime import build_runtime
from core.schema import upgrade
from core.triggers import accept_trigger
from tests.harness import JANE, MEI, OMAR, SmtpSink, drain, load_directory, make_config
from workers.settings import make_worker

pytestmark = pytest.mark.default_backend

FAST = """
public_url: https://trigger.pharma.example
sender: {from: "Medical Information <medinfo@pharma.example>"}
campaigns:
  - id: quick
    subject: Quick
    html: "<p>Hello Dr. {{ hcp.last_name }}</p>"
    resend: {after: 2s, max: 1, subject: "Again: {{ subject }}"}
"""


@pytest.fixture
async def live_runtime(database_url: str, redis_url: str, smtp: tuple[SmtpSink, str], tmp_path: Path):  # type: ignore[no-untyped-def]
    sink, smtp_url = smtp
    rt = await build_runtime(
        Settings(database_url=database_url, redis_url=redis_url, smtp_url=smtp_url, secret_key="k"),
        config=make_config(FAST), clock=Clock(),
    )
    await upgrade(rt.db)
    await rt.queue.redis.flushdb()  # type: ignore[union-attr]
    await load_directory(rt, tmp_path)
    yield rt, sink
    await rt.aclose()


async def wait_until(predicate, timeout: float) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def test_cron_picks_up_a_due_resend_within_two_seconds(live_runtime) -> None:  # type: ignore[no-untyped-def]
    rt, sink = live_runtime
    worker = make_worker(rt, handle_signals=False)
    task = asyncio.create_task(worker.main())
    try:
        await accept_trigger(rt, npi=JANE, campaign_id="quick")
        await wait_until(lambda: len(sink.messages) == 1, 10)
        sent_at = time.monotonic()
        await wait_until(lambda: len(sink.messages) == 2, 10)
        late = time.monotonic() - sent_at - 2.0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert sink.messages[1]["Subject"] == "Again: Quick"
    assert late < 2.0, f"resend went {late:.2f} s after it was due"


async def test_duplicate_enqueue_runs_once(live_runtime) -> None:  # type: ignore[no-untyped-def]
    from arq.jobs import Job

    rt, sink = live_runtime
    accepted = await accept_trigger(rt, npi=JANE, campaign_id="quick")  # enqueues trigger:<id>
    job_id = f"trigger:{accepted.id}"
    again = await asyncio.gather(*(rt.queue.enqueue(PROCESS_TRIGGER, accepted.id, job_id=job_id) for _ in range(5)))
    assert again == [False] * 5
    assert await rt.queue.redis.zcard("arq:queue") == 1  # one job waiting, not six
    worker = make_worker(rt, burst=True, handle_signals=False)
    await worker.main()
    assert worker.jobs_complete >= 1 and worker.jobs_failed == 0 and worker.jobs_retried == 0
    result = await Job(job_id, rt.queue.redis).result_info()
    assert result is not None and result.success and result.job_try == 1, result  # ran once, first try
    # Its result key still blocks the same id, and whatever else is queued sends nothing more.
    assert not await rt.queue.enqueue(PROCESS_TRIGGER, accepted.id, job_id=job_id)
    await drain(rt)
    assert [str(m["To"]) for m in sink.messages] == ["jane.doe@clinic.example"]


async def test_two_workers_on_one_queue_take_each_job_once(live_runtime) -> None:  # type: ignore[no-untyped-def]
    from arq.jobs import Job

    rt, sink = live_runtime
    accepted = [await accept_trigger(rt, npi=npi, campaign_id="quick") for npi in (JANE, OMAR, MEI)]
    workers = [make_worker(rt, burst=True, handle_signals=False) for _ in range(2)]
    await asyncio.gather(*(worker.main() for worker in workers))
    assert sum(w.jobs_complete for w in workers) == 3 and sum(w.jobs_failed + w.jobs_retried for w in workers) == 0
    for trigger in accepted:
        result = await Job(f"trigger:{trigger.id}", rt.queue.redis).result_info()
        assert result is not None and result.success and result.job_try == 1, result
    assert sorted(str(m["To"]) for m in sink.messages) == sorted(set(str(m["To"]) for m in sink.messages))
    assert len(sink.messages) == 3
    assert await rt.queue.redis.keys("arq:in-progress:*") == []


async def test_a_job_left_by_a_dead_worker_runs_again_as_its_second_try(live_runtime) -> None:  # type: ignore[no-untyped-def]
    """What a worker killed mid-job leaves in Redis: the job still queued and its try counted.
    The next worker takes it (one script: the take and the reads arq's run_job opens with)
    and runs it as try 2, as arq counts tries."""
    from arq.constants import retry_key_prefix
    from arq.jobs import Job

    rt, sink = live_runtime
    accepted = await accept_trigger(rt, npi=JANE, campaign_id="quick")
    job_id = f"trigger:{accepted.id}"
    await rt.queue.redis.set(retry_key_prefix + job_id, 1)  # the dead worker's try
    worker = make_worker(rt, burst=True, handle_signals=False)
    await worker.main()
    result = await Job(job_id, rt.queue.redis).result_info()
    assert result is not None and result.success and result.job_try == 2, result
    assert [str(m["To"]) for m in sink.messages] == ["jane.doe@clinic.example"]
    assert await rt.queue.redis.keys("arq:in-progress:*") == []


async def test_a_redis_flush_loses_nothing(live_runtime) -> None:  # type: ignore[no-untyped-def]
    rt, sink = live_runtime
    accepted = await accept_trigger(rt, npi=JANE, campaign_id="quick")
    assert await rt.queue.redis.zcard("arq:queue") == 1
    await rt.queue.redis.flushdb()  # the job is gone from Redis …
    from core.scheduler import sweep

    await asyncio.sleep(0)
    rt.clock = _Later(seconds=11)  # … and the sweep finds the trigger still pending in the database
    await sweep(rt)
    await drain(rt)
    assert len(sink.messages) == 1


class _Later(Clock):
    def __init__(self, seconds: float):
        self.offset = seconds

    def now(self):  # type: ignore[no-untyped-def]
        from datetime import timedelta

        return super().now() + timedelta(seconds=self.offset)
