"""The suppression list through the API and the `trigger-email suppress` command, and what a
suppression does to the next trigger."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.harness import BASE_CONFIG, JANE, OMAR, Harness

ROOT = Path(__file__).resolve().parents[1]


async def cli(harness: Harness, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    """Run `trigger-email …` as a separate process on the test database."""
    config = tmp_path / "config.yaml"
    config.write_text(BASE_CONFIG)
    env = {
        **os.environ, "DATABASE_URL": harness.rt.settings.database_url, "TRIGGER_EMAIL_CONFIG": str(config),
        "COLUMNS": "200",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "trigger_email.cli", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode or 0, out.decode(), err.decode()


async def listed(harness: Harness, **query: str) -> list[dict]:
    response = await harness.client.get("/v1/suppressions", params=query, headers=harness.auth)
    assert response.status_code == 200, response.text
    return response.json()["suppressions"]


async def test_suppressing_an_npi_through_the_api(harness: Harness) -> None:
    response = await harness.client.post(
        "/v1/suppressions", json={"npi": JANE, "reason": "hcp-request", "detail": "asked by phone"}, headers=harness.auth
    )
    assert response.status_code == 201, response.text
    assert response.json()["npi"] == JANE

    [row] = await listed(harness)
    assert (row["npi"], row["email"], row["reason"], row["detail"]) == (JANE, None, "hcp-request", "asked by phone")
    assert row["created_at"] == "2026-01-05T09:00:00Z"

    blocked = await harness.send(JANE)
    assert blocked["status"] == "suppressed" and "hcp-request" in blocked["reason"], blocked
    assert harness.smtp.messages == []

    removed = await harness.client.request("DELETE", "/v1/suppressions", json={"npi": JANE}, headers=harness.auth)
    assert removed.json() == {"removed": 1}
    assert await listed(harness) == []
    assert (await harness.send(JANE))["status"] == "sent"


async def test_suppressing_an_address_sends_to_the_next_one(harness: Harness) -> None:
    response = await harness.client.post(
        "/v1/suppressions", json={"email": "Jane.Doe@Clinic.example", "reason": "bounced-elsewhere"}, headers=harness.auth
    )
    assert response.status_code == 201
    [row] = await listed(harness, email="jane.doe@clinic.example")
    assert row["npi"] is None and row["email"] == "jane.doe@clinic.example"

    result = await harness.send(JANE)
    assert result["status"] == "sent" and result["messages"][0]["to"] == "jdoe@health.example"

    await harness.client.post("/v1/suppressions", json={"email": "jdoe@health.example"}, headers=harness.auth)
    last = await harness.send(JANE, "cardio-webinar")
    assert last["status"] == "suppressed" and last["messages"] == [], "with both addresses blocked nothing goes out"
    assert len(harness.smtp.messages) == 1

    removed = await harness.client.delete("/v1/suppressions", params={"email": "jdoe@health.example"}, headers=harness.auth)
    assert removed.json() == {"removed": 1}
    assert [r["email"] for r in await listed(harness)] == ["jane.doe@clinic.example"]


async def test_a_campaign_scoped_suppression(harness: Harness) -> None:
    response = await harness.client.post(
        "/v1/suppressions", json={"npi": OMAR, "campaign_id": "cardio-webinar"}, headers=harness.auth
    )
    assert response.status_code == 201
    omar = await harness.send(OMAR, "cardio-webinar")
    assert omar["status"] == "suppressed" and omar["messages"] == [], "his only address is blocked"
    assert (await harness.send(OMAR, "derm-news"))["status"] == "sent"


async def test_bad_suppression_requests_are_refused(harness: Harness) -> None:
    cases = [
        ({"npi": "1234567890"}, "npi"),
        ({"email": "not-an-address"}, "email"),
        ({}, "npi"),
        ({"npi": JANE, "email": "jane.doe@clinic.example"}, "email"),
        ({"npi": JANE, "campaign_id": "no-such-campaign"}, "campaign_id"),
        ({"npi": JANE, "reason": "x" * 40}, "reason"),
    ]
    for body, field in cases:
        response = await harness.client.post("/v1/suppressions", json=body, headers=harness.auth)
        assert response.status_code == 422, body
        assert response.json()["field"] == field, response.json()
    empty = await harness.client.post("/v1/suppressions", headers=harness.auth)
    assert empty.status_code == 422 and empty.json()["field"] == "body"
    assert (await harness.client.get("/v1/suppressions")).status_code == 401
    assert (await harness.client.post("/v1/suppressions", json={"npi": JANE})).status_code == 401
    assert await listed(harness) == []


async def test_suppress_command_adds_lists_and_removes(harness: Harness, tmp_path: Path) -> None:
    code, out, err = await cli(harness, tmp_path, "suppress", "add", JANE, "--reason", "legal-hold")
    assert code == 0, err
    assert JANE in out
    code, out, err = await cli(harness, tmp_path, "suppress", "add", "omar.haddad@heart.example")
    assert code == 0, err

    code, out, err = await cli(harness, tmp_path, "suppress", "list")
    assert code == 0, err
    assert JANE in out and "legal-hold" in out and "omar.haddad@heart.example" in out and "manual" in out
    assert {(r["npi"], r["email"], r["reason"]) for r in await listed(harness)} == {
        (JANE, None, "legal-hold"), (None, "omar.haddad@heart.example", "manual"),
    }

    blocked = await harness.send(JANE)
    assert blocked["status"] == "suppressed" and "legal-hold" in blocked["reason"]
    omar = await harness.send(OMAR, "cardio-webinar")
    assert omar["status"] == "suppressed" and omar["messages"] == [], "his only address is blocked"

    code, out, err = await cli(harness, tmp_path, "suppress", "remove", JANE)
    assert code == 0 and "removed 1" in out, (out, err)
    assert (await harness.send(JANE))["status"] == "sent"

    code, _, err = await cli(harness, tmp_path, "suppress", "add", "1234567890")
    assert code != 0 and "check digit" in err.lower(), err
