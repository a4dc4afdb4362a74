"""Campaign authoring end to end: extends and per-campaign sender, attachments through the real
SMTP server, quiet hours in the HCP's time zone (across DST), A/B subjects with a winner."""

from __future__ import annotations

import hashlib
import http.server
import random
import threading
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from config import parse_config
from core.clock import iso
from tests.harness import JANE, MEI, OMAR, DIRECTORY_CSV, Harness, SmtpSink, load_directory, make_harness

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"
LEAFLET = hashlib.sha256(b"leaflet").digest() * 300

CONFIG = """
public_url: https://trigger.pharma.example
sender:
  from: "Medical Information <medinfo@pharma.example>"
  postal_address: "1 Main St, Springfield, NJ 07081"
limits:
  attachment_max_size: 64KB
  quiet_hours: {from: "20:00", to: "07:00", days: [sun]}
campaigns:
  - id: asthma-launch
    subject: "New asthma data for {{ hcp.specialty }} practices"
    html: "<p>Dear Dr. {{ hcp.last_name }}</p>"
    resend: {after: 62h, max: 1}
    quiet_hours: false
  - id: asthma-leaflet
    extends: asthma-launch
    subject: "Your asthma leaflet, Dr. {{ hcp.last_name }}"
    sender: {from: "Respiratory Team <respiratory@pharma.example>", reply_to: resp@pharma.example, postal_address: "2 Lab Rd, Boston, MA"}
    attachments: [files/results.pdf, {path: files/leaflet.bin, filename: "Leaflet 2026.bin", content_type: application/octet-stream}]
    attachments_from: ["{docs}/docs/*"]
  - id: docs-required
    subject: "The document you asked for"
    html: "<p>Attached.</p>"
    kind: transactional
    attachments_from: ["{docs}/docs/*"]
    require_attachments: true
  - id: night-news
    subject: "News"
    html: "<p>News for {{ hcp.last_name }}</p>"
    resend: {after: 62h, max: 1}
    cooldown: 1d
  - id: receipt
    kind: transactional
    subject: "Your receipt"
    html: "<p>Receipt</p>"
  - id: receipt-polite
    extends: receipt
    quiet_hours: true
"""

DIRECTORY = DIRECTORY_CSV.replace(
    "npi,first_name,last_name,credential,specialty,state,email", "npi,first_name,last_name,credential,specialty,state,email,timezone"
).replace("mei.chen@allergy.example", "mei.chen@allergy.example,America/Denver")


class _Docs(http.server.BaseHTTPRequestHandler):
    files = {"/docs/dosing.pdf": PDF, "/docs/huge.pdf": b"x" * (70 * 1024)}
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        self.hits.append(self.path)
        body = self.files.get(self.path)
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/pdf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def docs_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Docs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Docs.hits = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
async def h(database_url: str, redis_url: str, smtp: tuple[SmtpSink, str], tmp_path: Path, docs_server: str) -> AsyncIterator[Harness]:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "results.pdf").write_bytes(PDF)
    (tmp_path / "files" / "leaflet.bin").write_bytes(LEAFLET)
    config = parse_config(CONFIG.replace("{docs}", docs_server), base=tmp_path, env={})
    sink, smtp_url = smtp
    harness = await make_harness(database_url=database_url, redis_url=redis_url, config=config, sink=sink, smtp_url=smtp_url)
    await load_directory(harness.rt, tmp_path, DIRECTORY)
    yield harness
    await harness.client.aclose()
    await harness.rt.aclose()


def parts(message: EmailMessage) -> dict[str, tuple[str, bytes]]:
    return {
        part.get_filename(): (part.get_content_type(), part.get_payload(decode=True))
        for part in message.iter_attachments()
    }


