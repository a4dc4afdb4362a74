"""Open pixel and click redirect through real HTTP: what gets recorded, what a forged or
altered token gets, and which links are rewritten in the email that left."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage
from typing import Awaitable, Callable
from urllib.parse import urlsplit

import pytest
from bs4 import BeautifulSoup
from itsdangerous import URLSafeSerializer

from core.compose import tokens_for
from core.engagement import flush_engagement
from tests.harness import BASE_CONFIG, JANE, OMAR, Harness

pytestmark = pytest.mark.default_backend

HUMAN_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0 Safari/537.36 Edg/124.0"
)
APPLE_MPP_UA = "Mozilla/5.0"
PUBLIC = "https://trigger.pharma.example"


def html_of(email: EmailMessage) -> str:
    return email.get_body(("html",)).get_content()  # type: ignore[union-attr]


def pixel_url(email: EmailMessage) -> str:
    soup = BeautifulSoup(html_of(email), "html.parser")
    [pixel] = [img["src"] for img in soup.find_all("img") if "/t/o/" in str(img.get("src"))]
    return str(pixel)


def tracked_links(email: EmailMessage) -> list[str]:
    soup = BeautifulSoup(html_of(email), "html.parser")
    return [str(a["href"]) for a in soup.find_all("a", href=True) if "/t/c/" in str(a["href"])]


def hrefs(email: EmailMessage) -> list[str]:
    soup = BeautifulSoup(html_of(email), "html.parser")
    return [str(a["href"]) for a in soup.find_all("a", href=True)]


async def open_email(harness: Harness, email: EmailMessage, agent: str = HUMAN_UA) -> None:
    response = await harness.client.get(pixel_url(email), headers={"User-Agent": agent})
    assert response.status_code == 200, response.text


async def click(harness: Harness, url: str, agent: str = HUMAN_UA) -> str:
    response = await harness.client.get(url, headers={"User-Agent": agent})
    assert response.status_code == 302, response.text
    return response.headers["location"]


async def sent_email(harness: Harness, npi: str = JANE, campaign_id: str = "asthma-launch") -> tuple[dict, EmailMessage]:
    before = len(harness.smtp.messages)
    result = await harness.send(npi, campaign_id)
    assert result["status"] == "sent", result
    assert len(harness.smtp.messages) == before + 1
    return result, harness.smtp.messages[-1]


async def test_pixel_answers_an_uncacheable_gif_and_counts_opens(harness: Harness) -> None:
    result, email = await sent_email(harness)
    assert pixel_url(email).startswith(f"{PUBLIC}/t/o/")
    harness.clock.advance(300)

    response = await harness.client.get(pixel_url(email), headers={"User-Agent": HUMAN_UA})

    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    assert response.content.startswith(b"GIF89a") and len(response.content) < 100
    assert "no-store" in response.headers["cache-control"]
    message = (await harness.outcome(result["id"]))["messages"][0]
    assert message["opened_at"] == "2026-01-05T09:05:00Z"
    assert message["open_count"] == 1 and message["machine_opens"] == 0

    harness.clock.advance(3600)
    await open_email(harness, email)
    message = (await harness.outcome(result["id"]))["messages"][0]
    assert message["open_count"] == 2
    assert message["opened_at"] == "2026-01-05T09:05:00Z", "the first open time stays"


async def test_click_redirects_to_the_original_link_and_counts_it(harness: Harness) -> None:
    result, email = await sent_email(harness)
    links = tracked_links(email)
    assert len(links) == 2 and all(link.startswith(f"{PUBLIC}/t/c/") for link in links)
    harness.clock.advance(600)

    assert await click(harness, links[1]) == "https://pharma.example/asthma/dosing"
    assert await click(harness, links[0]) == "https://pharma.example/asthma/phase3"
    assert await click(harness, links[1]) == "https://pharma.example/asthma/dosing"

    message = (await harness.outcome(result["id"]))["messages"][0]
    assert message["clicks"] == 3
    assert message["clicked_at"] == "2026-01-05T09:10:00Z"
    assert message["links"] == ["https://pharma.example/asthma/phase3", "https://pharma.example/asthma/dosing"]
    assert message["open_count"] == 1 and message["opened_at"], "a click proves an open even with images blocked"


async def test_untracked_links_are_left_as_written(harness: Harness) -> None:
    _, email = await sent_email(harness)
    written = hrefs(email)
    assert "mailto:medinfo@pharma.example" in written
    assert "https://pharma.example/private" in written, "data-no-track is honoured"
    unsubscribe = [href for href in written if href.startswith(f"{PUBLIC}/u/")]
    assert len(unsubscribe) == 1, written
    assert not any("pharma.example/asthma" in href for href in written), "tracked links carry no original URL"


TRACKING_CONFIG = BASE_CONFIG + """
  - id: anchors-and-phones
    subject: "Contact"
    html: |
      <p><a href="#dosing">Jump</a> <a href="tel:+18005550100">Call</a> <a href="sms:+18005550100">Text</a>
      <a href="HTTPS://Pharma.example/Upper?a=1&amp;b=2">Upper</a> <a href="/relative">Relative</a></p>
      <p id="dosing">Dosing</p>
  - id: outlook-bulletin
    subject: "Bulletin"
    html: |
      <!DOCTYPE html><html><head><style>p { margin: 0 }</style></head><body>
      <!--[if mso]><table><tr><td width="600"><![endif]-->
      <p>Dosing &amp; safety&nbsp;update &copy; 2026</p>
      <ul><li><a href="https://pharma.example/label" class="cta">Full label</a></li></ul>
      <!--[if mso]></td></tr></table><![endif]-->
      </body></html>
