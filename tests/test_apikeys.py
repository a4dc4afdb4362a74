"""API keys from the command line: list, revoke, scopes enforced on the routes, last use
recorded cheaply; an Idempotency-Key reused with another body is a 422."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from core.db import api_keys, triggers
from tests.harness import JANE, MEI, Harness, cli_environment, invoke_cli as invoke


@pytest.fixture
def cli_env(harness: Harness, tmp_path: Path) -> dict[str, str | None]:
    return cli_environment(harness, tmp_path, COLUMNS="200")


async def new_key(env: dict[str, str], name: str, *scopes: str) -> dict[str, str]:
    args = ["apikey", "create", name]
    for scope in scopes:
        args += ["--scope", scope]
    result = await invoke(args, env)
    assert result.exit_code == 0, result.output
    return {"Authorization": f"Bearer {result.output.strip()}"}


async def test_scopes_are_enforced_on_the_routes(harness: Harness, cli_env: dict[str, str]) -> None:
    reader = await new_key(cli_env, "dashboard-reader", "read")
    writer = await new_key(cli_env, "crm-relay", "triggers:write")
    body = {"npi": JANE, "campaign_id": "asthma-launch"}

    assert (await harness.client.get("/v1/campaigns", headers=reader)).status_code == 200
    refused = await harness.client.post("/v1/triggers", json=body, headers=reader)
    assert refused.status_code == 403
    assert refused.json() == {"error": "this API key lacks the 'triggers:write' scope", "field": "Authorization"}
    for method, url in (("POST", "/v1/campaigns/asthma-launch/pause"), ("POST", "/v1/outbox/retry"),
                        ("DELETE", "/v1/suppressions?npi=" + JANE)):
        response = await harness.client.request(method, url, headers=reader)
        assert response.status_code == 403 and "'admin' scope" in response.json()["error"], (method, url)
    assert (await harness.client.post("/v1/suppressions", json={"npi": MEI}, headers=reader)).status_code == 403

    accepted = await harness.client.post("/v1/triggers", json=body, headers=writer)
    assert accepted.status_code == 202
    looked = await harness.client.get(f"/v1/triggers/{accepted.json()['id']}", headers=writer)
    assert looked.status_code == 403 and "'read' scope" in looked.json()["error"]
    assert (await harness.client.get("/v1/campaigns", headers=writer)).status_code == 403

    full = await new_key(cli_env, "ops")
    assert (await harness.client.post("/v1/campaigns/asthma-launch/pause", headers=full)).status_code == 200
    paused = (await harness.client.get("/v1/campaigns", headers=full)).json()["campaigns"]
    assert next(c for c in paused if c["id"] == "asthma-launch")["status"] == "paused"

    bogus = await invoke(["apikey", "create", "x", "--scope", "write-everything"], cli_env)
    assert bogus.exit_code == 2 and "unknown scope 'write-everything'" in bogus.output


async def test_list_and_revoke(harness: Harness, cli_env: dict[str, str]) -> None:
    relay = await new_key(cli_env, "crm-relay", "triggers:write", "read")
    other = await new_key(cli_env, "backfill")
    assert (await harness.client.get("/v1/campaigns", headers=relay)).status_code == 200

    listing = await invoke(["apikey", "list"], cli_env)
    assert listing.exit_code == 0, listing.output
    lines = {line.split("│")[1].strip(): line for line in listing.output.splitlines() if line.count("│") > 3}
    assert {"tests", "crm-relay", "backfill"} <= set(lines)
    assert "triggers:write read" in lines["crm-relay"] and "admin" not in lines["crm-relay"]
    assert relay["Authorization"].removeprefix("Bearer ")[:10] in lines["crm-relay"]

    revoked = await invoke(["apikey", "revoke", "crm-relay"], cli_env)
    assert revoked.exit_code == 0 and "revoked 1 API key(s) crm-relay" in revoked.output
    gone = await harness.client.get("/v1/campaigns", headers=relay)
    assert gone.status_code == 401 and gone.json()["error"] == "unknown or revoked API key"
    assert (await harness.client.get("/v1/campaigns", headers=other)).status_code == 200, "other keys keep working"
    again = await invoke(["apikey", "revoke", "crm-relay"], cli_env)
    assert again.exit_code == 1 and "no active API key named 'crm-relay'" in again.output
    listing = await invoke(["apikey", "list"], cli_env)
    row = next(line for line in listing.output.splitlines() if "crm-relay" in line)
    assert row.rstrip(" │").split("│")[-1].strip() != "-", "the revoked column shows when"


async def last_used(harness: Harness, name: str):  # type: ignore[no-untyped-def]
    async with harness.rt.db.connect() as connection:
        return (await connection.execute(select(api_keys.c.last_used_at).where(api_keys.c.name == name))).scalar_one()


async def test_last_used_at_is_kept_at_most_once_a_minute(harness: Harness) -> None:
    assert await last_used(harness, "tests") is None
    await harness.client.get("/v1/campaigns", headers=harness.auth)
    first = await last_used(harness, "tests")
    assert first == harness.clock.now()
    harness.clock.advance(timedelta(seconds=30))
    for _ in range(5):
        await harness.client.get("/v1/campaigns", headers=harness.auth)
    assert await last_used(harness, "tests") == first, "no write per request"
    harness.clock.advance(timedelta(seconds=31))
    await harness.client.get("/v1/campaigns", headers=harness.auth)
    assert await last_used(harness, "tests") == harness.clock.now()


async def test_idempotency_key_reused_with_another_body_is_422(harness: Harness) -> None:
    headers = {**harness.auth, "Idempotency-Key": "order-4711"}
    body = {"npi": JANE, "campaign_id": "asthma-launch", "data": {"note": "a"}}
    first = await harness.client.post("/v1/triggers", json=body, headers=headers)
    same = await harness.client.post("/v1/triggers", json=dict(reversed(list(body.items()))), headers=headers)
    assert first.status_code == same.status_code == 202 and first.json()["id"] == same.json()["id"]
    for changed in ({**body, "data": {"note": "b"}}, {**body, "npi": MEI}, {**body, "campaign_id": "cardio-webinar"}):
        response = await harness.client.post("/v1/triggers", json=changed, headers=headers)
        assert response.status_code == 422, response.text
        assert response.json()["field"] == "Idempotency-Key"
        assert "already used with a different request body" in response.json()["error"]
    async with harness.rt.db.connect() as connection:
        assert (await connection.execute(select(func.count()).select_from(triggers))).scalar_one() == 1
