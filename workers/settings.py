"""arq `WorkerSettings` for `trigger-email worker`, and the same pieces for `dev`."""

from __future__ import annotations

import asyncio
import logging
from signal import Signals
from typing import Any

from arq import cron
from arq.worker import Worker, get_kwargs

from config import Settings
from core.runtime import Runtime, build_runtime
from core.queue import redis_settings
from workers import jobs

FUNCTIONS = [jobs.process_trigger, jobs.send_message, jobs.process_inbound, jobs.process_inbound_batch]
EVERY_SECOND = set(range(60))
CRON_JOBS = [
    cron(jobs.sweep, second=EVERY_SECOND, unique=True, run_at_startup=True, timeout=60),
    cron(jobs.push_activities, second=set(range(0, 60, 2)), unique=True, timeout=120),
]
JOB_TIMEOUT = 60
"""Short on purpose: arq re-runs a job whose worker died once timeout + 10 s pass, and a send
job re-checks the message state before sending, so a short timeout bounds the gap."""


MAX_JOBS = 40
POLL_DELAY = 0.05
"""arq sleeps `poll_delay` between fetches of at most `max_jobs`: with its defaults (0.5 s,
10) a worker could never start more than 20 jobs a second."""


log = logging.getLogger(__name__)


class StoppingWorker(Worker):
    """arq's worker, stopping the way a mail sender must. On SIGTERM/SIGINT it takes no new
    job, wakes the jobs waiting for an SMTP connection (they put their message back to
    `queued` for the other workers), lets the SMTP transactions in flight and the other
    running jobs finish for up to `shutdown_grace` seconds, then cancels what is left (a
    message cut inside DATA becomes `unknown`, any other goes back to `queued`). A second
    signal stops at once."""

    _stopping = False

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq reads the head of the queue, where the jobs this worker is running still sit
        until they finish, and checks each in Redis (WATCH, EXISTS, ZSCORE) before skipping it:
        at hundreds of jobs a second that was most of the worker's Redis traffic. A job this
        worker is running is skipped without asking; arq's own check still guards the rest."""
        running = {job_id for job_id, task in self.tasks.items() if not task.done()}
        await super().start_jobs([job_id for job_id in job_ids if job_id.decode() not in running])

    def handle_sig(self, signum: Signals) -> None:
        rt: Runtime | None = self.ctx.get("runtime")
        if self._stopping or rt is None:
            super().handle_sig(signum)
            return
        self._stopping = True
        self.allow_pick_jobs = False
        rt.mailer.stop()
        log.info("stopping on %s: no new jobs; %d running get %.0f s to finish", Signals(signum).name,
                 sum(not t.done() for t in self.tasks.values()), rt.settings.shutdown_grace)
        self.loop.create_task(self._finish_then_stop(rt, signum))

    async def _finish_then_stop(self, rt: Runtime, signum: Signals) -> None:
        deadline = self.loop.time() + rt.settings.shutdown_grace
        while any(not t.done() for t in self.tasks.values()) and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        rt.mailer.grace = 0.0  # the grace is spent: what is still inside DATA is cut now
        super().handle_sig(signum)


def run() -> None:
    """`trigger-email worker`: the arq worker with `WorkerSettings`, stopping gracefully."""
    StoppingWorker(**get_kwargs(WorkerSettings)).run()  # type: ignore[arg-type]


def attach_adapters(rt: Runtime) -> None:
    """Give the runtime its connectors and extra sweep steps (core does not know them)."""
    from connectors.base import attach_connectors
    from core.engagement import sweep_steps

    attach_connectors(rt)
    rt.extras.setdefault("sweep_steps", sweep_steps())


async def startup(ctx: dict[str, Any]) -> None:
    if "runtime" not in ctx:
        rt = await build_runtime(Settings(), connect_redis=True)
        attach_adapters(rt)
        ctx["runtime"] = rt
        ctx["owns_runtime"] = True
        from core import live_config

        live_config.start(rt)  # `config reload` and SIGHUP reach this process


async def shutdown(ctx: dict[str, Any]) -> None:
    if ctx.get("owns_runtime"):
        from core import live_config

        await live_config.stop(ctx["runtime"])
        await ctx["runtime"].aclose()


class WorkerSettings:
    functions = FUNCTIONS
    cron_jobs = CRON_JOBS
    on_startup = startup
    on_shutdown = shutdown
    job_timeout = JOB_TIMEOUT
    max_jobs = MAX_JOBS
    poll_delay = POLL_DELAY
    max_tries = 5
    keep_result = 3600
    redis_settings = redis_settings(Settings().redis_url)


def make_worker(rt: Runtime, *, burst: bool = False, handle_signals: bool = True, **options: Any) -> Worker:
    """A worker that shares `rt` (dev mode and tests run it in the web process's loop)."""
    attach_adapters(rt)
    return StoppingWorker(
        functions=FUNCTIONS,
        cron_jobs=[] if burst else CRON_JOBS,
        redis_pool=rt.queue.redis,
        ctx={"runtime": rt},
        burst=burst,
        handle_signals=handle_signals,
        job_timeout=JOB_TIMEOUT,
        max_tries=5,
        keep_result=3600,
        max_jobs=MAX_JOBS,
        poll_delay=POLL_DELAY,
        **options,
    )
