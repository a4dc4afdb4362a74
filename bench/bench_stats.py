"""Campaign figures and the trigger log at scale.

1. `GET /v1/campaigns/{id}/stats?interval=day` over ROWS messages (default 1,000,000): time
   through the real app (in-process ASGI, API key, JSON), and the ratio to the same
   aggregates written by hand in SQL and run directly on the database (target ≤ 1.5).
2. `GET /v1/triggers?npi=…` first page (50 rows) with ROWS triggers over 100,000 HCPs:
   p50 / p99 (target < 50 ms).

Rows are generated inside the database (generate_series on PostgreSQL, a recursive CTE on
SQLite). PostgreSQL with TEST_DATABASE_URL, SQLite otherwise.

    python bench/bench_stats.py [ROWS] [ROUNDS]
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

import common  # noqa: F401  (sys.path)
from common import backend, database_url

import httpx
from sqlalchemy import text

from config import Settings, parse_config
from core.apikeys import create_key
from core.clock import Clock
from core.runtime import build_runtime
from core.schema import upgrade
from tests.harness import reset_database
from webhooks.app import create_app

CONFIG = parse_config(
    'sender: {from: "A <a@pharma.example>"}\n'
    'campaigns: [{id: c0, subject: S, html: "<p>x</p>"}, {id: c1, subject: S, html: "<p>x</p>"}]\n',
    base=Path("."),
)
HCPS = 100_000
"""At most; fewer with fewer rows, so every NPI has about ten triggers."""
SPAN_DAYS = 90


def fill_statements(dialect: str, rows: int, hcps: int) -> list[str]:
    """Triggers and messages made by the database itself: one message per trigger, 90% in
    campaign c0, sent over the last 90 days; a third opened by people, some by machines, a
    seventh clicked, 2% hard-bounced, a few unsubscribed."""
    if dialect == "postgresql":
        series = f"FROM generate_series(1, {rows}) AS g"
        npi = f"lpad((g % {hcps})::text, 10, '0')"
        moment = f"(timezone('utc', now()) - ((g::bigint * 7919) % ({SPAN_DAYS} * 86400)) * interval '1 second')"
        later = lambda seconds: f"({moment} + interval '{seconds} seconds')"  # noqa: E731
        ident = "g::text"
        data = "'{}'::json"
        prefix = ""
    else:
        prefix = f"WITH RECURSIVE seq(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM seq WHERE g < {rows}) "
        series = "FROM seq"
        npi = f"substr('0000000000' || (g % {hcps}), -10, 10)"
        moment = f"datetime('now', '-' || ((g * 7919) % ({SPAN_DAYS} * 86400)) || ' seconds')"
        later = lambda seconds: f"datetime({moment}, '+{seconds} seconds')"  # noqa: E731
        ident = "g"
        data = "'{}'"
    campaign = "CASE WHEN g % 10 = 0 THEN 'c1' ELSE 'c0' END"
    return [
        f"{prefix}INSERT INTO triggers (id, npi, campaign_id, data, source, status, reason, created_at, decided_at) "
        f"SELECT 'trg_' || {ident}, {npi}, {campaign}, {data}, 'api', 'sent', 'sent', {moment}, {moment} {series}",
        f"{prefix}INSERT INTO messages (id, trigger_id, npi, campaign_id, kind, seq, to_address, subject, status, attempts, "
        f"created_at, sent_at, opened_at, open_count, machine_opens, clicked_at, click_count, bounced_at, unsubscribed_at) "
        f"SELECT 'msg_' || {ident}, 'trg_' || {ident}, {npi}, {campaign}, 'initial', 0, 'hcp@example.org', 'S', 'sent', 1, "
        f"{moment}, {later(30)}, CASE WHEN g % 3 = 0 THEN {later(3600)} END, CASE WHEN g % 3 = 0 THEN 1 ELSE 0 END, "
        f"CASE WHEN g % 5 = 0 THEN 1 ELSE 0 END, CASE WHEN g % 7 = 0 THEN {later(3700)} END, CASE WHEN g % 7 = 0 THEN 1 ELSE 0 END, "
        f"CASE WHEN g % 50 = 0 THEN {later(600)} END, CASE WHEN g % 97 = 0 THEN {later(7200)} END {series}",
        "INSERT INTO engagement_events (message_id, kind, occurred_at) "
        "SELECT id, 'soft_bounce', sent_at FROM messages WHERE bounced_at IS NOT NULL",
    ]


def direct_statements(dialect: str, start: str, end: str, series_start: str, series_end: str) -> list[str]:
    """The endpoint's aggregates written out by hand: totals, statuses, outcomes, reports,
    and the four lines of the chart grouped by day."""
    day = (lambda column: f"date_trunc('day', {column})") if dialect == "postgresql" else (
        lambda column: f"strftime('%Y-%m-%d 00:00:00', {column})")
    inside = lambda column: f"{column} >= '{start}' AND {column} < '{end}'"  # noqa: E731
    # As the app writes it on SQLite: `+campaign_id` keeps the planner on one sequential pass.
    plus = "+" if dialect == "sqlite" else ""
    lines = " UNION ALL ".join(
        f"SELECT '{name}', {day(column)}, count(*) FROM messages WHERE {plus}campaign_id = 'c0' "
        f"AND {column} >= '{series_start}' AND {column} < '{series_end}' GROUP BY 2"
        for name, column in (("sent", "sent_at"), ("opened", "opened_at"), ("clicked", "clicked_at"), ("bounced", "bounced_at"))
    )
    return [
        "SELECT "
        f"count(CASE WHEN {inside('sent_at')} THEN 1 END), "
        f"count(CASE WHEN {inside('sent_at')} AND bounced_at IS NULL THEN 1 END), "
        f"count(CASE WHEN {inside('bounced_at')} THEN 1 END), count(CASE WHEN {inside('opened_at')} THEN 1 END), "
        f"count(CASE WHEN {inside('sent_at')} AND machine_opens > 0 THEN 1 END), "
        f"count(CASE WHEN {inside('clicked_at')} THEN 1 END), count(CASE WHEN {inside('unsubscribed_at')} THEN 1 END), "
        f"coalesce(sum(CASE WHEN {inside('opened_at')} THEN open_count END), 0), "
        f"coalesce(sum(CASE WHEN {inside('sent_at')} THEN machine_opens END), 0), "
        f"coalesce(sum(CASE WHEN {inside('clicked_at')} THEN click_count END), 0) "
        f"FROM messages WHERE {plus}campaign_id = 'c0'",
        f"SELECT status, count(*) FROM messages WHERE {plus}campaign_id = 'c0' AND {inside('created_at')} GROUP BY status",
        f"SELECT status, count(*) FROM triggers WHERE {plus}campaign_id = 'c0' AND {inside('created_at')} GROUP BY status",
        "SELECT e.kind, count(DISTINCT e.message_id) FROM engagement_events e JOIN messages m ON m.id = e.message_id "
        f"WHERE {plus}m.campaign_id = 'c0' AND e.kind IN ('soft_bounce', 'complaint') AND {inside('e.occurred_at')} GROUP BY e.kind",
        lines,
    ]


async def main(rows: int, rounds: int) -> None:
    url = database_url("stats")
    await reset_database(url)
    settings = Settings(database_url=url, redis_url="redis://127.0.0.1:1/0", smtp_url="smtp://127.0.0.1:1",
                        secret_key="bench-secret-key-bench-secret-key")
    rt = await build_runtime(settings, config=CONFIG, connect_redis=False)
    await upgrade(rt.db)
    dialect = "postgresql" if url.startswith("postgres") else "sqlite"
    hcps = max(1, min(HCPS, rows // 10))
    began = time.perf_counter()
    async with rt.db.begin() as connection:
        for statement in fill_statements(dialect, rows, hcps):
            await connection.execute(text(statement))
    async with rt.db.engine.connect() as connection:
        if dialect == "postgresql":
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text("VACUUM ANALYZE"))
        else:
            await connection.execute(text("ANALYZE"))
    print(f"{backend(url)}: {rows:,} triggers and {rows:,} messages generated in {time.perf_counter() - began:.0f} s")

    key = await create_key(rt.db, "bench", Clock().now())
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(rt)), base_url="http://bench",
                               headers={"Authorization": f"Bearer {key}"})
    now = Clock().now()
    first = (now - timedelta(days=SPAN_DAYS)).date()
    last = now.date() + timedelta(days=1)
    params = {"interval": "day", "from": first.isoformat(), "to": last.isoformat()}
    sql_from, sql_to = f"{first.isoformat()} 00:00:00", f"{last.isoformat()} 00:00:00"
    direct = direct_statements(dialect, sql_from, sql_to, sql_from, sql_to)

    async def app_once() -> float:
        started = time.perf_counter()
        response = await client.get("/v1/campaigns/c0/stats", params=params)
        elapsed = time.perf_counter() - started
        assert response.status_code == 200, response.text
        return elapsed

    async def direct_once() -> tuple[float, int]:
        started = time.perf_counter()
        async with rt.db.connect() as connection:
            results = [(await connection.execute(text(statement))).all() for statement in direct]
        return time.perf_counter() - started, int(results[0][0][0])

    body = (await client.get("/v1/campaigns/c0/stats", params=params)).json()
    _, direct_sent = await direct_once()
    assert body["sent"] == direct_sent, (body["sent"], direct_sent)
    assert sum(point["sent"] for point in body["series"]["points"]) == direct_sent
    app_times, direct_times = [], []
    for _ in range(rounds):  # interleaved, so both see the same machine load
        app_times.append(await app_once())
        direct_times.append((await direct_once())[0])
    app_ms, direct_ms = statistics.median(app_times) * 1000, statistics.median(direct_times) * 1000
    print(f"stats interval=day over {body['sent']:,} sent messages of c0 ({len(body['series']['points'])} days): "
          f"app {app_ms:.0f} ms, direct SQL {direct_ms:.0f} ms, ratio {app_ms / direct_ms:.2f} (target <= 1.5); "
          f"median of {rounds}")

    chance = random.Random(3)
    samples = []
    for npi in [str(chance.randrange(hcps)).zfill(10) for _ in range(20)]:  # warm-up
        await client.get("/v1/triggers", params={"npi": npi})
    for npi in [str(chance.randrange(hcps)).zfill(10) for _ in range(300)]:
        started = time.perf_counter()
        response = await client.get("/v1/triggers", params={"npi": npi})
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200 and response.json()["triggers"], response.text
    samples.sort()
    print(f"trigger log first page by NPI ({rows // hcps} triggers per NPI, {rows:,} triggers): "
          f"p50 {samples[len(samples) // 2]:.1f} ms, p99 {samples[int(len(samples) * 0.99)]:.1f} ms (target < 50 ms)")
    await client.aclose()
    await rt.aclose()


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    asyncio.run(main(count, repeat))
