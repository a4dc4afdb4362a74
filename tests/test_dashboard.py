"""The dashboard in-process: login, sessions, CSRF, the lock after wrong passwords, pages
without a session, and `trigger-email user create|list|delete`. The browser tests
(tests/test_console_browser.py) drive the same pages in Chromium against `trigger-email dev`."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from core.users import create_user, verify_password
from tests.harness import JANE, Harness
from trigger_email.cli import app

EMAIL, PASSWORD = "ops@pharma.example", "correct horse battery"
PAGES = ["/dashboard", "/dashboard/campaigns", "/dashboard/campaigns/asthma-launch", "/dashboard/triggers",
         "/dashboard/triggers/trg_x", "/dashboard/events", "/dashboard/events/1", "/dashboard/outbox", "/dashboard/mail",
         "/dashboard/mail/x"]
POSTS = ["/dashboard/campaigns/asthma-launch/pause", "/dashboard/outbox/retry", "/dashboard/logout"]


async def login(client: httpx.AsyncClient, email: str = EMAIL, password: str = PASSWORD) -> httpx.Response:
    form = await client.get("/dashboard/login")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    return await client.post("/dashboard/login", data={"email": email, "password": password, "csrf": token})


def csrf_of(page: httpx.Response) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]


@pytest.fixture
async def user(harness: Harness) -> None:
    await create_user(harness.rt.db, EMAIL, PASSWORD, harness.clock.now())


async def test_no_page_and_no_form_without_a_session(harness: Harness, user: None) -> None:
    for path in PAGES:
        response = await harness.client.get(path)
        if path == "/dashboard":
            response = await harness.client.get(response.headers["location"])
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/dashboard/login?next=/dashboard"), path
    for path in POSTS:
        response = await harness.client.post(path, data={"csrf": "x"})
        assert response.status_code == 303 and "/dashboard/login" in response.headers["location"], path
    harness.client.cookies.set("te_session", "eyJ1IjoxLCJjIjoiYSJ9.forged.signature", domain="trigger.pharma.example", path="/dashboard")
    response = await harness.client.get("/dashboard/campaigns")
    assert response.status_code == 303


async def test_login_sets_a_safe_cookie_and_logout_ends_it(harness: Harness, user: None) -> None:
    response = await login(harness.client)
    assert response.status_code == 303 and response.headers["location"] == "/dashboard/campaigns"
    cookie = next(value for name, value in response.headers.multi_items() if name == "set-cookie" and value.startswith("te_session="))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" in cookie and "Path=/dashboard" in cookie
    page = await harness.client.get("/dashboard/campaigns")
    assert page.status_code == 200 and "asthma-launch" in page.text and EMAIL in page.text
    out = await harness.client.post("/dashboard/logout", data={"csrf": csrf_of(page)})
    assert out.status_code == 303
    assert (await harness.client.get("/dashboard/campaigns")).status_code == 303


async def test_cookie_is_not_secure_on_plain_http(harness: Harness, user: None) -> None:
    harness.rt.config = harness.rt.config.model_copy(update={"public_url": "http://127.0.0.1:8000"})
    response = await login(harness.client)
    cookie = next(value for name, value in response.headers.multi_items() if name == "set-cookie" and value.startswith("te_session="))
    assert "Secure" not in cookie and "HttpOnly" in cookie


async def test_wrong_password_is_refused_with_a_message_then_locked(harness: Harness, user: None) -> None:
    wrong = await login(harness.client, password="not the password")
    assert wrong.status_code == 401 and "Wrong email or password." in wrong.text
    unknown = await login(harness.client, email="nobody@pharma.example")
    assert unknown.status_code == 401 and "Wrong email or password." in unknown.text
    for _ in range(4):
        await login(harness.client, password="still wrong")
    locked = await login(harness.client)  # the right password, too late
    assert locked.status_code == 429 and "Too many failed logins" in locked.text
    assert (await harness.client.get("/dashboard/campaigns")).status_code == 303


async def test_login_form_without_its_csrf_token_is_refused(harness: Harness, user: None) -> None:
    await harness.client.get("/dashboard/login")
    response = await harness.client.post("/dashboard/login", data={"email": EMAIL, "password": PASSWORD})
    assert response.status_code == 403 and "CSRF" in response.text
    assert (await harness.client.get("/dashboard/campaigns")).status_code == 303


async def test_pause_needs_the_csrf_token_and_then_the_next_trigger_is_paused(harness: Harness, user: None) -> None:
    await login(harness.client)
    page = await harness.client.get("/dashboard/campaigns/asthma-launch")
    assert "Pause campaign" in page.text and "<svg" in page.text
    refused = await harness.client.post("/dashboard/campaigns/asthma-launch/pause", data={})
    assert refused.status_code == 403 and "CSRF" in refused.text
    wrong = await harness.client.post("/dashboard/campaigns/asthma-launch/pause", data={"csrf": "guess"})
    assert wrong.status_code == 403
    assert (await harness.send(JANE))["status"] == "sent"  # still live
    done = await harness.client.post("/dashboard/campaigns/asthma-launch/pause", data={"csrf": csrf_of(page)})
    assert done.status_code == 303
    page = await harness.client.get("/dashboard/campaigns/asthma-launch")
    assert "Resume campaign" in page.text
    harness.clock.advance(timedelta(days=40))
    assert (await harness.send(JANE))["status"] == "campaign_paused"


async def test_trail_page_says_cooldown_and_when_it_ends(harness: Harness, user: None) -> None:
    await harness.send(JANE)
    harness.clock.advance(timedelta(days=1))
    cooled = await harness.send(JANE)
    await login(harness.client)
    listing = await harness.client.get("/dashboard/triggers", params={"npi": JANE})
    assert cooled["id"] in listing.text
    page = await harness.client.get(f"/dashboard/triggers/{cooled['id']}")
    assert page.status_code == 200
    assert 'data-check="cooldown"' in page.text and "2026-02-04 09:00:00 UTC" in page.text


async def test_user_commands(harness: Harness, tmp_path: Path) -> None:
    env = {"DATABASE_URL": harness.rt.settings.database_url}
    runner = CliRunner()
    created = await asyncio.to_thread(runner.invoke, app, ["user", "create", "Admin@Pharma.example", "--generate"], env=env)
    assert created.exit_code == 0, created.output
    shown = re.match(r"Dashboard login: (\S+) / (\S+)", created.output)
    assert shown and shown.group(1) == "admin@pharma.example"
    asked = await asyncio.to_thread(
        runner.invoke, app, ["user", "create", "second@pharma.example"], input="a long passphrase\na long passphrase\n", env=env
    )
    assert asked.exit_code == 0 and "a long passphrase" not in asked.output
    again = await asyncio.to_thread(runner.invoke, app, ["user", "create", "second@pharma.example", "--generate"], env=env)
    assert again.exit_code == 1 and "exists" in again.output
    short = await asyncio.to_thread(runner.invoke, app, ["user", "create", "third@pharma.example"], input="short\nshort\n", env=env)
    assert short.exit_code == 2 and "at least 10" in short.output
    bad = await asyncio.to_thread(runner.invoke, app, ["user", "create", "not-an-address", "--generate"], env=env)
    assert bad.exit_code == 2 and "EMAIL" in bad.output
    listed = await asyncio.to_thread(runner.invoke, app, ["user", "list"], env=env)
    assert "admin@pharma.example" in listed.output and "second@pharma.example" in listed.output
    async with harness.rt.db.connect() as connection:
        from sqlalchemy import select

        from core.db import dashboard_users

        stored = (await connection.execute(select(dashboard_users.c.password_hash).where(dashboard_users.c.email == "second@pharma.example"))).scalar_one()
    assert stored.startswith("scrypt$") and "a long passphrase" not in stored and verify_password("a long passphrase", stored)
    assert (await login(harness.client, "admin@pharma.example", shown.group(2))).status_code == 303
    deleted = await asyncio.to_thread(runner.invoke, app, ["user", "delete", "admin@pharma.example"], env=env)
    assert deleted.exit_code == 0
    assert (await harness.client.get("/dashboard/campaigns")).status_code == 303  # the session's user is gone
    missing = await asyncio.to_thread(runner.invoke, app, ["user", "delete", "admin@pharma.example"], env=env)
    assert missing.exit_code == 1


async def test_metrics_need_a_token_outside_dev(harness: Harness) -> None:
    assert (await harness.client.get("/metrics")).status_code == 401
    assert (await harness.client.get("/metrics", headers={"Authorization": "Bearer nope"})).status_code == 401
    await harness.send(JANE)
    text = (await harness.client.get("/metrics", headers=harness.auth)).text
    assert 'trigger_email_campaign_emails{campaign="asthma-launch",figure="sent"} 1.0' in text
    assert "trigger_email_queue_depth 0.0" in text
    harness.rt.settings.metrics_token = "scrape-token-0123456789"
    assert (await harness.client.get("/metrics", headers={"Authorization": "Bearer scrape-token-0123456789"})).status_code == 200
    harness.rt.settings.metrics_token = ""
    harness.rt.settings.dev = True
    assert (await harness.client.get("/metrics")).status_code == 200
    harness.rt.settings.metrics_token = "scrape-token-0123456789"
    assert (await harness.client.get("/metrics")).status_code == 401


async def test_trigger_log_pages_newest_first(harness: Harness, user: None) -> None:
    made = []
    for _ in range(30):
        made.append((await harness.trigger(JANE))["id"])
        harness.clock.advance(timedelta(seconds=1))
    await login(harness.client)
    first = await harness.client.get("/dashboard/triggers", params={"npi": JANE})
    shown = re.findall(r'href="/dashboard/triggers/(trg_\w+)"', first.text)
    assert list(dict.fromkeys(shown)) == made[::-1][:25]
    older = re.search(r'href="([^"]+)" rel="next"', first.text).group(1).replace("&amp;", "&")  # type: ignore[union-attr]
    assert f"npi={JANE}" in older
    second = await harness.client.get("/dashboard/triggers" + older)
    assert list(dict.fromkeys(re.findall(r'href="/dashboard/triggers/(trg_\w+)"', second.text))) == made[::-1][25:]
    assert 'rel="next"' not in second.text and "Newest" in second.text


async def test_the_to_date_of_a_search_includes_that_day(harness: Harness, user: None) -> None:
    made = (await harness.trigger(JANE))["id"]  # 2026-01-05 09:00 UTC
    await login(harness.client)
    same_day = await harness.client.get("/dashboard/triggers", params={"from": "2026-01-05", "to": "2026-01-05"})
    assert made in same_day.text
    before = await harness.client.get("/dashboard/triggers", params={"to": "2026-01-04"})
    assert made not in before.text and "No trigger matches." in before.text
    bad = await harness.client.get("/dashboard/triggers", params={"from": "someday"})
    assert bad.status_code == 200 and "from: from must be an ISO 8601 date" in bad.text