"""
CLICK_ENGAGEMENT = TRACKING_CONFIG + "tracking: {engagement: click}\n"


@pytest.fixture
def config_text(request: pytest.FixtureRequest) -> str:
    """This module's config; a test picks another with `parametrize(..., indirect=True)`."""
    return getattr(request, "param", TRACKING_CONFIG)


async def test_anchors_phone_and_relative_links_are_not_rewritten(harness: Harness) -> None:
    _, email = await sent_email(harness, OMAR, "anchors-and-phones")
    written = hrefs(email)
    assert {"#dosing", "tel:+18005550100", "sms:+18005550100", "/relative"} <= set(written)
    [tracked] = tracked_links(email)
    harness.clock.advance(600)
    assert await click(harness, tracked) == "HTTPS://Pharma.example/Upper?a=1&b=2"


async def test_the_html_reaches_the_recipient_as_written_and_the_text_part_reads_it(harness: Harness) -> None:
    """Only the tracked links change: Outlook's conditional comments, entities and the
    doctype go out as the author wrote them; the pixel ends the body."""
    _, email = await sent_email(harness, OMAR, "outlook-bulletin")
    html = html_of(email)
    assert '<!--[if mso]><table><tr><td width="600"><![endif]-->' in html
    assert "<p>Dosing &amp; safety&nbsp;update &copy; 2026</p>" in html and html.startswith("<!DOCTYPE html>")
    [tracked] = tracked_links(email)
    assert f'<a href="{tracked}" class="cta">Full label</a>' in html
    assert html.index("/t/o/") < html.index("</body>")
    text = email.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Dosing & safety update © 2026" in text
    assert "- Full label (https://pharma.example/label)" in text
    assert "margin" not in text and "mso" not in text


async def test_links_in_emails_sent_before_the_compact_tokens_still_work(harness: Harness) -> None:
    """Emails already in inboxes carry itsdangerous-signed tokens: they keep working."""
    result, email = await sent_email(harness)
    message_id = result["messages"][0]["id"]
    earlier = URLSafeSerializer(harness.rt.settings.secret_key, salt="trigger-email.tracking")
    harness.clock.advance(600)
    assert await click(harness, f"{PUBLIC}/t/c/{earlier.dumps(['c', message_id, 1])}") == "https://pharma.example/asthma/dosing"
    response = await harness.client.get(f"{PUBLIC}/t/o/{earlier.dumps(['o', message_id])}", headers={"User-Agent": HUMAN_UA})
    assert response.status_code == 200
    message = (await harness.outcome(result["id"]))["messages"][0]
    assert message["clicks"] == 1 and message["open_count"] == 2  # the click proves an open too
    forged = URLSafeSerializer("another-secret-key-of-at-least-32-chars", salt="trigger-email.tracking")
    assert (await harness.client.get(f"{PUBLIC}/t/c/{forged.dumps(['c', message_id, 1])}")).status_code == 404


