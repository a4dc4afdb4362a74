"""A trigger through the API, the real worker and a real SMTP server."""

from __future__ import annotations

import pytest

from tests.harness import JANE, Harness

pytestmark = pytest.mark.default_backend


async def test_trigger_becomes_an_email_with_rendered_bodies_and_headers(harness: Harness) -> None:
    result = await harness.send(data={"note": "You asked about dosing"})
    assert result["status"] == "sent", result
    assert result["messages"][0]["to"] == "jane.doe@clinic.example"
    assert result["messages"][0]["kind"] == "initial"
    [email] = harness.smtp.messages
    assert email["Subject"] == "New asthma data for Pulmonary Disease practices"
    assert email["From"] == "Medical Information <medinfo@pharma.example>"
    assert email["Message-ID"] and email["Date"]
    html = email.get_body(("html",)).get_content()
    text = email.get_body(("plain",)).get_content()
    assert "Dear Dr. Doe" in html and "You asked about dosing" in html
    assert "Dear Dr. Doe" in text and "<p>" not in text
    assert "1 Main St, Springfield, NJ 07081" in text
