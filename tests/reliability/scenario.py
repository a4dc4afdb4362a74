"""One fault-injection run: start the cluster, drive it through HTTP, inject a fault, wait
until everything settled, then check from the database and the SMTP server's inbox that
every accepted trigger was decided, no HCP got a duplicate, no email and no CRM activity was
lost or pushed twice, and record the figures in tests/artifacts/reliability.json (and the
table in tests/artifacts/reliability.md)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from core.apikeys import create_key
from core.clock import Clock
from core.db import Database, inbound_events, messages, outbox, triggers
from core.directory import import_csv
from core.schema import upgrade
from tests.reliability.cluster import (
    ARTIFACTS, CAMPAIGN, Cluster, FakeCrm, Inbox, RedisServer, config_text, directory_csv, eventually, hcp_npis,
    hubspot_event, hubspot_headers,
)

IN_FLIGHT_TRIGGERS = ("pending",)
IN_FLIGHT_MESSAGES = ("queued", "sending", "promoting")
TERMINAL_MESSAGES = ("sent", "failed", "cancelled", "unknown")


class Scenario:
    def __init__(self, name: str, *, database_url: str, redis: RedisServer, inbox: Inbox, workdir: Path,
                 crm: FakeCrm | None = None, hcps: int = 120, serves: int = 2, workers: int = 2,
                 app_database_url: str | None = None, **env: str):
        self.name, self.database_url, self.redis, self.inbox, self.workdir = name, database_url, redis, inbox, workdir
        self.crm, self.hcp_count, self.serve_count, self.worker_count, self.extra_env = crm, hcps, serves, workers, env
        self.app_database_url = app_database_url or database_url  # what serve and worker use (e.g. through PgBouncer)
        self.npis = hcp_npis(hcps)
        self.accepted: set[str] = set()  # trigger ids answered 202
        self.events: set[int] = set()  # HubSpot event ids answered 200
        self.started = 0.0
        self.fault_over = 0.0
        self.notes: list[str] = []

    async def __aenter__(self) -> "Scenario":
        self.db = Database(self.database_url)
        await upgrade(self.db)
        self.owners = directory_csv(self.workdir / "directory.csv", self.hcp_count)
        await import_csv(self.db, self.workdir / "directory.csv", now=Clock().now())
        self.api_key = await create_key(self.db, "reliability", Clock().now())
        self.cluster = Cluster(
            self.workdir, database_url=self.app_database_url, redis=self.redis, smtp_url=self.inbox.url,  # type: ignore[attr-defined]
            config=config_text(crm_url=self.crm.url if self.crm else None), serves=self.serve_count,
            SENDING_STUCK_AFTER="20", **self.extra_env,
        )
        await self.cluster.start(workers=self.worker_count)
        self.client = httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200))
        self.started = time.monotonic()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.client.aclose()
        self.cluster.close()
        await self.db.dispose()

    # --- driving it -----------------------------------------------------------------------------

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    async def trigger(self, npi: str, *, serve: int = 0, key: str | None = None, retry_for: float = 0.0) -> str:
        """POST /v1/triggers; with `retry_for`, retry (same Idempotency-Key) on errors as a client would."""
        headers = {**self.auth, **({"Idempotency-Key": key} if key else {})}
        deadline = time.monotonic() + retry_for
        while True:
            try:
                response = await self.client.post(
                    f"{self.cluster.urls[serve]}/v1/triggers", json={"npi": npi, "campaign_id": CAMPAIGN}, headers=headers
                )
                if response.status_code == 202:
                    trigger_id = response.json()["id"]
                    self.accepted.add(trigger_id)
                    return trigger_id
                error = f"{response.status_code} {response.text[:200]}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise AssertionError(f"trigger for {npi} not accepted: {error}")
            await asyncio.sleep(0.2)

    async def hubspot(self, events: list[dict[str, Any]], *, serve: int = 0, retry_for: float = 30.0) -> None:
        """Deliver a HubSpot webhook batch until it is acknowledged (HubSpot retries non-2xx)."""
        body = json.dumps(events).encode()
        deadline = time.monotonic() + retry_for
        while True:
            try:
                response = await self.client.post(
                    f"{self.cluster.urls[serve]}/webhooks/hubspot", content=body, headers=hubspot_headers(body)
                )
                if response.status_code == 200:
                    self.events.update(event["eventId"] for event in events)
                    return
                error = f"{response.status_code} {response.text[:200]}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise AssertionError(f"webhook not acknowledged: {error}")
            await asyncio.sleep(0.5)

    @staticmethod
    def event(event_id: int, npi: str) -> dict[str, Any]:
        return hubspot_event(event_id, 9_000_000 + event_id, npi)

    # --- settling and checking -------------------------------------------------------------------

    async def counts(self) -> dict[str, Any]:
        async with self.db.connect() as connection:
            t = dict((await connection.execute(select(triggers.c.status, func.count()).group_by(triggers.c.status))).all())
            m = dict((await connection.execute(select(messages.c.status, func.count()).group_by(messages.c.status))).all())
            e = dict((await connection.execute(select(inbound_events.c.status, func.count()).group_by(inbound_events.c.status))).all())
            o = dict((await connection.execute(select(outbox.c.status, func.count()).group_by(outbox.c.status))).all())
        return {"triggers": t, "messages": m, "events": e, "outbox": o}

    async def is_settled(self) -> bool:
        c = await self.counts()
        if any(c["triggers"].get(s) for s in IN_FLIGHT_TRIGGERS):
            return False
        if any(c["messages"].get(s) for s in IN_FLIGHT_MESSAGES):
            return False
        if c["events"].get("pending") or c["events"].get("processing"):
            return False
        if self.events and sum(c["events"].values()) < len(self.events):
            return False
        if self.crm is not None and (c["outbox"].get("pending") or not c["outbox"]):
            return False
        return True

    def fault_healed(self) -> None:
        """The moment the last fault stopped: the settle time counts from here."""
        self.fault_over = time.monotonic()

    async def settle(self, timeout: float = 240) -> float:
        if not self.fault_over:
            self.fault_healed()

        async def done() -> bool:
            return await self.is_settled()

        try:
            await eventually(done, timeout, f"{self.name}: settling", every=0.5)
        except AssertionError:
            raise AssertionError(f"{self.name}: not settled in {timeout} s: {await self.counts()}\n{self.cluster.tail()}") from None
        return time.monotonic() - self.fault_over

    async def verify(self, *, settle_timeout: float = 240, allow_unknown: bool = False, expect_all_sent: bool = True) -> dict[str, Any]:
        settled_in = await self.settle(settle_timeout)
        await asyncio.sleep(1.0)  # anything still arriving would be a duplicate: give it a moment
        async with self.db.connect() as connection:
            trigger_rows = [dict(r) for r in (await connection.execute(select(triggers.c.id, triggers.c.npi, triggers.c.status))).mappings()]
            message_rows = [dict(r) for r in (await connection.execute(
                select(messages.c.id, messages.c.trigger_id, messages.c.npi, messages.c.to_address, messages.c.status, messages.c.error)
            )).mappings()]
            event_rows = [dict(r) for r in (await connection.execute(select(inbound_events.c.id, inbound_events.c.status, inbound_events.c.result))).mappings()]
            outbox_rows = [dict(r) for r in (await connection.execute(select(outbox.c.id, outbox.c.status, outbox.c.kind))).mappings()]
        by_trigger = {row["id"]: row for row in trigger_rows}
        received = self.inbox.count_by_recipient()
        per_hcp = Counter(self.owners.get(address, address) for address, count in received.items() for _ in range(count))

        # every accepted trigger was decided (a message cut off inside SMTP is `unknown`, shown to an operator)
        missing = [tid for tid in self.accepted if tid not in by_trigger]
        assert not missing, f"accepted but not stored: {missing[:5]}"
        undecided = [row for row in trigger_rows if row["status"] == "pending"]
        assert not undecided, f"undecided: {undecided[:5]}"
        unsettled_events = [row for row in event_rows if row["status"] not in ("done", "failed")]
        assert not unsettled_events and len(event_rows) >= len(self.events), (event_rows[:5], len(self.events))
        # no HCP got a duplicate
        duplicated = sum(count - 1 for count in per_hcp.values() if count > 1)
        assert duplicated == 0, f"duplicates: {[(npi, n) for npi, n in per_hcp.items() if n > 1][:10]}"
        # no email lost: every `sent` message reached the server, every email received is a sent (or unknown) message
        sent = [row for row in message_rows if row["status"] == "sent"]
        unknown = [row for row in message_rows if row["status"] == "unknown"]
        lost = [row for row in sent if received.get(row["to_address"], 0) == 0]
        assert not lost, f"marked sent, never received: {lost[:5]}"
        known = {row["to_address"] for row in sent + unknown}
        phantom = [address for address in received if address not in known]
        assert not phantom, f"received but not sent according to the database: {phantom[:5]}"
        if not allow_unknown:
            assert not unknown, f"unknown: {unknown[:5]}"
        if expect_all_sent:
            hcps_triggered = {row["npi"] for row in trigger_rows}
            not_sent = hcps_triggered - {row["npi"] for row in sent} - {row["npi"] for row in unknown}
            assert not not_sent, f"HCPs triggered but never sent to: {sorted(not_sent)[:5]} {await self.counts()}"
        crm_figures: dict[str, Any] = {}
        if self.crm is not None:
            assert outbox_rows and all(row["status"] == "pushed" for row in outbox_rows), Counter(r["status"] for r in outbox_rows)
            stored = self.crm.stored
            twice = {aid: a["times"] for aid, a in stored.items() if a["times"] > 1}
            assert not twice, f"CRM activities stored twice: {list(twice.items())[:5]}"
            not_in_crm = {row["id"] for row in outbox_rows} - set(stored)
            assert not not_in_crm, f"pushed but not in the CRM: {sorted(not_in_crm)[:5]}"
            crm_figures = {"crm_activities": len(stored), "crm_deliveries": len(self.crm.deliveries),
                           "crm_repeats_dropped": self.crm.duplicates_dropped}
        figures = {
            "scenario": self.name,
            "accepted": len(self.accepted) or len(self.events),
            "triggers": len(trigger_rows),
            "sent": len(sent),
            "received": sum(received.values()),
            "lost": len(lost),
            "duplicated": duplicated,
            "unknown": len(unknown),
            "outcomes": dict(Counter(row["status"] for row in trigger_rows)),
            "settle_seconds": round(settled_in, 1),
            "run_seconds": round(time.monotonic() - self.started, 1),
            "smtp_refusals": dict(self.inbox.refused),
            **crm_figures,
            "notes": self.notes,
        }
        record(figures)
        return figures


def record(figures: dict[str, Any]) -> None:
    """Merge this scenario's figures into tests/artifacts/reliability.json and rewrite the table."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "reliability.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[figures["scenario"]] = {**figures, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                 "database": "PostgreSQL", "cpus": os.cpu_count()}
    _replace(path, json.dumps(data, indent=2, sort_keys=True))
    _replace(ARTIFACTS / "reliability.md", table(data))


def _replace(path: Path, text: str) -> None:
    """Write whole or not at all: two suites running side by side read each other's file."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(text)
    os.replace(partial, path)


def table(data: dict[str, Any]) -> str:
    lines = [
        "| scenario | accepted | sent | lost | duplicated | unknown | settle time |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in sorted(data):
        f = data[name]
        lines.append(f"| {name} | {f['accepted']} | {f['sent']} | {f['lost']} | {f['duplicated']} | {f['unknown']} | "
                     f"{f['settle_seconds']:.0f} s |")
    return "\n".join(lines) + "\n"
