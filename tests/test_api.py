"""The trigger API's contract: 202 only once stored, idempotency, and 4xx that name the field."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from core.db import triggers
from tests.harness import JANE, OMAR, Harness

pytestmark = pytest.mark.default_backend


async def stored_triggers(h: Harness) -> int:
    async with h.rt.db.connect() as connection:
        return (await connection.execute(select(func.count()).select_from(triggers))).scalar_one()


async def test_accepted_trigger_is_stored_before_the_answer(harness: Harness) -> None:
    accepted = await harness.trigger()
    assert accepted["status"] == "pending" and accepted["id"].startswith("trg_")
    view = await harness.outcome(accepted["id"])
    assert set(view) >= {"id", "npi", "campaign_id", "status", "reason", "created_at", "decided_at", "messages"}
    assert view["status"] == "pending" and view["decided_at"] is None


async def test_idempotency_key_returns_the_same_trigger_and_sends_once(harness: Harness) -> None:
    first = await harness.trigger(**{"Idempotency-Key": "form-42"})
    second = await harness.trigger(**{"Idempotency-Key": "form-42"})
    assert first["id"] == second["id"]
    from tests.harness import drain

    await drain(harness.rt)
    third = await harness.trigger(**{"Idempotency-Key": "form-42"})
    assert third == {"id": first["id"], "status": "sent"}
    assert await stored_triggers(harness) == 1
    assert len(harness.smtp.messages) == 1


async def test_missing_or_wrong_key_is_401(harness: Harness) -> None:
    body = {"npi": JANE, "campaign_id": "asthma-launch"}
    missing = await harness.client.post("/v1/triggers", json=body)
    wrong = await harness.client.post("/v1/triggers", json=body, headers={"Authorization": "Bearer te_nope"})
    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert missing.json()["field"] == "Authorization"
    assert await stored_triggers(harness) == 0


async def test_bad_input_is_422_naming_the_field_and_stores_nothing(harness: Harness) -> None:
    cases = [
        ({"campaign_id": "asthma-launch"}, "npi"),
        ({"npi": "123", "campaign_id": "asthma-launch"}, "npi"),
        ({"npi": "1234567890", "campaign_id": "asthma-launch"}, "npi"),
        ({"npi": JANE, "campaign_id": "nope"}, "campaign_id"),
        ({"npi": JANE}, "campaign_id"),
        ({"npi": JANE, "campaign_id": "asthma-launch", "data": [1, 2]}, "data"),
        (["not", "an", "object"], "body"),
    ]
    for body, field in cases:
        response = await harness.client.post("/v1/triggers", json=body, headers=harness.auth)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["field"] == field, (body, response.json())
        assert response.json()["error"]
    not_json = await harness.client.post("/v1/triggers", content=b"{npi:", headers={**harness.auth, "Content-Type": "application/json"})
    assert not_json.status_code == 422 and "not valid JSON" in not_json.json()["error"]
    assert await stored_triggers(harness) == 0


async def test_body_over_64_kib_is_413(harness: Harness) -> None:
    big = {"npi": JANE, "campaign_id": "asthma-launch", "data": {"blob": "x" * 70000}}
    response = await harness.client.post("/v1/triggers", json=big, headers=harness.auth)
    assert response.status_code == 413 and "64 KiB" in response.json()["error"]
    assert await stored_triggers(harness) == 0


async def test_unknown_trigger_is_404(harness: Harness) -> None:
    response = await harness.client.get("/v1/triggers/trg_missing", headers=harness.auth)
    assert response.status_code == 404


async def test_campaigns_listing_pause_resume_and_stats(harness: Harness) -> None:
    listing = (await harness.client.get("/v1/campaigns", headers=harness.auth)).json()["campaigns"]
    asthma = next(c for c in listing if c["id"] == "asthma-launch")
    assert asthma["status"] == "live" and asthma["cooldown"] == "30d" and asthma["resend"]["after"] == "3d"
    paused = await harness.client.post("/v1/campaigns/asthma-launch/pause", headers=harness.auth)
    assert paused.json()["status"] == "paused"
    assert (await harness.client.post("/v1/campaigns/nope/pause", headers=harness.auth)).status_code == 404
    await harness.client.post("/v1/campaigns/asthma-launch/resume", headers=harness.auth)
    await harness.send()
    stats = (await harness.client.get("/v1/campaigns/asthma-launch/stats", headers=harness.auth)).json()
    assert stats["sent"] == 1 and stats["outcomes"] == {"sent": 1} and stats["messages"]["scheduled"] == 1


async def test_openapi_describes_every_route(harness: Harness) -> None:
    spec = (await harness.client.get("/openapi.json")).json()
    for path in ("/v1/triggers", "/v1/triggers/{trigger_id}", "/v1/campaigns", "/v1/campaigns/{campaign_id}/stats",
                 "/v1/campaigns/{campaign_id}/pause", "/v1/campaigns/{campaign_id}/resume", "/health", "/metrics",
                 "/webhooks/hubspot", "/webhooks/salesforce/outbound", "/webhooks/salesforce/events",
                 "/t/o/{token}", "/t/c/{token}", "/u/{token}", "/v1/suppressions", "/v1/outbox"):
        assert path in spec["paths"], path
    assert "422" in str(spec["paths"]["/v1/triggers"]["post"]["responses"])


async def test_openapi_declares_parameters_security_and_errors(harness: Harness) -> None:
    spec = (await harness.client.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": spec["components"]["securitySchemes"]["bearer"]["description"]}
    assert spec["components"]["schemas"]["Error"]["required"] == ["error"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"\{(\w+)\}", path)), (path, method)
            assert ("security" in operation) == path.startswith("/v1/"), (path, method)
            for code in ("400", "503"):
                assert code in operation["responses"], (path, method, code)
            if path.startswith("/v1/"):
                assert {"401", "403"} <= set(operation["responses"]), (path, method)
                schema = operation["responses"]["401"]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}
    outbox = {p["name"]: p for p in spec["paths"]["/v1/outbox"]["get"]["parameters"]}
    assert outbox["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 1000}


async def test_health_and_metrics(harness: Harness) -> None:
    health = await harness.client.get("/health")
    assert health.status_code == 200 and health.json() == {"status": "ok", "database": "ok", "redis": "ok"}
    # The counters are process-wide (other tests ran before): compare values before and after.
    before = metric_values((await harness.client.get("/metrics", headers=harness.auth)).text)
    await harness.send()
    await harness.send(OMAR, "asthma-launch")  # not in the audience
    after = metric_values((await harness.client.get("/metrics", headers=harness.auth)).text)
    queued, refused = 'trigger_email_triggers_total{outcome="queued"}', 'trigger_email_triggers_total{outcome="not_in_audience"}'
    assert after[queued] - before.get(queued, 0.0) == 1.0
    assert after[refused] - before.get(refused, 0.0) == 1.0
    assert after['trigger_email_message_states{status="sent"}'] == 1.0


def metric_values(text: str) -> dict[str, float]:
    """Prometheus text format → {'name{labels}': value}."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


