"""CRM webhook routes. Each is the same three steps over a connector: verify, parse, store;
the answer goes out only after the events are committed."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from connectors.base import Connector, InboundRequest, WebhookRejected, build_connectors
from core.inbound import store_events
from core.metrics import WEBHOOKS
from core.runtime import Runtime
from webhooks.common import HTTPProblem, read_body, runtime

log = logging.getLogger(__name__)

MAX_WEBHOOK_BODY = 4 * 1024 * 1024


def attach_connectors(rt: Runtime) -> None:
    rt.extras.setdefault("connectors", build_connectors(rt.config, rt.settings, rt.clock))


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
        connector.verify(inbound)
        events = connector.parse(inbound)
    except WebhookRejected as rejected:
        log.info("%s webhook rejected: %s %s", name, rejected.status, rejected.reason)
        return _rejection(name, rejected), 0, 0
    new, duplicates = await store_events(runtime(request), events)
    WEBHOOKS.labels(name, "stored").inc(new)
    WEBHOOKS.labels(name, "duplicate").inc(duplicates)
    return None, new, duplicates


async def hubspot(request: Request) -> Response:
    """
    summary: HubSpot webhooks (Webhooks API batches and workflow "Send a webhook" actions)
    description: Signed with X-HubSpot-Signature-v3 (or v1/v2). Stored before the 200; redeliveries are acknowledged and ignored.
    responses:
      200: {description: "{received, duplicates}"}
      400: {description: Malformed body}
      401: {description: Missing, wrong or stale signature}
      403: {description: Another portal}
    """
    error, new, duplicates = await receive(request, "hubspot")
    return error or JSONResponse({"received": new, "duplicates": duplicates})


async def salesforce_outbound(request: Request) -> Response:
    """
    summary: Salesforce Outbound Messages (SOAP); answers the notificationsResponse Ack
    responses:
      200: {description: SOAP Ack true}
      400: {description: SOAP fault, malformed or unsafe XML}
      403: {description: SOAP fault, another organization}
    """
    error, _new, _duplicates = await receive(request, "salesforce")
    if error is not None:
        return error
    from connectors.salesforce import soap_ack

    return Response(soap_ack(), media_type="text/xml")


async def salesforce_events(request: Request) -> Response:
    """
    summary: JSON events from Salesforce Flow HTTP callouts, Apex or Platform Event relays
    responses:
      200: {description: "{received, duplicates}"}
      400: {description: Malformed body}
      401: {description: Neither the bearer secret nor a valid HMAC signature}
    """
    error, new, duplicates = await receive(request, "salesforce")
    return error or JSONResponse({"received": new, "duplicates": duplicates})


routes = [
    Route("/webhooks/hubspot", hubspot, methods=["POST"]),
    Route("/webhooks/salesforce/outbound", salesforce_outbound, methods=["POST"]),
    Route("/webhooks/salesforce/events", salesforce_events, methods=["POST"]),
]
