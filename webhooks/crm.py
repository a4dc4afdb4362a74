"""What every CRM webhook route shares: verify, parse, store through the CRM's connector;
the answer goes out only after the events are committed."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from connectors.base import Connector, InboundRequest, WebhookRejected
from core.inbound import store_events_with_ids
from core.metrics import WEBHOOKS
from webhooks.common import HTTPProblem, parse_json, read_body, runtime

log = logging.getLogger(__name__)

MAX_WEBHOOK_BODY = 4 * 1024 * 1024


def _connector(request: Request, name: str) -> Connector | None:
    return runtime(request).extras.get("connectors", {}).get(name)


def public_url(request: Request) -> str:
    """The URL the CRM called, as it signed it: behind a proxy the Host we see is not it."""
    base = runtime(request).config.public_url
    query = f"?{request.url.query}" if request.url.query else ""
    return f"{base}{request.url.path}{query}"


def _rejection(source: str, rejected: WebhookRejected) -> Response:
    WEBHOOKS.labels(source, f"rejected_{rejected.status}").inc()
    if rejected.body is not None:
        return Response(rejected.body, status_code=rejected.status, media_type=rejected.media_type or "text/plain")
    return JSONResponse({"error": rejected.reason}, status_code=rejected.status)


async def receive(request: Request, name: str) -> tuple[Response | None, int, int]:
    """Verify, parse and store; returns (an error response or None, new events, duplicates)."""
    connector = _connector(request, name)
    if connector is None:
        return JSONResponse({"error": f"crm.{name} is not configured"}, status_code=404), 0, 0
    try:
        body = await read_body(request, MAX_WEBHOOK_BODY)
    except HTTPProblem as exc:
        return JSONResponse({"error": exc.reason}, status_code=exc.status), 0, 0
    inbound = InboundRequest(
        method=request.method, public_url=public_url(request), headers={k.lower(): v for k, v in request.headers.items()}, body=body
    )
    try:
        if body.lstrip()[:1] in (b"{", b"["):
            # Hostile JSON (too deep, NaN, NUL, lone surrogates, not UTF-8) is refused here,
            # for every CRM, before a connector decodes it: a 400 the CRM does not retry.
            parse_json(body, status=400)
        connector.verify(inbound)
        events = connector.parse(inbound)
    except WebhookRejected as rejected:
        log.info("%s webhook rejected: %s %s", name, rejected.status, rejected.reason)
        return _rejection(name, rejected), 0, 0
    except HTTPProblem as exc:
        log.info("%s webhook rejected: %s %s", name, exc.status, exc.reason)
        return _rejection(name, WebhookRejected(exc.status, exc.reason)), 0, 0
    stored = await store_events_with_ids(runtime(request), events)
    new, duplicates = stored.new, stored.duplicates
    request.state.event_ids = stored.ids
    if new:
        log.info("%s webhook stored %d event(s) %s", name, new, ", ".join(f"#{i}" for i in stored.ids[:10]))
    if duplicates:
        log.info("%s webhook: %d duplicate(s) acknowledged and ignored", name, duplicates)
    WEBHOOKS.labels(name, "stored").inc(new)
    WEBHOOKS.labels(name, "duplicate").inc(duplicates)
    return None, new, duplicates