async def test_health_is_503_when_redis_is_gone(harness: Harness) -> None:
    """A real refused connection: a port we hold bound without listening, so nobody answers."""
    import socket

    from arq.connections import ArqRedis

    from core.queue import JobQueue

    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        gone = ArqRedis(host="127.0.0.1", port=dead.getsockname()[1], socket_connect_timeout=2)
        real = harness.rt.queue
        harness.rt.queue = JobQueue(gone)
        try:
            response = await harness.client.get("/health")
            accepted = await harness.trigger()  # still accepted: the database holds it, the sweep enqueues it
        finally:
            harness.rt.queue = real
            await gone.aclose()
    assert response.status_code == 503, response.text
    assert response.json() == {"status": "degraded", "database": "ok", "redis": "unavailable"}
    assert (await harness.outcome(accepted["id"]))["status"] == "pending"
    await harness.later(seconds=30)
    assert (await harness.outcome(accepted["id"]))["status"] == "sent"


async def test_openapi_responses_are_well_formed(harness: Harness) -> None:
    """A comma in an unquoted YAML flow mapping splits a description into junk keys."""
    spec = (await harness.client.get("/openapi.json")).json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for code, response in operation["responses"].items():
                assert isinstance(response["description"], str), (path, method, code, response)
                assert set(response) <= {"description", "content", "headers"}, (path, method, code, response)
