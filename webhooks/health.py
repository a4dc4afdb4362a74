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
    summary: "Prometheus metrics. Authorization: Bearer <METRICS_TOKEN or an API key>; open under dev when METRICS_TOKEN is unset"
    responses:
      200: {description: text exposition format}
      401: {description: Missing or wrong token}
    """
    rt = runtime(request)
    refusal = await _metrics_refusal(request, rt)
    if refusal is not None:
        return refusal
    await STATE.refresh(rt)
    from webhooks.deliverability import DELIVERABILITY

    await DELIVERABILITY.refresh(rt)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


async def _metrics_refusal(request: Request, rt: object) -> Response | None:
    import hmac

    from core.apikeys import check_key

    token = rt.settings.metrics_token  # type: ignore[attr-defined]
    if rt.settings.dev and not token:  # type: ignore[attr-defined]
        return None
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() == "bearer" and given:
        if token and hmac.compare_digest(given.encode(), token.encode()):
            return None
        if await check_key(rt.db, given) is not None:  # type: ignore[attr-defined]
            return None
    return JSONResponse(
        {"error": "send 'Authorization: Bearer <METRICS_TOKEN or an API key>'", "field": "Authorization"}, status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )


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
        from sqlalchemy import case, func, select

        from core.db import messages, outbox

        from core.db import engagement_events

        db = rt.db  # type: ignore[attr-defined]
        now = rt.clock.now()  # type: ignore[attr-defined]
        async with db.connect() as connection:
            message_rows = (await connection.execute(select(messages.c.status, func.count()).group_by(messages.c.status))).all()
            outbox_rows = (await connection.execute(select(outbox.c.status, func.count()).group_by(outbox.c.status))).all()
            # What the dashboard shows, per campaign: one aggregate over the messages.
            campaign_rows = (await connection.execute(
                select(
                    messages.c.campaign_id, func.count(messages.c.sent_at), func.count(messages.c.opened_at),
                    func.count(case((messages.c.machine_opens > 0, 1))), func.count(messages.c.clicked_at),
                    func.count(messages.c.bounced_at), func.count(messages.c.unsubscribed_at),
                ).group_by(messages.c.campaign_id)
            )).all()
            report_rows = (await connection.execute(
                select(engagement_events.c.kind, func.count())
                .where(engagement_events.c.kind.in_(("hard_bounce", "soft_bounce", "complaint", "block", "auto_reply")))
                .group_by(engagement_events.c.kind)
            )).all()
            depth_rows = (await connection.execute(
                select(outbox.c.crm, outbox.c.status, func.count(), func.min(outbox.c.created_at)).group_by(outbox.c.crm, outbox.c.status)
            )).all()
        self.values = {
            "messages": [((status,), float(count)) for status, count in message_rows],
            "outbox": [((status,), float(count)) for status, count in outbox_rows],
        }
        figures = ("sent", "opened_human", "opened_machine", "clicked", "hard_bounced", "unsubscribed")
        self.values["campaign"] = [
            ((campaign_id, figure), float(value))
            for campaign_id, *values in campaign_rows for figure, value in zip(figures, values)
        ]
        self.values["bounces"] = [((kind.removesuffix("_bounce"),), float(count)) for kind, count in report_rows]
        self.values["outbox_crm"] = [((crm, status), float(count)) for crm, status, count, _oldest in depth_rows]
        self.values["outbox_age"] = [
            ((crm,), max(0.0, (now - oldest).total_seconds()))
            for crm, status, _count, oldest in depth_rows if status == "pending" and oldest is not None
        ]
        depth = 0.0
        redis = rt.queue.redis  # type: ignore[attr-defined]
        if redis is not None:
            try:
                depth = float(await redis.zcard("arq:queue"))
            except Exception:  # noqa: BLE001 - Redis down shows in /health; the figures still answer
                depth = float("nan")
        self.values["queue"] = [((), depth)]
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
            ("campaign", "Emails per campaign: sent, opened by people / by machines, clicked, hard-bounced, unsubscribed",
             ["campaign", "figure"]),
            ("bounces", "Bounce and complaint reports by kind", ["kind"]),
            ("outbox_crm", "CRM activity outbox rows by CRM and status", ["crm", "status"]),
            ("outbox_age", "Age in seconds of the oldest pending outbox row, by CRM", ["crm"]),
            ("queue", "Jobs waiting in the arq queue", []),
        ):
            name = {
                "messages": "message_states", "outbox": "outbox_rows", "api_usage": "crm_api_usage",
                "campaign": "campaign_emails", "bounces": "bounce_reports", "outbox_crm": "outbox_depth",
                "outbox_age": "outbox_oldest_pending_seconds", "queue": "queue_depth",
            }[key]
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