async def test_extends_copies_and_overrides_and_campaign_sender_wins(h: Harness) -> None:
    leaflet = h.rt.config.campaign("asthma-leaflet")
    assert leaflet is not None and leaflet.resend is not None and leaflet.resend.after == timedelta(hours=62)
    assert leaflet.html == "<p>Dear Dr. {{ hcp.last_name }}</p>"  # copied from asthma-launch
    assert leaflet.version != h.rt.config.campaign("asthma-launch").version  # type: ignore[union-attr]
    await h.send(JANE, "asthma-leaflet")
    [message] = h.smtp.messages
    assert message["Subject"] == "Your asthma leaflet, Dr. Doe"
    assert message["From"] == "Respiratory Team <respiratory@pharma.example>"
    assert message["Reply-To"] == "resp@pharma.example"
    assert "2 Lab Rd, Boston, MA" in message.get_body(("html",)).get_content()  # type: ignore[union-attr]


async def test_file_and_url_attachments_arrive_intact(h: Harness, docs_server: str) -> None:
    data = {"attachments": [f"{docs_server}/docs/dosing.pdf"]}
    result = await h.send(JANE, "asthma-leaflet", data)
    assert result["status"] == "sent", result
    [message] = h.smtp.messages
    assert message.get_content_type() == "multipart/mixed"
    assert message.get_body(("html",)) is not None and message.get_body(("plain",)) is not None
    assert parts(message) == {
        "results.pdf": ("application/pdf", PDF),
        "Leaflet 2026.bin": ("application/octet-stream", LEAFLET),
        "dosing.pdf": ("application/pdf", PDF),
    }
    await h.send(MEI, "asthma-leaflet", data)  # the fetched file is cached
    assert _Docs.hits == ["/docs/dosing.pdf"]
    assert parts(h.smtp.messages[1])["dosing.pdf"][1] == PDF


async def test_require_attachments_fails_with_the_reason(h: Harness, docs_server: str) -> None:
    outside = await h.send(JANE, "docs-required", {"attachments": ["https://elsewhere.example/x.pdf"]})
    assert outside["status"] == "failed"
    assert outside["reason"] == "require_attachments: https://elsewhere.example/x.pdf is not in the campaign's attachments_from"
    missing = await h.send(OMAR, "docs-required", {"attachments": [f"{docs_server}/docs/gone.pdf"]})
    assert missing["status"] == "failed" and "answered HTTP 404" in missing["reason"]
    huge = await h.send(MEI, "docs-required", {"attachments": [f"{docs_server}/docs/huge.pdf"]})
    assert huge["status"] == "failed" and "over limits.attachment_max_size (64KB)" in huge["reason"]
    none = await h.send(JANE, "docs-required", {})
    assert none["status"] == "failed" and "require_attachments" in none["reason"]
    assert h.smtp.messages == []
    ok = await h.send(OMAR, "docs-required", {"attachments": [{"url": f"{docs_server}/docs/dosing.pdf", "filename": "Dosing.pdf"}]})
    assert ok["status"] == "sent"
    assert parts(h.smtp.messages[0]) == {"Dosing.pdf": ("application/pdf", PDF)}


# --- quiet hours -------------------------------------------------------------------------


