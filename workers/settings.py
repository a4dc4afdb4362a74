"""arq `WorkerSettings` for `trigger-email worker`, and the same pieces for `dev`."""

from __future__ import annotations

import asyncio
import logging
from contextvars import ContextVar
from signal import Signals
from typing import Any

from arq import cron
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.utils import timestamp_ms
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

TAKE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[2]) then return false end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[3]) then
  redis.call('DEL', KEYS[1])
  return false
end
local job = redis.call('GET', KEYS[3])
local try = redis.call('INCR', KEYS[4])
redis.call('EXPIRE', KEYS[4], 88400)
return {score, job, try}
"""
"""Take a queued job (KEYS: in-progress, queue, job, retry; ARGV: job id, in-progress
timeout in ms, now in ms): {score, job, try}, or nil when it is not this worker's to run.
GET, INCR and EXPIRE (88400 s) are the reads arq's `run_job` starts with."""
_TAKEN: ContextVar[tuple[bytes | None, int] | None] = ContextVar("trigger_email_taken_job", default=None)


class _TakenPool:
    """Serves `run_job`'s opening pipeline (GET job, INCR retries, EXPIRE retries) from
    what `TAKE` read, once; after it, the job sees arq's pool again."""

    def __init__(self, taken: tuple[bytes | None, int]):
        self.taken = taken

    def pipeline(self, transaction: bool = True) -> "_TakenPipeline":
        _TAKEN.set(None)
        return _TakenPipeline(self.taken)


class _TakenPipeline:
    def __init__(self, taken: tuple[bytes | None, int]):
        self.taken = taken
        self.commands: list[str] = []

    async def __aenter__(self) -> "_TakenPipeline":
        return self

    async def __aexit__(self, *_exc: Any) -> None:
        return None

    def get(self, _key: str) -> None:
        self.commands.append("get")

    def incr(self, _key: str) -> None:
        self.commands.append("incr")

    def expire(self, _key: str, _seconds: int) -> None:
        self.commands.append("expire")

    async def execute(self) -> list[Any]:
        if self.commands != ["get", "incr", "expire"]:
            raise RuntimeError(f"arq's run_job opened with {self.commands}, not the reads TAKE made")
        job, job_try = self.taken
        return [job, job_try, True]


class StoppingWorker(Worker):
    """arq's worker, stopping the way a mail sender must. On SIGTERM/SIGINT it takes no new
    job, wakes the jobs waiting for an SMTP connection (they put their message back to
    `queued` for the other workers), lets the SMTP transactions in flight and the other
    running jobs finish for up to `shutdown_grace` seconds, then cancels what is left (a
    message cut inside DATA becomes `unknown`, any other goes back to `queued`). A second
    signal stops at once."""

    _stopping = False
    _take: Any = None

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's `start_jobs` and the first read of its `run_job` in one Redis round trip per
        job instead of five.

        arq takes a job with WATCH in-progress key, EXISTS, ZSCORE, then MULTI/PSETEX/EXEC,
        and `run_job` then reads the job and counts the try in a pipeline of its own. Here
        one script (`TAKE`) does all of it atomically: `SET in-progress-key NX PX` (the atomic
        form of arq's watched check: another worker holds the job, not taken), the score
        (a job no longer queued or not yet due lets go of the key), then GET job, INCR
        retries, EXPIRE retries as `run_job` would, and `run_job` is served what was read
        (`pool` below). A job this worker runs is skipped without asking. The slot accounting
        (`sem`, `job_counter`, `tasks`) and the rest of `run_job` are arq's own. At hundreds
        of jobs a second these round trips were a fifth of the worker's CPU."""
        if self.allow_abort_jobs:  # run_job then reads the abort set too: arq's own way
            await super().start_jobs(job_ids)
            return
        running = {job_id for job_id, task in self.tasks.items() if not task.done()}
        take = self._take_script()
        for job_id_b in job_ids:
            job_id = job_id_b.decode()
            if job_id in running:
                continue
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return
            self.job_counter += 1
            taken = await take(
                keys=[in_progress_key_prefix + job_id, self.queue_name, job_key_prefix + job_id, retry_key_prefix + job_id],
                args=[job_id, int(self.in_progress_timeout_s * 1000), timestamp_ms()],
            )
            if not taken:
                self.job_counter -= 1
                self.sem.release()
                continue
            score, job, job_try = taken
            token = _TAKEN.set((job, int(job_try)))
            try:
                task = self.loop.create_task(self.run_job(job_id, int(float(score))))
            finally:
                _TAKEN.reset(token)
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    def _take_script(self) -> Any:
        if self._take is None:
            self._take = self._pool.register_script(TAKE)  # type: ignore[union-attr]
        return self._take

    @property  # type: ignore[override]
    def pool(self) -> Any:
        """arq's pool; inside a job just taken, until `run_job`'s first pipeline, a pool that
        serves that pipeline from what `TAKE` read."""
        taken = _TAKEN.get()
        if taken is None:
            return self._pool
        return _TakenPool(taken)

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
