"""Engagement as a trigger: `from: email` rules on clicks, opens and inactivity fire once
each and go through the same decisions as any other trigger."""

from __future__ import annotations

import pytest

from tests.harness import BASE_CONFIG, JANE, MEI, OMAR, Harness
from tests.test_tracking import APPLE_MPP_UA, click, html_of, open_email, sent_email, tracked_links

RULES = BASE_CONFIG + """
  - id: dosing-guide
    subject: "Your dosing guide"
    html: "<p>You looked at {{ data.link }} in {{ data.campaign }}.</p>"
  - id: thanks-for-reading
    subject: "Thanks for reading"
    html: "<p>Thanks, Dr. {{ hcp.last_name }}</p>"
  - id: nudge
    subject: "Did you see our webinar invitation?"
    html: "<p>Seats are still open.</p>"
triggers:
  - {from: email, on: clicked, where: {campaign: asthma-launch, link: "https://pharma.example/asthma/dosing*"}, send: dosing-guide}
  - {from: email, on: clicked, where: {campaign: asthma-launch, link: "https://pharma.example/asthma/phase3"}, send: derm-news}
  - {from: email, on: opened, where: {campaign: derm-news}, send: thanks-for-reading}
  - {from: email, on: no_engagement, where: {campaign: cardio-webinar, after: 7d}, send: nudge}
"""


@pytest.fixture
def config_text() -> str:
    return RULES


def subjects(harness: Harness, address: str) -> list[str]:
    return [str(m["Subject"]) for m in harness.smtp.to(address)]


async def stats(harness: Harness, campaign_id: str) -> dict:
    response = await harness.client.get(f"/v1/campaigns/{campaign_id}/stats", headers=harness.auth)
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_click_on_a_matching_link_fires_once(harness: Harness) -> None:
    _, email = await sent_email(harness, JANE, "asthma-launch")
    phase3, dosing = tracked_links(email)
    await harness.later(minutes=30)

    await click(harness, dosing)
    await harness.later(minutes=1)

    assert subjects(harness, "jane.doe@clinic.example")[-1] == "Your dosing guide"
    guide = harness.smtp.messages[-1]
    assert "You looked at https://pharma.example/asthma/dosing in asthma-launch." in html_of(guide)

    await click(harness, dosing)
    await harness.later(minutes=1)
    await click(harness, dosing)
    await harness.later(days=1)
    assert subjects(harness, "jane.doe@clinic.example").count("Your dosing guide") == 1
    assert (await stats(harness, "dosing-guide"))["triggers"] == 1


async def test_a_click_on_another_link_fires_only_its_own_rule_through_the_decisions(harness: Harness) -> None:
    _, email = await sent_email(harness, JANE, "asthma-launch")
    phase3, _ = tracked_links(email)
    await harness.later(minutes=30)

    await click(harness, phase3)
    await harness.later(minutes=1)

    assert (await stats(harness, "dosing-guide"))["triggers"] == 0
    derm = await stats(harness, "derm-news")
    assert derm["outcomes"] == {"not_in_audience": 1}, "Dr. Doe practises in NJ; derm-news is for CA"
    assert len(harness.smtp.messages) == 1


async def test_a_scanner_click_right_after_delivery_fires_nothing(harness: Harness) -> None:
    _, email = await sent_email(harness, JANE, "asthma-launch")
    await click(harness, tracked_links(email)[1])
    await harness.later(minutes=1)
    assert (await stats(harness, "dosing-guide"))["triggers"] == 0


async def test_an_open_fires_once_and_machine_opens_never(harness: Harness) -> None:
    _, email = await sent_email(harness, OMAR, "derm-news")
    await harness.later(minutes=10)
    await open_email(harness, email, APPLE_MPP_UA)
    await harness.later(minutes=1)
    assert subjects(harness, "omar.haddad@heart.example") == ["Dermatology news"]

    await open_email(harness, email)
    await harness.later(minutes=1)
    await open_email(harness, email)
    await harness.later(hours=1)

    assert subjects(harness, "omar.haddad@heart.example") == ["Dermatology news", "Thanks for reading"]
    assert "Thanks, Dr. Haddad" in html_of(harness.smtp.messages[-1])


async def test_no_engagement_fires_once_after_the_delay_and_not_for_readers(harness: Harness) -> None:
    await sent_email(harness, OMAR, "cardio-webinar")
    _, read = await sent_email(harness, MEI, "cardio-webinar")
    await harness.later(days=2)
    await open_email(harness, read)

    await harness.later(days=4, hours=23)
    assert subjects(harness, "omar.haddad@heart.example") == ["Dr. Haddad, join our webinar"]

    await harness.later(hours=1, minutes=1)
    assert subjects(harness, "omar.haddad@heart.example") == [
        "Dr. Haddad, join our webinar", "Did you see our webinar invitation?",
    ]
    for _ in range(3):
        await harness.later(days=1)
    assert subjects(harness, "omar.haddad@heart.example").count("Did you see our webinar invitation?") == 1
    assert subjects(harness, "mei.chen@allergy.example") == ["Dr. Chen, join our webinar"]
    assert (await stats(harness, "nudge"))["outcomes"] == {"sent": 1}