async def test_quiet_hours_hold_until_the_window_ends_in_each_hcps_zone(h: Harness) -> None:
    # Monday 2026-01-05 09:00 UTC: 04:00 in New Jersey, 01:00 in California, 02:00 in Denver.
    jane = await h.send(JANE, "night-news")
    omar = await h.send(OMAR, "night-news")
    mei = await h.send(MEI, "night-news")  # the directory's timezone column wins over CA
    assert [t["status"] for t in (jane, omar, mei)] == ["scheduled"] * 3
    assert jane["reason"] == (
        "quiet hours (20:00–07:00; sun in America/New_York): held until 2026-01-05 07:00 EST (2026-01-05 12:00 UTC)"
    )
    assert jane["messages"][0]["due_at"] == "2026-01-05T12:00:00Z"
    assert omar["messages"][0]["due_at"] == "2026-01-05T15:00:00Z"
    assert mei["messages"][0]["due_at"] == "2026-01-05T14:00:00Z"
    again = await h.send(JANE, "night-news")  # a second trigger in the window is not a second email
    assert again["status"] == "cooldown"
    await h.later(hours=2, minutes=59)  # 11:59 UTC
    assert h.smtp.messages == []
    await h.later(minutes=1)  # 12:00 UTC = 07:00 EST
    assert [str(m["To"]) for m in h.smtp.messages] == ["jane.doe@clinic.example"]
    assert (await h.outcome(jane["id"]))["status"] == "sent"
    await h.later(hours=2)
    assert len(h.smtp.messages) == 2  # Mei, Denver 07:00
    await h.later(hours=1)
    assert len(h.smtp.messages) == 3  # Omar, Los Angeles 07:00
    # Jane's resend falls due 62 h after Monday 12:00 UTC: Thursday 02:00 UTC = Wednesday 21:00 EST.
    await h.later(hours=59)  # Thursday 02:00 UTC
    resend = (await h.outcome(jane["id"]))["messages"][1]
    assert resend["status"] == "scheduled" and resend["due_at"] == "2026-01-08T12:00:00Z"
    assert "held until 2026-01-08 07:00 EST" in resend["error"]
    await h.later(hours=10)
    assert sum(1 for m in h.smtp.messages if str(m["To"]) == "jane.doe@clinic.example") == 2


async def test_quiet_day_then_night_across_the_spring_dst_change(h: Harness) -> None:
    # Saturday 2026-03-07 21:00 EST (Sunday 02:00 UTC): night, then all of Sunday (DST starts
    # at 02:00), then Monday's early hours: held until Monday 07:00 EDT = 11:00 UTC, not 12:00.
    h.clock.set(datetime(2026, 3, 8, 2, 0, tzinfo=timezone.utc))
    jane = await h.send(JANE, "night-news")
    assert jane["messages"][0]["due_at"] == "2026-03-09T11:00:00Z"
    assert "held until 2026-03-09 07:00 EDT" in jane["reason"]


async def test_autumn_dst_change_and_transactional_mail(h: Harness) -> None:
    # Saturday 2026-10-31 23:00 EDT (Sunday 03:00 UTC) → Sunday is quiet → Monday 07:00 EST.
    h.clock.set(datetime(2026, 11, 1, 3, 0, tzinfo=timezone.utc))
    jane = await h.send(JANE, "night-news")
    assert jane["messages"][0]["due_at"] == "2026-11-02T12:00:00Z"
    receipt = await h.send(JANE, "receipt")  # transactional: quiet hours do not apply
    assert receipt["status"] == "sent"
    polite = await h.send(OMAR, "receipt-polite")  # unless it says so
    assert polite["status"] == "scheduled"
    assert polite["messages"][0]["due_at"] == "2026-11-02T15:00:00Z"
    launch = await h.send(MEI, "asthma-launch")  # quiet_hours: false on the campaign
    assert launch["status"] == "sent"


async def test_pause_holds_an_email_waiting_for_quiet_hours_to_end(h: Harness) -> None:
    jane = await h.send(JANE, "night-news")
    await h.client.post("/v1/campaigns/night-news/pause", headers=h.auth)
    await h.later(hours=4)
    held = (await h.outcome(jane["id"]))["messages"][0]
    assert held["status"] == "scheduled" and h.smtp.messages == []
    await h.client.post("/v1/campaigns/night-news/resume", headers=h.auth)
    await h.later(seconds=1)
    assert (await h.outcome(jane["id"]))["status"] == "sent"
    assert len(h.smtp.messages) == 1


def test_state_zones_and_multi_zone_states() -> None:
    from core.quiet_hours import hcp_zone

    assert hcp_zone({"state": "TX"}).key == "America/Chicago"  # El Paso is Mountain; most Texans are Central
    assert hcp_zone({"state": "FL"}).key == "America/New_York"
    assert hcp_zone({"state": "AZ"}).key == "America/Phoenix"
    assert hcp_zone({"state": "NJ", "timezone": "America/Denver"}).key == "America/Denver"
    assert hcp_zone({"state": "NJ", "timezone": "Mars/Olympus"}).key == "America/New_York"
    assert hcp_zone({"state": ""}).key == "America/New_York"