async def test_forged_altered_and_unknown_tokens_get_404_and_no_redirect(harness: Harness) -> None:
    result, email = await sent_email(harness)
    harness.clock.advance(600)
    pixel = pixel_url(email)
    link = tracked_links(email)[0]
    tokens = tokens_for(harness.rt)
    message_id = result["messages"][0]["id"]

    def altered(url: str) -> str:
        head, token = url.rsplit("/", 1)
        flipped = token[:5] + ("A" if token[5] != "A" else "B") + token[6:]
        return f"{head}/{flipped}"

    candidates = [
        f"{PUBLIC}/t/c/not-a-token",
        altered(link),
        link + "x",
        altered(pixel),
        f"{PUBLIC}/t/o/{pixel.rsplit('/', 1)[1][:-3]}",
        link.replace("/t/c/", "/t/o/"),  # a click token is not an open token
        pixel.replace("/t/o/", "/t/c/"),
        f"{PUBLIC}/t/c/{tokens.click(message_id, 2)}",  # genuine signature, no third link in that email
        f"{PUBLIC}/t/c/{tokens.click('msg_' + '0' * 24, 0)}",  # genuine signature, unknown message
        f"{PUBLIC}/t/o/{tokens.open('msg_' + '0' * 24)}",
    ]
    for url in candidates:
        response = await harness.client.get(url, headers={"User-Agent": HUMAN_UA})
        assert response.status_code == 404, url
        assert "location" not in response.headers
    message = (await harness.outcome(result["id"]))["messages"][0]
    assert message["open_count"] == 0 and message["clicks"] == 0


async def test_a_click_token_only_reaches_links_of_its_own_email(harness: Harness) -> None:
    _, asthma = await sent_email(harness, JANE, "asthma-launch")
    _, cardio = await sent_email(harness, OMAR, "anchors-and-phones")
    harness.clock.advance(600)
    asthma_targets = {await click(harness, link) for link in tracked_links(asthma)}
    cardio_targets = {await click(harness, link) for link in tracked_links(cardio)}
    assert asthma_targets == {"https://pharma.example/asthma/phase3", "https://pharma.example/asthma/dosing"}
    assert cardio_targets == {"HTTPS://Pharma.example/Upper?a=1&b=2"}

    # Whatever is appended to a click URL, it redirects only to its email's own link.
    link = tracked_links(cardio)[0]
    for tampered in (f"{link}?url=https://evil.example/", f"{link}?next=https://evil.example/"):
        assert await click(harness, tampered) == "HTTPS://Pharma.example/Upper?a=1&b=2"
    # The token names message and index; swapping the message part breaks the signature.
    cardio_token = urlsplit(link).path.rsplit("/", 1)[1]
    asthma_token = urlsplit(tracked_links(asthma)[0]).path.rsplit("/", 1)[1]
    spliced = asthma_token.rsplit(".", 1)[0] + "." + cardio_token.rsplit(".", 1)[1]  # its message, the other MAC
    assert spliced.split(".")[1] != cardio_token.split(".")[1]
    assert (await harness.client.get(f"{PUBLIC}/t/c/{spliced}")).status_code == 404


async def test_machine_opens_are_counted_apart(harness: Harness) -> None:
    result, email = await sent_email(harness)
    await open_email(harness, email, HUMAN_UA)  # within seconds of delivery: a prefetcher
    harness.clock.advance(600)
    await open_email(harness, email, APPLE_MPP_UA)
    await open_email(harness, email, "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)")
    await open_email(harness, email, "Barracuda Sentinel (EE)")
    await open_email(harness, email, "")

    message = (await harness.outcome(result["id"]))["messages"][0]
    assert message["machine_opens"] == 5
    assert message["open_count"] == 0 and message["opened_at"] is None
    stats = (await harness.client.get("/v1/campaigns/asthma-launch/stats", headers=harness.auth)).json()
    assert stats["machine_opens"] == 5 and stats["opened"] == 0


# --- engagement cancels resends -------------------------------------------------------


def resend_states(view: dict) -> list[tuple[str, str]]:
    return [(m["kind"], m["status"]) for m in view["messages"]]


async def test_without_engagement_the_resend_goes_out(harness: Harness) -> None:
    result, email = await sent_email(harness)
    harness.clock.advance(600)
    await open_email(harness, email, APPLE_MPP_UA)
    await harness.later(days=3)
    assert len(harness.smtp.messages) == 2
    assert harness.smtp.messages[1]["Subject"].startswith("In case you missed it")
    assert resend_states(await harness.outcome(result["id"]))[:2] == [("initial", "sent"), ("resend", "sent")]


async def test_an_open_cancels_the_pending_resends(harness: Harness) -> None:
    result, email = await sent_email(harness)
    await harness.later(hours=2)
    await open_email(harness, email)
    await harness.later(days=3, minutes=1)
    await harness.later(days=3, minutes=1)
    assert len(harness.smtp.messages) == 1
    view = await harness.outcome(result["id"])
    assert resend_states(view) == [("initial", "sent"), ("resend", "cancelled")]
    assert "opened" in view["messages"][1]["error"]


