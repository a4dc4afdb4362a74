"""`GET /v1/deliverability`: per receiving domain, what happened to our email and whether
sending to it is throttled or paused (and why)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.clock import iso
from core.domains import deliverability
from webhooks.common import api_key_required, problem, runtime


_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})")
"""RFC 3339 date-time, what the OpenAPI `format: date-time` promises: a date alone or a
time without its offset is refused rather than guessed."""


def _moment(value: str, field: str) -> datetime:
    if not _DATE_TIME.fullmatch(value):
        raise ValueError(value)
    moment = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))  # raises ValueError, named by the caller
    return moment.astimezone(timezone.utc)


@api_key_required
async def get_deliverability(request: Request) -> Response:
    """
    summary: Per receiving domain sent, delivered, hard, soft, block, complaints, and the current throttle or pause
    parameters:
      - {in: query, name: from, required: false, schema: {type: string, format: date-time}}
      - {in: query, name: to, required: false, schema: {type: string, format: date-time}}
    responses:
      200: {description: One row per receiving domain (grouped by mail provider)}
      422: {description: A bad from/to}
    """
    rt = runtime(request)
    now = rt.clock.now()
    bounds = {}
    for field, default in (("from", now - timedelta(days=7)), ("to", now)):
        value = request.query_params.get(field)
        try:
            bounds[field] = _moment(value, field) if value is not None else default
        except ValueError:
            return problem(422, f"{field}: expected an RFC 3339 date-time like 2026-01-31T00:00:00Z, got {value!r}", field)
    if bounds["from"] > bounds["to"]:
        return problem(422, "from must not be after to", "from")
    rows = await deliverability(rt, bounds["from"], bounds["to"] + timedelta(microseconds=1))
    for row in rows:
        row["until"] = iso(row["until"])
    return JSONResponse({"from": iso(bounds["from"]), "to": iso(bounds["to"]), "domains": rows})


routes = [Route("/v1/deliverability", get_deliverability, methods=["GET"])]


class DeliverabilityCollector:
    """The view's figures as gauges, read at scrape time over the last 24 hours:
    `trigger_email_domain_emails{domain,figure}` and `trigger_email_domain_state{domain,state}`
    (1 while a domain is throttled or paused)."""

    window = timedelta(hours=24)

    def __init__(self) -> None:
        self.rows: list[dict] = []

    async def refresh(self, rt: object) -> None:
        now = rt.clock.now()  # type: ignore[attr-defined]
        self.rows = await deliverability(rt, now - self.window, now + timedelta(seconds=1))  # type: ignore[arg-type]

    def collect(self):  # type: ignore[no-untyped-def]
        from prometheus_client.core import GaugeMetricFamily

        emails = GaugeMetricFamily(
            "trigger_email_domain_emails", "Per receiving domain over the last 24h: sent, delivered, hard, soft, block, complaints",
            labels=["domain", "figure"],
        )
        state = GaugeMetricFamily("trigger_email_domain_state", "1 while sending to a receiving domain is throttled or paused", labels=["domain", "state"])
        for row in self.rows:
            for figure in ("sent", "delivered", "hard", "soft", "block", "complaints"):
                emails.add_metric([row["domain"], figure], float(row[figure]))
            if row["state"] != "ok":
                state.add_metric([row["domain"], row["state"]], 1.0)
        yield emails
        yield state


DELIVERABILITY = DeliverabilityCollector()


def _register() -> None:
    from prometheus_client import REGISTRY

    REGISTRY.register(DELIVERABILITY)


_register()