# --- A/B subjects ------------------------------------------------------------------------

AB_CONFIG = """
public_url: https://trigger.pharma.example
sender: {from: "Medical Information <medinfo@pharma.example>", postal_address: "1 Main St"}
tracking: {engagement: click}
campaigns:
  - id: launch
    subjects:
      - {text: "New data for {{ hcp.specialty }}", weight: 1}
      - {text: "Dr. {{ hcp.last_name }}, 3 minutes on new data", weight: 1}
    ab: {decide_after: 200 sends, metric: click_rate}
    html: '<p>Hello</p><p><a href="https://pharma.example/data">Data</a></p>'
"""
CLICK_RATES = [0.05, 0.30]


@pytest.fixture
async def ab(database_url: str, redis_url: str, smtp: tuple[SmtpSink, str], tmp_path: Path) -> AsyncIterator[Harness]:
    from core.demo import HEADER, demo_rows

    sink, smtp_url = smtp
    harness = await make_harness(
        database_url=database_url, redis_url=redis_url, config=parse_config(AB_CONFIG, base=tmp_path, env={}),
        sink=sink, smtp_url=smtp_url,
    )
    import csv
    import io

    text = io.StringIO()
    csv.writer(text).writerows([HEADER, *list(demo_rows(261))[1:]])  # 260 HCPs, one address each
    await load_directory(harness.rt, tmp_path, text.getvalue())
    yield harness
    await harness.client.aclose()
    await harness.rt.aclose()


async def _trigger_all(h: Harness, npis: list[str]) -> None:
    from tests.harness import drain

    for npi in npis:
        await h.trigger(npi, "launch")
    await drain(h.rt, rounds=50)


async def test_ab_variants_are_stable_reported_and_a_winner_takes_over(ab: Harness) -> None:
    from sqlalchemy import select

    from core.db import messages
    from core.engagement import flush_engagement, record_click

    h = ab
    from core.demo import demo_rows

    npis = [row[0] for row in list(demo_rows(261))[1:]]
    first, rest = npis[:200], npis[200:]
    await _trigger_all(h, first)
    async with h.rt.db.connect() as connection:
        sent = (await connection.execute(select(messages.c.id, messages.c.npi, messages.c.variant, messages.c.subject)
                                          .where(messages.c.kind == "initial"))).all()
    assert len(sent) == 200
    by_variant = {0: 0, 1: 0}
    for _id, _npi, variant, subject in sent:
        by_variant[variant] += 1
        assert subject.startswith("New data for") if variant == 0 else subject.startswith("Dr. ")
    assert 70 < by_variant[0] < 130  # weights 1:1
    # People click at a known rate per variant; a seeded draw decides who.
    h.clock.advance(timedelta(minutes=5))  # past the machine-click window
    rng = random.Random(11)
    for message_id, _npi, variant, _subject in sent:
        if rng.random() < CLICK_RATES[variant]:
            assert await record_click(h.rt, message_id, 0, "Mozilla/5.0 (Macintosh)") == "https://pharma.example/data"
    await flush_engagement(h.rt)
    stats = (await h.client.get("/v1/campaigns/launch/stats", headers=h.auth)).json()
    assert stats["ab"]["decision"] is None
    variants = stats["variants"]
    assert [v["sent"] for v in variants] == [by_variant[0], by_variant[1]]
    assert variants[1]["click_rate"] > variants[0]["click_rate"]
    assert set(variants[0]) >= {"variant", "subject", "weight", "sent", "opened", "clicked", "open_rate", "click_rate"}
    await h.later(minutes=1)  # the sweep evaluates the test
    stats = (await h.client.get("/v1/campaigns/launch/stats", headers=h.auth)).json()
    decision = stats["ab"]["decision"]
    assert decision["winner"] == 1
    assert decision["decided_at"] == iso(h.clock.now())
    assert decision["figures"]["tests"][0]["z"] > 1.96
    assert decision["figures"]["metric"] == "click_rate"
    # The same HCP gets the same variant; after the decision every new HCP gets the winner.
    await _trigger_all(h, rest)
    async with h.rt.db.connect() as connection:
        later = (await connection.execute(select(messages.c.variant).where(messages.c.npi.in_(rest)))).scalars().all()
    assert later and set(later) == {1}