async def test_an_open_restarts_the_cooldown(harness: Harness) -> None:
    _, email = await sent_email(harness)
    await harness.later(days=20)
    await open_email(harness, email)
    await harness.later(days=15)  # 35 days after the send, 15 after the open
    again = await harness.send()
    assert again["status"] == "cooldown", again
    assert "2026-01-25" in again["reason"]


@pytest.mark.parametrize("config_text", [CLICK_ENGAGEMENT], indirect=True)
async def test_under_click_engagement_an_open_does_not_cancel_but_a_click_does(harness: Harness) -> None:
    first, email = await sent_email(harness)
    await harness.later(hours=2)
    await open_email(harness, email)
    await harness.later(days=3, minutes=1)
    assert len(harness.smtp.messages) == 2, "an open alone is not engagement under `click`"
    resend = harness.smtp.messages[1]
    assert (await harness.outcome(first["id"]))["messages"][0]["open_count"] == 1

    await harness.later(hours=1)
    await click(harness, tracked_links(resend)[0])
    await harness.later(days=3, minutes=1)
    assert len(harness.smtp.messages) == 2, "the click cancelled the second resend"
    assert resend_states(await harness.outcome(first["id"])) == [
        ("initial", "sent"), ("resend", "sent"), ("resend", "cancelled"),
    ]


@pytest.mark.parametrize("config_text", [TRACKING_CONFIG, CLICK_ENGAGEMENT], indirect=True)
async def test_machine_opens_and_scanner_clicks_never_cancel(harness: Harness) -> None:
    result, email = await sent_email(harness)
    await click(harness, tracked_links(email)[0], HUMAN_UA)  # seconds after delivery: a link scanner
    await open_email(harness, email, HUMAN_UA)
    harness.clock.advance(600)
    await open_email(harness, email, APPLE_MPP_UA)
    await harness.later(days=3)
    assert len(harness.smtp.messages) == 2, "machine engagement must not stop the follow-up"
    message = (await harness.outcome(result["id"]))["messages"][0]
    assert message["machine_opens"] == 2 and message["open_count"] == 0 and message["clicks"] == 0


async def test_head_probes_are_machine_engagement(harness: Harness) -> None:
    result, email = await sent_email(harness)
    harness.clock.advance(600)
    assert (await harness.client.head(pixel_url(email), headers={"User-Agent": HUMAN_UA})).status_code == 200
    probe = await harness.client.head(tracked_links(email)[0], headers={"User-Agent": HUMAN_UA})
    assert probe.status_code == 302 and probe.headers["location"] == "https://pharma.example/asthma/phase3"
    await harness.later(days=3)
    message = (await harness.outcome(result["id"]))["messages"][0]
    assert (message["machine_opens"], message["open_count"], message["clicks"]) == (1, 0, 0)
    assert len(harness.smtp.messages) == 2, "a link checker does not stop the follow-up"


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> None:
    """Under a burst, a hit may be answered just before its batch commits; a reader refreshing
    the page sees it a moment later."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "not recorded in time"
        await asyncio.sleep(0.02)


async def test_a_burst_of_opens_and_clicks_is_counted_exactly(harness: Harness) -> None:
    result, email = await sent_email(harness)
    harness.clock.advance(600)
    first, second = tracked_links(email)
    requests = [harness.client.get(pixel_url(email), headers={"User-Agent": HUMAN_UA}) for _ in range(150)]
    requests += [harness.client.get(first, headers={"User-Agent": HUMAN_UA}) for _ in range(30)]
    requests += [harness.client.get(second, headers={"User-Agent": HUMAN_UA}) for _ in range(20)]
    requests += [harness.client.get(pixel_url(email), headers={"User-Agent": APPLE_MPP_UA}) for _ in range(40)]

    answers = await asyncio.gather(*requests)

    assert [r.status_code for r in answers] == [200] * 150 + [302] * 50 + [200] * 40

    await flush_engagement(harness.rt)  # what a graceful shutdown does: nothing answered is lost
    message = (await harness.outcome(result["id"]))["messages"][0]
    assert (message["open_count"], message["clicks"], message["machine_opens"]) == (150, 50, 40)
    stats = (await harness.client.get("/v1/campaigns/asthma-launch/stats", headers=harness.auth)).json()
    assert (stats["opened"], stats["clicked"], stats["opens"], stats["clicks"]) == (1, 1, 150, 50)
    await harness.later(days=3)
    assert len(harness.smtp.messages) == 1, "the burst counted as engagement once and cancelled the resend"
