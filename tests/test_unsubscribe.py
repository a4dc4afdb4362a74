"""RFC 8058 one-click unsubscribe and the CAN-SPAM footer, through real SMTP and HTTP; what an
unsubscribe does to pending resends and later triggers, and how transactional mail differs."""

from __future__ import annotations

import re
from email.message import EmailMessage

import pytest
from bs4 import BeautifulSoup

from tests.harness import BASE_CONFIG, JANE, MEI, Harness
from tests.test_tracking import html_of, sent_email

pytestmark = pytest.mark.default_backend

PUBLIC = "https://trigger.pharma.example"
ONE_CLICK = {"content-type": "application/x-www-form-urlencoded"}

TRANSACTIONAL = """
  - id: sample-confirmation
    kind: transactional
    subject: "Your sample request"
    html: "<p>We received your request for samples.</p>"
    cooldown: 0s
"""
CONFIG = BASE_CONFIG + TRANSACTIONAL
CAMPAIGN_SCOPE = CONFIG + "unsubscribe: {scope: campaign}\n"


@pytest.fixture
def config_text(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", CONFIG)


def unsubscribe_url(email: EmailMessage) -> str:
    [https] = re.findall(r"<(https://[^>]+)>", str(email["List-Unsubscribe"]))
    return https


async def one_click(harness: Harness, email: EmailMessage) -> None:
    """What Gmail or Yahoo does when the reader presses their Unsubscribe button."""
    response = await harness.client.post(unsubscribe_url(email), content=b"List-Unsubscribe=One-Click", headers=ONE_CLICK)
    assert response.status_code == 200, response.text


async def test_marketing_email_carries_rfc8058_headers_and_a_can_spam_footer(harness: Harness) -> None:
    _, email = await sent_email(harness)
    header = str(email["List-Unsubscribe"])
    assert re.fullmatch(rf"<{re.escape(PUBLIC)}/u/[^>]+>, <mailto:[^>]+@[^>]+>", header), header
    assert email["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    soup = BeautifulSoup(html_of(email), "html.parser")
    assert "1 Main St, Springfield, NJ 07081" in soup.get_text()
    [link] = [a for a in soup.find_all("a") if a.get_text(strip=True) == "Unsubscribe"]
    assert link["href"] == unsubscribe_url(email), "the visible link and the header unsubscribe the same way"
    text = email.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "1 Main St, Springfield, NJ 07081" in text and unsubscribe_url(email) in text


async def test_one_click_post_unsubscribes_at_once(harness: Harness) -> None:
    first, email = await sent_email(harness)
    await harness.later(hours=1)

    response = await harness.client.post(
        unsubscribe_url(email), content=b"List-Unsubscribe=One-Click", headers=ONE_CLICK
    )

    assert response.status_code == 200
    assert "unsubscribed" in response.text.lower()
    view = await harness.outcome(first["id"])
    assert view["messages"][0]["unsubscribed"] is True
    assert [(m["kind"], m["status"]) for m in view["messages"]] == [("initial", "sent"), ("resend", "cancelled")]

    await harness.later(days=7)
    assert len(harness.smtp.messages) == 1, "no resend after an unsubscribe"
    later = await harness.send(JANE, "cardio-webinar")
    assert later["status"] == "suppressed", later
    assert "unsubscribed" in later["reason"]
    assert len(harness.smtp.messages) == 1


async def test_one_click_is_idempotent(harness: Harness) -> None:
    _, email = await sent_email(harness)
    await one_click(harness, email)
    await one_click(harness, email)
    rows = (await harness.client.get("/v1/suppressions", headers=harness.auth)).json()["suppressions"]
    assert [(r["npi"], r["reason"]) for r in rows] == [(JANE, "unsubscribed")]


async def test_get_shows_a_page_whose_button_posts(harness: Harness) -> None:
    first, email = await sent_email(harness)
    page = await harness.client.get(unsubscribe_url(email))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "no-store" in page.headers["cache-control"]
    view = await harness.outcome(first["id"])
    assert view["messages"][0]["unsubscribed"] is False, "a GET (a link scanner) must not unsubscribe"

    form = BeautifulSoup(page.text, "html.parser").find("form")
    assert form is not None and str(form["method"]).lower() == "post"
    fields = {str(i["name"]): str(i.get("value", "")) for i in form.find_all("input") if i.get("name")}
    response = await harness.client.post(str(form["action"]), data=fields)
    assert response.status_code == 200
    assert (await harness.outcome(first["id"]))["messages"][0]["unsubscribed"] is True


async def test_forged_unsubscribe_token_gets_404(harness: Harness) -> None:
    first, email = await sent_email(harness)
    url = unsubscribe_url(email)
    # Alter a character well inside the signature: the last base64 character carries padding
    # bits a decoder ignores, so changing only the end can leave the same signature.
    altered = url[:-10] + ("A" if url[-10] != "A" else "B") + url[-9:]
    for forged in (altered, f"{PUBLIC}/u/forged"):
        assert (await harness.client.post(forged, content=b"List-Unsubscribe=One-Click", headers=ONE_CLICK)).status_code == 404
        assert (await harness.client.get(forged)).status_code == 404
    assert (await harness.outcome(first["id"]))["messages"][0]["unsubscribed"] is False


@pytest.mark.parametrize("config_text", [CAMPAIGN_SCOPE], indirect=True)
async def test_campaign_scope_blocks_only_that_campaign(harness: Harness) -> None:
    _, email = await sent_email(harness)
    await one_click(harness, email)
    await harness.later(days=31)
    again = await harness.send(JANE, "asthma-launch")
    assert again["status"] == "suppressed" and "asthma-launch" in again["reason"], again
    other = await harness.send(JANE, "cardio-webinar")
    assert other["status"] == "sent", other


# --- transactional campaigns ------------------------------------------------------------


async def test_transactional_mail_has_no_list_unsubscribe_and_ignores_marketing_unsubscribes(harness: Harness) -> None:
    _, marketing = await sent_email(harness, MEI, "asthma-launch")
    await one_click(harness, marketing)

    result, email = await sent_email(harness, MEI, "sample-confirmation")

    assert email["List-Unsubscribe"] is None and email["List-Unsubscribe-Post"] is None
    assert "/u/" not in html_of(email)
    assert "1 Main St, Springfield, NJ 07081" in html_of(email)
    assert result["messages"][0]["to"] == "mei.chen@allergy.example"
    blocked = await harness.send(MEI, "cardio-webinar")
    assert blocked["status"] == "suppressed", "marketing stays blocked"


async def test_transactional_mail_never_goes_to_a_hard_bounced_address(harness: Harness) -> None:
    harness.smtp.reject["jane.doe@clinic.example"] = "550 5.1.1 User unknown"
    result, email = await sent_email(harness, JANE, "sample-confirmation")
    assert result["messages"][0]["to"] == "jdoe@health.example"
    again, _ = await sent_email(harness, JANE, "sample-confirmation")
    assert again["messages"][0]["to"] == "jdoe@health.example"
    assert [e[1] for e in harness.smtp.envelopes] == [["jdoe@health.example"], ["jdoe@health.example"]]


async def test_head_and_get_never_unsubscribe(harness: Harness) -> None:
    """Link scanners and mail gateways send HEAD and GET: the HCP stays subscribed."""
    from sqlalchemy import func, select

    from core.db import suppressions

    first, email = await sent_email(harness)
    url = unsubscribe_url(email)
    for method in ("HEAD", "GET", "HEAD"):
        response = await harness.client.request(method, url)
        assert response.status_code == 200, (method, response.status_code)
    async with harness.rt.db.connect() as connection:
        assert (await connection.execute(select(func.count()).select_from(suppressions))).scalar_one() == 0
    view = await harness.outcome(first["id"])
    assert view["messages"][0]["unsubscribed"] is False
    await one_click(harness, email)
    assert (await harness.outcome(first["id"]))["messages"][0]["unsubscribed"] is True