def test_variant_choice_is_deterministic_and_weighted() -> None:
    from core.variants import pick_variant

    config = parse_config(AB_CONFIG.replace("weight: 1}\n      - {text: \"Dr.", "weight: 3}\n      - {text: \"Dr."), base=Path("."), env={})
    campaign = config.campaign("launch")
    assert campaign is not None
    picks = [pick_variant(campaign, f"{n:010d}") for n in range(4000)]
    assert picks == [pick_variant(campaign, f"{n:010d}") for n in range(4000)]
    assert 0.70 < picks.count(0) / 4000 < 0.80  # weight 3:1
    assert pick_variant(campaign, "1234567893", winner=1) == 1


def test_z_test_known_values() -> None:
    from core.variants import z_test

    z, p = z_test(30, 100, 5, 100)
    assert round(z, 2) == 4.65 and p < 0.0001
    assert z_test(10, 100, 10, 100) == (0.0, 1.0)


async def test_ab_decided_after_a_duration_only_once_it_has_passed(ab: Harness) -> None:
    from sqlalchemy import select

    from core.db import messages
    from core.demo import demo_rows
    from core.engagement import flush_engagement, record_click
    from core.variants import evaluate

    h = ab
    h.rt.config = parse_config(AB_CONFIG.replace("decide_after: 200 sends", "decide_after: 3d"), base=Path("."), env={})
    campaign = h.rt.config.campaign("launch")
    assert campaign is not None and campaign.ab is not None and campaign.ab.after == timedelta(days=3)
    await _trigger_all(h, [row[0] for row in list(demo_rows(261))[1:201]])
    h.clock.advance(timedelta(minutes=5))
    async with h.rt.db.connect() as connection:
        sent = (await connection.execute(select(messages.c.id, messages.c.variant).where(messages.c.kind == "initial"))).all()
    rng = random.Random(3)
    for message_id, variant in sent:
        if rng.random() < CLICK_RATES[variant]:
            await record_click(h.rt, message_id, 0, "Mozilla/5.0 (Windows NT 10.0)")
    await flush_engagement(h.rt)
    h.clock.advance(timedelta(days=2, hours=23))
    assert await evaluate(h.rt, campaign, h.clock.now()) is None  # clear leader, but not yet time
    h.clock.advance(timedelta(hours=1))
    decision = await evaluate(h.rt, campaign, h.clock.now())
    assert decision is not None and decision["winner"] == 1 and decision["decided_at"] == h.clock.now()


async def test_directory_timezone_column_is_checked_on_import(h: Harness, tmp_path: Path) -> None:
    from core.directory import get_hcp, import_csv

    path = tmp_path / "zones.csv"
    path.write_text(
        "npi,first_name,last_name,credential,specialty,state,email,timezone\n"
        f"{OMAR},Omar,Haddad,MD,Cardiovascular Disease,CA,omar.haddad@heart.example,America/Phoenix\n"
        f"{JANE},Jane,Doe,MD,Pulmonary Disease,NJ,jane.doe@clinic.example,Mars/Olympus\n"
    )
    report = await import_csv(h.rt.db, path, now=h.clock.now())
    assert report.skipped == [(3, "timezone must be an IANA zone like America/New_York, got 'Mars/Olympus'")]
    async with h.rt.db.connect() as connection:
        assert (await get_hcp(connection, OMAR))["timezone"] == "America/Phoenix"  # type: ignore[index]
