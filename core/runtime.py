"""What a running process holds: settings, config, database, clock, queue, mailer.

The web app and the worker each build one `Runtime`; every core function takes it, so there
is one clock and one config per process and tests can swap the clock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from arq import create_pool

from config import Config, Settings, load_config
from core.clock import Clock
from core.db import Database
from core.mailer import DkimSigner, Mailer, SmtpTarget
from core.queue import JobQueue, redis_settings

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    config: Config
    db: Database
    clock: Clock
    queue: JobQueue
    mailer: Mailer
    extras: dict[str, Any] = field(default_factory=dict)
    """Adapters attach their own things here (connectors, metrics) without core naming them."""

    async def aclose(self) -> None:
        # The CRM connectors an adapter attached (core does not know them, only that they close).
        for connector in self.extras.pop("connectors", {}).values():
            await connector.aclose()
        leases = self.extras.get("leases")
        if leases is not None:
            leases.close()
        attachment_http = self.extras.pop("attachment_http", None)
        if attachment_http is not None:
            await attachment_http.aclose()
        await self.mailer.aclose()
        if self.queue.redis is not None:
            await self.queue.redis.aclose()
        await self.db.dispose()


def dkim_signer(config: Config) -> DkimSigner | None:
    dkim = config.sender.dkim
    if dkim is None:
        return None
    with open(dkim.private_key_file, "rb") as handle:
        return DkimSigner(domain=dkim.domain, selector=dkim.selector, private_key=handle.read())


async def build_runtime(
    settings: Settings | None = None,
    *,
    config: Config | None = None,
    clock: Clock | None = None,
    connect_redis: bool = True,
) -> Runtime:
    settings = settings or Settings()
    config = config or load_config(settings.trigger_email_config)
    redis = await create_pool(redis_settings(settings.redis_url)) if connect_redis else None
    return Runtime(
        settings=settings,
        config=config,
        db=Database(settings.database_url, pgbouncer=settings.database_pgbouncer),
        clock=clock or Clock(),
        queue=JobQueue(redis),
        mailer=Mailer(
            SmtpTarget.from_url(settings.smtp_url, timeout=settings.smtp_timeout), dkim=dkim_signer(config),
            grace=settings.shutdown_grace, pool_size=config.delivery.connections, max_messages=config.delivery.max_messages,
            idle_timeout=config.delivery.idle_timeout.total_seconds(),
        ),
    )
