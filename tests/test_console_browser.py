"""The dashboard in a real browser (Debian's Chromium through Playwright) against a real
`trigger-email dev` process, logged in with what `dev` prints: triggers fired through the API
and a signed HubSpot-style webhook, the campaign figures and chart moving, the trigger log
searched by NPI, a decision trail that says `cooldown` and when it ends, a campaign paused
from its page, a captured email opened, a dead-lettered CRM activity retried. Screenshots go
to tests/artifacts/ (git-ignored).

Also: `dev` stops cleanly on SIGTERM and leaves no redis-server behind."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import psutil
import pytest

from tests.fakes.fake_hubspot import FakeHubSpot

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HUBSPOT_TOKEN = "pat-na1-dev-console-test"
DEMO_NPI = "1234567893"


class Dev:
    """`trigger-email dev` as a subprocess; its stdout is read by a thread so it never blocks."""

    def __init__(self, data_dir: Path, env: dict[str, str]):
        clean = {k: v for k, v in os.environ.items()
                 if k not in ("SMTP_URL", "DATABASE_URL", "REDIS_URL", "TRIGGER_EMAIL_CONFIG", "PUBLIC_URL", "LOG_FORMAT")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "trigger_email", "dev", "--port", "0", "--data-dir", str(data_dir)],
            env={**clean, "LOG_LEVEL": "INFO", **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    @property
    def base(self) -> str:
        """`--port 0`: dev binds a port the kernel picks and prints its URL."""
        line = self.wait_for_line(lambda l: l.startswith("trigger-email dev is running at "))
        return line.removeprefix("trigger-email dev is running at ").split()[0]

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if predicate(line):
                    return line
            if self.process.poll() is not None:
                raise AssertionError("dev exited:\n" + "\n".join(self.lines))
            time.sleep(0.1)
        raise AssertionError("line not printed:\n" + "\n".join(self.lines))

    def ready(self) -> dict[str, str]:
        printed = {
            "key": self.wait_for_line(lambda l: l.startswith("API key: ")).removeprefix("API key: ").strip(),
            "login": self.wait_for_line(lambda l: l.startswith("Dashboard login: ")).removeprefix("Dashboard login: ").strip(),
            "dashboard": self.wait_for_line(lambda l: l.startswith("Dashboard: ")).removeprefix("Dashboard: ").strip(),
            "running": self.wait_for_line(lambda l: "captured mail:" in l),
            "api_curl": self.wait_for_line(lambda l: l.startswith("curl ") and "/v1/triggers" in l),
            "webhook_curl": self.wait_for_line(lambda l: l.startswith("curl ") and "/webhooks/hubspot" in l),
        }
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    return printed
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("dev did not become healthy")

    def stop(self, signum: int = signal.SIGINT) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        code = self.process.wait(timeout=30)
        self.reader.join(timeout=5)
        return code


def run_curl(line: str) -> dict[str, Any]:
    """Run a printed demo command as a person would paste it."""
    words = shlex.split(line)
    assert words[0] == "curl"
    result = subprocess.run(["curl", "-sS", *words[1:]], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait(predicate: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def hubspot() -> Iterator[FakeHubSpot]:
    with FakeHubSpot(token=HUBSPOT_TOKEN) as fake:
        yield fake


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_dashboard_in_a_browser(tmp_path: Path, hubspot: FakeHubSpot, browser: Any) -> None:
    hubspot.contacts["102"] = {"email": "x@practice.example"}
    # The first activity written back to HubSpot is refused for good: it is dead-lettered.
    hubspot.fail_input("1", "Property values were not valid: hs_email_subject")
    dev = Dev(tmp_path / "data", {"HUBSPOT_ACCESS_TOKEN": HUBSPOT_TOKEN, "HUBSPOT_BASE_URL": hubspot.url})
    try:
        printed = dev.ready()
        base = dev.base
        assert printed["dashboard"] == f"{base}/dashboard"
        assert f"captured mail: {base}/dashboard/mail" in printed["running"]
        email, password = printed["login"].split(" / ")
        auth = {"Authorization": f"Bearer {printed['key']}"}
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()

        # -- every page without a session goes to the login page
        for path in ("/dashboard", "/dashboard/campaigns", "/dashboard/campaigns/asthma-launch", "/dashboard/triggers",
                     "/dashboard/events", "/dashboard/outbox", "/dashboard/mail"):
            page.goto(base + path)
            assert "/dashboard/login" in page.url, path
            assert page.locator("input[name=email]").count() == 1 and page.locator("input[type=password]").count() == 1
        shot(page, "01-login")

        # -- a wrong password is refused with a message
        page.fill("input[name=email]", email)
        page.fill("input[name=password]", "not-the-password")
        page.click("button[type=submit]")
        assert page.locator(".error").inner_text() == "Wrong email or password."
        shot(page, "02-wrong-password")

        # -- log in with what dev printed
        page.fill("input[name=email]", email)
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        assert page.url.endswith("/dashboard/mail")  # where it was going before the login
        page.goto(f"{base}/dashboard/campaigns")
        row = page.locator("tr[data-campaign=asthma-launch]")
        assert row.locator("td.sent").inner_text() == "0"
        page.goto(f"{base}/dashboard/campaigns/asthma-launch")
        assert page.locator("#fig-sent").inner_text() == "0"
        assert page.locator("svg.chart circle[data-line=sent]").count() == 0

        # -- one trigger through the API, one through the signed HubSpot webhook (another HCP)
        assert run_curl(printed["api_curl"])["status"] == "pending"
        received = run_curl(printed["webhook_curl"])
        assert received["received"] == 1 and len(received["event_ids"]) == 1

        def triggers(**params: str) -> list[dict[str, Any]]:
            return httpx.get(f"{base}/v1/triggers", params=params, headers=auth).json()["triggers"]

        both = wait(lambda: [t for t in triggers(campaign_id="asthma-launch") if t["status"] == "sent"] if len(
            [t for t in triggers(campaign_id="asthma-launch") if t["status"] == "sent"]) == 2 else None, what="two sends")
        assert {t["source"] for t in both} == {"api", "hubspot"}
        webhook_npi = next(t["npi"] for t in both if t["source"] == "hubspot")
        assert webhook_npi != DEMO_NPI

        page.reload()
        assert page.locator("#fig-sent").inner_text() == "2"
        assert page.locator("#fig-triggers").inner_text() == "2"
        point = page.locator("svg.chart circle[data-line=sent]")
        assert point.count() == 1 and point.get_attribute("data-value") == "2"
        shot(page, "03-campaign")
        narrow = context.new_page()
        narrow.set_viewport_size({"width": 390, "height": 844})
        narrow.goto(f"{base}/dashboard/campaigns/asthma-launch")
        assert narrow.evaluate("document.documentElement.scrollWidth") <= 400
        shot(narrow, "04-campaign-narrow")
        narrow.goto(f"{base}/dashboard/triggers")
        shot(narrow, "05-triggers-narrow")
        narrow.close()

        # -- the same API call again ends in cooldown; find it by NPI and open its trail
        again = run_curl(printed["api_curl"])
        wait(lambda: httpx.get(f"{base}/v1/triggers/{again['id']}", headers=auth).json()["status"] == "cooldown", what="cooldown")
        page.goto(f"{base}/dashboard/triggers")
        page.fill("input[name=npi]", DEMO_NPI)
        page.click("form.filters button[type=submit]")
        assert f"npi={DEMO_NPI}" in page.url
        rows = page.locator("table.log tbody tr")
        assert rows.count() == 2
        assert webhook_npi not in page.locator("table.log").inner_text()
        shot(page, "06-trigger-log")
        page.locator("table.log tbody tr").first.locator("span.outcome").click()
        assert page.url.endswith(f"/dashboard/triggers/{again['id']}")
        cooldown = page.locator("li[data-check=cooldown]")
        assert "fail" in (cooldown.get_attribute("class") or "")
        until = cooldown.locator(".until").inner_text()
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", until)
        assert "cooldown 30d runs until" in cooldown.inner_text()
        assert page.locator("li[data-check=frequency_cap]").get_attribute("class") == "check not_reached"
        shot(page, "07-trail-cooldown")

        # the webhook trigger's trail names the source event and the rule
        hub = next(t for t in both if t["source"] == "hubspot")
        page.goto(f"{base}/dashboard/triggers/{hub['id']}")
        text = page.locator("main").inner_text()
        assert f"inbound event #{received['event_ids'][0]}" in text and "from hubspot on form_submission" in text
        assert "Payload fields used" in text and "email" in text
        shot(page, "08-trail-webhook")

        # -- pause from the page: the next trigger ends campaign_paused
        page.goto(f"{base}/dashboard/campaigns/asthma-launch")
        page.click("text=Pause campaign")
        assert page.locator("#campaign-state").inner_text() == "paused"
        paused = httpx.post(f"{base}/v1/triggers", json={"npi": webhook_npi, "campaign_id": "asthma-launch"}, headers=auth).json()
        wait(lambda: httpx.get(f"{base}/v1/triggers/{paused['id']}", headers=auth).json()["status"] == "campaign_paused",
             what="campaign_paused")
        page.goto(f"{base}/dashboard/triggers?status=campaign_paused")
        assert page.locator("table.log tbody tr").count() == 1
        page.goto(f"{base}/dashboard/campaigns/asthma-launch")
        assert page.locator("td[data-outcome=campaign_paused]").inner_text() == "1"
        shot(page, "09-campaign-paused")
        page.click("text=Resume campaign")
        assert page.locator("#campaign-state").inner_text() == "live"

        # -- a form without its CSRF token is refused
        refused = context.request.post(f"{base}/dashboard/campaigns/asthma-launch/pause", form={"x": "1"}, max_redirects=0)
        assert refused.status == 403
        page.reload()
        assert page.locator("#campaign-state").inner_text() == "live"

        # -- captured mail, as the HCP sees it
        page.goto(f"{base}/dashboard/mail")
        assert page.locator("table.log tbody tr").count() == 2
        page.locator("table.log tbody tr").last.locator("a").click()
        frame = page.frame_locator("iframe.mail")
        assert "Dear Dr. Doe" in frame.locator("body").inner_text()
        assert "Dear Dr. Doe" in page.locator("pre.mailtext").inner_text()
        assert page.locator("iframe.mail").get_attribute("sandbox") == ""
        shot(page, "10-captured-mail")

        # -- the dead-lettered activity, retried from the outbox page
        def dead() -> bool:
            page.goto(f"{base}/dashboard/outbox?status=dead")
            return page.locator("tr[data-outbox='1'] span.outcome").count() == 1
        wait(dead, timeout=40, what="a dead-lettered activity")
        assert "Property values were not valid" in page.locator("tr[data-outbox='1']").inner_text()
        shot(page, "11-outbox-dead")
        hubspot._failing_inputs.clear()
        page.locator("tr[data-outbox='1'] button").click()
        assert "1 activity put back in the queue" in page.locator(".notice").inner_text()

        def pushed() -> bool:
            page.goto(f"{base}/dashboard/outbox")
            return page.locator("tr[data-outbox='1'] span.outcome").inner_text() == "pushed"
        wait(pushed, timeout=40, what="the retried activity pushed")
        shot(page, "12-outbox-pushed")

        # -- inbound events: the webhook, the trigger it made
        page.goto(f"{base}/dashboard/events")
        event_row = page.locator("table.log tbody tr").first
        assert "hubspot" in event_row.inner_text() and hub["id"] in event_row.inner_text()
        assert "rule triggers[0]: from hubspot on form_submission" in event_row.inner_text()
        # the same webhook again: acknowledged as a duplicate, shown on the event, no new trigger
        assert run_curl(printed["webhook_curl"]) == {"received": 0, "duplicates": 1, "event_ids": received["event_ids"]}
        page.reload()
        assert "yes, 1 more time(s)" in page.locator("table.log tbody tr").first.inner_text()
        assert page.locator("table.log tbody tr").count() == 1
        shot(page, "13-events")
    finally:
        code = dev.stop()
    assert code == 0, "\n".join(dev.lines)
    # the console: one line per thing that matters, no routine job or SMTP chatter at INFO
    log = "\n".join(dev.lines)
    assert "cron:" not in log and "mail.log" not in log, log
    assert re.search(r"core\.decisions: trigger trg_\w+ → cooldown", log)
    assert "hubspot webhook stored 1 event(s)" in log
    assert "hubspot: 1 activity pushed" in log and "hubspot: 1 activity dead-lettered" in log
    assert re.search(r"core\.sending: message msg_\w+ sent to jane\.doe@clinic\.example", log)


def redis_servers_in(data_dir: Path) -> list[psutil.Process]:
    """The embedded redis-server daemonizes (its parent is init, not dev); it works in the data dir."""
    found = []
    for process in psutil.process_iter(["name"]):
        try:
            if "redis-server" in (process.info["name"] or "") and Path(process.cwd()) == data_dir.resolve():
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_dev_stops_on_sigterm_and_leaves_no_redis_server(tmp_path: Path) -> None:
    dev = Dev(tmp_path / "data", {"LOG_FORMAT": "json"})
    try:
        dev.ready()
        redis = redis_servers_in(tmp_path / "data")
        assert len(redis) == 1
    finally:
        code = dev.stop(signal.SIGTERM)
    assert code == 0, "\n".join(dev.lines)
    assert "trigger-email dev stopped" in dev.lines
    psutil.wait_procs(redis, timeout=10)
    assert not redis_servers_in(tmp_path / "data")
    # LOG_FORMAT=json is honoured under dev too: every log line is a JSON object
    logs = [line for line in dev.lines if line.startswith("{")]
    assert logs and all(json.loads(line)["level"] for line in logs)
    assert any("directory" in json.loads(line)["message"] for line in logs)
