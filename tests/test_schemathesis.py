"""schemathesis against `/openapi.json`: every operation, every check, a bounded number of
generated requests each, with a valid API key. No answer may be a 5xx, and every answer must
match what the document promises (status codes, content types, error schema, 405 + Allow,
401 without the key).

One deviation from the checks' defaults: `positive_data_acceptance` also accepts 400, 413,
415 and 422, since JSON Schema cannot express an NPI's check digit, "exactly one of npi and
email", a configured campaign id or a well-formed SOAP envelope, so a request the schema
allows may still be refused with a reason."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Iterator

import pytest
import schemathesis
import yaml

from core.apikeys import create_key
from core.clock import Clock
from core.runtime import build_runtime
from core.schema import upgrade
from config import Settings
from tests.harness import BASE_CONFIG, TEST_DATABASE_URL, make_config, reset_database

MAX_EXAMPLES = 25
CRM = {
    "hubspot": {"client_secret": "schemathesis-hubspot-client-secret"},
    "salesforce": {"instance_url": "https://example.my.salesforce.com", "organization_id": "00D000000000001AAA",
                   "npi_fields": {"Contact": "NPI__c"}, "events_secret": "schemathesis-salesforce-events-secret"},
}
CONFIG = BASE_CONFIG + yaml.safe_dump({"crm": CRM}, sort_keys=False)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[tuple[Any, str]]:
    """The production app (`create_app()` builds its runtime from the environment at
    startup, in schemathesis's own event loop) on a migrated database with one API key."""
    from webhooks.app import create_app

    base = tmp_path_factory.mktemp("schemathesis")
    config_file = base / "trigger-email.yaml"
    config_file.write_text(CONFIG)
    env = {
        "DATABASE_URL": TEST_DATABASE_URL or f"sqlite:///{base / 'fuzz.db'}", "REDIS_URL": redis_url,
        "SMTP_URL": "smtp://127.0.0.1:1", "SECRET_KEY": "schemathesis-secret-key-0123456789abcdef",
        "TRIGGER_EMAIL_CONFIG": str(config_file),
    }

    async def prepare() -> str:
        await reset_database(env["DATABASE_URL"])
        rt = await build_runtime(Settings(**{k.lower(): v for k, v in env.items()}), config=make_config(CONFIG),
                                 connect_redis=False)
        try:
            await upgrade(rt.db)
            return await create_key(rt.db, "schemathesis", Clock().now())
        finally:
            await rt.aclose()

    key = asyncio.run(prepare())
    patch = pytest.MonkeyPatch()
    for name, value in env.items():
        patch.setenv(name, value)
    app = create_app()
    yield app, key
    from schemathesis.python.asgi import shutdown_lifespans

    shutdown_lifespans()
    patch.undo()


SEED = int(os.environ.get("SCHEMATHESIS_SEED", "20261130"))
"""A fixed seed keeps CI reproducible; set SCHEMATHESIS_SEED to explore other inputs (every
failure found that way becomes a test of its own, as the whitespace body did)."""


def run_schemathesis(app: Any, key: str) -> tuple[list[str], dict[str, set[int]], list[str]]:
    """Every phase (examples, coverage, fuzzing, stateful) of every operation, every check;
    returns (failed checks, statuses seen per operation, engine errors)."""
    from schemathesis.engine import events, from_schema
    from schemathesis.engine import Status

    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "headers": {"Authorization": f"Bearer {key}"},
        "generation": {"max-examples": MAX_EXAMPLES},
        "checks": {"positive_data_acceptance": {"expected-statuses": [
            "2xx", "3xx", "400", "401", "403", "404", "409", "413", "415", "422", "429"]}},
    })
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    failures: list[str] = []
    statuses: dict[str, set[int]] = {}
    errors: list[str] = []
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            for case_id, interaction in recorder.interactions.items():
                if interaction.response is not None:
                    label = recorder.cases[case_id].value.operation.label if case_id in recorder.cases else recorder.label
                    statuses.setdefault(label, set()).add(interaction.response.status_code)
            for case_id, checks in recorder.checks.items():
                for check in checks:
                    if check.status == Status.FAILURE:
                        info = check.failure_info
                        detail = str(info.failure) if info is not None else ""
                        failures.append(f"{recorder.label}: {check.name}: {detail[:400]}")
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            errors.append(f"{getattr(event, 'label', '')}: {getattr(event, 'value', getattr(event, 'exception', event))}")
    return sorted(set(failures)), statuses, errors


EXPECTED_OPERATIONS = {
    "POST /v1/triggers", "GET /v1/triggers/{trigger_id}", "GET /v1/campaigns", "GET /v1/campaigns/{campaign_id}/stats",
    "POST /v1/campaigns/{campaign_id}/pause", "POST /v1/campaigns/{campaign_id}/resume", "GET /v1/suppressions",
    "POST /v1/suppressions", "DELETE /v1/suppressions", "GET /v1/outbox", "POST /v1/outbox/retry", "GET /t/o/{token}",
    "GET /t/c/{token}", "GET /u/{token}", "POST /u/{token}", "GET /health", "GET /metrics", "POST /webhooks/hubspot",
    "POST /webhooks/salesforce/outbound", "POST /webhooks/salesforce/events", "GET /v1/events", "GET /v1/events/{event_id}",
}


def test_schemathesis_finds_no_5xx_and_no_broken_promise(service: tuple[Any, str]) -> None:
    app, key = service
    failures, statuses, errors = run_schemathesis(app, key)
    assert sorted(set(e[:300] for e in errors)) == []
    assert not failures, "\n".join(failures)
    assert EXPECTED_OPERATIONS <= set(statuses), EXPECTED_OPERATIONS - set(statuses)
    server_errors = {label: codes for label, codes in statuses.items() if any(code >= 500 for code in codes)}
    assert server_errors == {}
    reached = {label for label, codes in statuses.items() if any(code < 400 for code in codes)}
    print("schemathesis: %d operations, %d answered 2xx/3xx at least once" % (len(statuses), len(reached)))
