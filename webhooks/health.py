"""Operational routes: `/health`, `/metrics`, `/openapi.json`."""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import GaugeMetricFamily
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.schemas import SchemaGenerator

from webhooks.common import runtime

log = logging.getLogger(__name__)

schemas = SchemaGenerator({"openapi": "3.0.3", "info": {"title": "trigger-email", "version": "1"}})


async def health(request: Request) -> Response:
    """
    summary: Liveness and readiness, per dependency (database, Redis)
    description: "Each dependency is `ok` or `unavailable`; `status` is `ok` when all are, else `degraded` (503). No host, port or error text is shown: the logs have those."
    responses:
      200: {description: "{status: ok, database: ok, redis: ok}"}
      503: {description: "{status: degraded, database: unavailable, redis: ok}"}
    """
    rt = runtime(request)
    checks: dict[str, str] = {}
    for name, probe in (("database", rt.db.ping), ("redis", rt.queue.ping)):
        try:
            await asyncio.wait_for(probe(), timeout=3)
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            log.warning("health: %s unavailable: %s: %s", name, type(exc).__name__, exc)
            checks[name] = "unavailable"
    healthy = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ok" if healthy else "degraded", **checks},
        status_code=200 if healthy else 503, headers=None if healthy else {"Retry-After": "30"},
    )


async def metrics(request: Request) -> Response:
    """
    summary: Prometheus metrics
    responses:
      200: {description: text exposition format}
    """
    await STATE.refresh(runtime(request))
    from webhooks.deliverability import DELIVERABILITY

    await DELIVERABILITY.refresh(runtime(request))
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    """
    summary: This API description
    responses:
      200: {description: OpenAPI 3 document}
    """
    from webhooks.openapi import complete

    return JSONResponse(complete(schemas.get_schema(routes=request.app.routes)))


class StateCollector:
    """Gauges read from the database at scrape time (queue depths, outbox, API budgets)."""

    def __init__(self) -> None:
        self.values: dict[str, list[tuple[tuple[str, ...], float]]] = {}

    async def refresh(self, rt: object) -> None:
        from sqlalchemy import func, select

        from core.db import messages, outbox

        db = rt.db  # type: ignore[attr-defined]
        async with db.connect() as connection:
            message_rows = (await connection.execute(select(messages.c.status, func.count()).group_by(messages.c.status))).all()
            outbox_rows = (await connection.execute(select(outbox.c.status, func.count()).group_by(outbox.c.status))).all()
        self.values = {
            "messages": [((status,), float(count)) for status, count in message_rows],
            "outbox": [((status,), float(count)) for status, count in outbox_rows],
        }
        usage = []
        for name, connector in rt.extras.get("connectors", {}).items():  # type: ignore[attr-defined]
            figures = getattr(connector, "api_usage", None)
            if figures:
                usage.append(((name, "used"), float(figures[0])))
                usage.append(((name, "limit"), float(figures[1])))
        self.values["api_usage"] = usage

    def collect(self):  # type: ignore[no-untyped-def]
        for key, help_text, labels in (
            ("messages", "Messages by status", ["status"]),
            ("outbox", "CRM activity outbox rows by status", ["status"]),
            ("api_usage", "CRM API budget as last reported by the CRM", ["crm", "kind"]),
        ):
            name = {"messages": "message_states", "outbox": "outbox_rows", "api_usage": "crm_api_usage"}[key]
            family = GaugeMetricFamily(f"trigger_email_{name}", help_text, labels=labels)
            for label_values, value in self.values.get(key, []):
                family.add_metric(list(label_values), value)
            yield family


routes = [
    Route("/health", health, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False),
]


STATE = StateCollector()
REGISTRY.register(STATE)
