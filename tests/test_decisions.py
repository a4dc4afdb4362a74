"""Every decision outcome, in DESIGN order, each with a reason an admin can read."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.directory import mark_address
from core.suppression import add_suppression
from core.triggers import accept_trigger
from tests.harness import JANE, MEI, OMAR, Harness, drain, load_directory


async def decide_raw(h: Harness, npi: str, campaign_id: str) -> dict:
    """Triggers that the API refuses up front still come from CRMs; the worker records them."""
    accepted = await accept_trigger(h.rt, npi=npi, campaign_id=campaign_id, source="hubspot")
    await drain(h.rt)
    return await h.outcome(accepted.id)


async def test_sent(harness: Harness) -> None:
    result = await harness.send()
    assert (result["status"], result["reason"]) == ("sent", "sent to jane.doe@clinic.example")
    assert result["decided_at"] and result["created_at"]


async def test_invalid_npi_and_unknown_campaign_from_a_crm(harness: Harness) -> None:
    invalid = await decide_raw(harness, "(none on contact 451)", "asthma-launch")
    assert invalid["status"] == "invalid_npi" and "10 digits" in invalid["reason"]
    unknown = await decide_raw(harness, JANE, "no-such-campaign")
    assert unknown["status"] == "unknown_campaign"
    assert harness.smtp.messages == []


async def test_paused_campaign(harness: Harness) -> None:
    response = await harness.client.post("/v1/campaigns/asthma-launch/pause", headers=harness.auth)
    assert response.json()["status"] == "paused"
    assert (await harness.send())["status"] == "campaign_paused"
    await harness.client.post("/v1/campaigns/asthma-launch/resume", headers=harness.auth)
    assert (await harness.send())["status"] == "sent"


async def test_unknown_hcp_and_audience(harness: Harness) -> None:
    unknown = await harness.send(npi="1003000126")
    assert unknown["status"] == "unknown_hcp" and "not in the HCP directory" in unknown["reason"]
    cardiologist = await harness.send(npi=OMAR)
    assert cardiologist["status"] == "not_in_audience" and "Cardiovascular Disease" in cardiologist["reason"]
    assert (await harness.send(npi=MEI))["status"] == "sent"  # Allergy & Immunology is in the audience
    derm = await harness.send(npi=JANE, campaign_id="derm-news")
    assert derm["status"] == "not_in_audience" and "'NJ'" in derm["reason"]


async def test_suppressed_by_list_and_by_all_addresses_bounced(harness: Harness) -> None:
    async with harness.rt.db.begin() as connection:
        await add_suppression(connection, reason="unsubscribed", npi=JANE, now=harness.clock.now())
    result = await harness.send()
    assert result["status"] == "suppressed" and "unsubscribed" in result["reason"]
    async with harness.rt.db.begin() as connection:
        for address in ("omar.haddad@heart.example",):
            await mark_address(connection, OMAR, address, "hard_bounced", "550", harness.clock.now())
    bounced = await harness.send(npi=OMAR, campaign_id="cardio-webinar")
    assert bounced["status"] == "suppressed" and "hard-bounced" in bounced["reason"]


async def test_cooldown_blocks_then_expires(harness: Harness) -> None:
    assert (await harness.send())["status"] == "sent"
    harness.clock.advance(3600)
    blocked = await harness.send()
    assert blocked["status"] == "cooldown" and "cooldown 30d runs until" in blocked["reason"]
    assert blocked["messages"] == []
    await harness.later(days=3)  # resend 1 of 2 goes and restarts the cooldown (seed: "received")
    await harness.later(days=3)  # resend 2 of 2
    assert len(harness.smtp.messages) == 3
    await harness.later(days=29)
    assert (await harness.send())["status"] == "cooldown"
    await harness.later(days=1, hours=1)
    assert (await harness.send())["status"] == "sent"


async def test_no_deliverable_email(harness: Harness, tmp_path: Path) -> None:
    await load_directory(harness.rt, tmp_path, "npi,first_name,last_name,credential,specialty,state,email\n1003000126,Di,Wu,NP,Pulmonary Disease,NY,\n")
    result = await harness.send(npi="1003000126")
    assert result["status"] == "no_deliverable_email"


CAP_CONFIG = """
public_url: https://trigger.pharma.example
sender: {from: "Medical Information <medinfo@pharma.example>"}
limits:
  per_hcp: {max: 3, per: 7d}
campaigns:
  - {id: a, subject: A, html: "<p>a</p>", cooldown: 1h}
  - {id: b, subject: B, html: "<p>b</p>", cooldown: 1h}
  - {id: notice, subject: N, html: "<p>n</p>", cooldown: 1h, kind: transactional}
"""


class TestFrequencyCap:
    @pytest.fixture
    def config_text(self) -> str:
        return CAP_CONFIG

    async def test_cap_counts_across_campaigns_and_frees_up_with_time(self, harness: Harness) -> None:
        assert (await harness.send(campaign_id="a"))["status"] == "sent"
        assert (await harness.send(campaign_id="b"))["status"] == "sent"
        harness.clock.advance(7200)
        assert (await harness.send(campaign_id="a"))["status"] == "sent"
        capped = await harness.send(campaign_id="b")
        assert capped["status"] == "frequency_cap" and "3 emails in the last 7d" in capped["reason"]
        assert (await harness.send(campaign_id="notice"))["status"] == "sent"  # transactional mail is not capped
        harness.clock.advance(7 * 86400)
        assert (await harness.send(campaign_id="b"))["status"] == "sent"
