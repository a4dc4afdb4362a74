"""`POST /webhooks/salesforce/outbound` (SOAP Outbound Messages) and
`POST /webhooks/salesforce/events` (JSON from Flow, Apex, Platform Event relays).

Each route takes one kind of body; the connector refuses the other kind with 415 (see
`connectors.salesforce.connector.ROUTE_KINDS`). Salesforce reads only SOAP on the outbound
route, so every answer there, refusals included, is a SOAP envelope: a `Client` fault for a
message that will never be accepted, a `Server` fault (500) when we failed to store it, which
Salesforce retries with backoff for up to 24 hours.
"""

from __future__ import annotations

import json
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from connectors.salesforce import SOAP_MEDIA_TYPE, soap_ack, soap_fault
from core.metrics import WEBHOOKS
from webhooks.common import RETRY_AFTER, is_unavailable, unavailable
from webhooks.crm import receive

log = logging.getLogger(__name__)

SOURCE = "salesforce"


async def salesforce_outbound(request: Request) -> Response:
    """
    summary: Salesforce Outbound Messages (SOAP); answers the notificationsResponse Ack
    description: The Ack is sent only after every notification is stored; a redelivered notification (same Id) is acknowledged and not processed again.
    responses:
      200: {description: "SOAP Ack true"}
      400: {description: "SOAP fault: malformed or unsafe XML"}
      403: {description: "SOAP fault: another organization"}
      415: {description: "SOAP fault: a JSON body (events go to /webhooks/salesforce/events)"}
      500: {description: "SOAP fault (Server): not stored; Salesforce retries"}
      503: {description: "SOAP fault (Server): the database does not answer; Salesforce retries"}
    """
    try:
        error, _new, _duplicates = await receive(request, SOURCE)
    except Exception as exc:  # noqa: BLE001 - whatever failed, nothing was acknowledged: Salesforce retries
        WEBHOOKS.labels(SOURCE, "store_failed").inc()
        if is_unavailable(exc):
            log.warning("salesforce outbound message not stored: database unavailable (%s)", type(exc).__name__)
            fault = _fault(503, "the service is temporarily unavailable; retry later", code="Server")
            fault.headers["Retry-After"] = RETRY_AFTER
            return fault
        log.exception("salesforce outbound message could not be stored")
        return _fault(500, "the notifications could not be stored; retry later", code="Server")
    if error is not None:
        return _as_fault(error)
    return Response(soap_ack(), media_type=SOAP_MEDIA_TYPE)


async def salesforce_events(request: Request) -> Response:
    """
    summary: JSON events from Salesforce Flow HTTP callouts, Apex or Platform Event relays
    description: "Authorization: Bearer <events_secret>, or X-Trigger-Email-Timestamp + X-Trigger-Email-Signature (HMAC-SHA256 of timestamp.body). Stored before the 200; redeliveries are acknowledged and ignored."
    responses:
      200: {description: "{received, duplicates, event_ids}"}
      400: {description: Malformed body}
      401: {description: Neither the bearer secret nor a valid HMAC signature}
      415: {description: "An XML body (Outbound Messages go to /webhooks/salesforce/outbound)"}
      503: {description: "Not stored; retry"}
    """
    try:
        error, new, duplicates = await receive(request, SOURCE)
    except Exception as exc:  # noqa: BLE001 - nothing was acknowledged; the sender may retry
        WEBHOOKS.labels(SOURCE, "store_failed").inc()
        if is_unavailable(exc):
            log.warning("salesforce events not stored: database unavailable (%s)", type(exc).__name__)
            return unavailable()
        log.exception("salesforce events could not be stored")
        return JSONResponse({"error": "the events could not be stored; retry later"}, status_code=503,
                            headers={"Retry-After": RETRY_AFTER})
    return error or JSONResponse(
        {"received": new, "duplicates": duplicates, "event_ids": getattr(request.state, "event_ids", [])}
    )


def _fault(status: int, reason: str, *, code: str = "Client") -> Response:
    return Response(soap_fault(reason, code=code), status_code=status, media_type=SOAP_MEDIA_TYPE)


def _as_fault(error: Response) -> Response:
    """The shared receiver answers some refusals (not configured, body too large) in JSON;
    on this route they become SOAP faults with the same status."""
    if (error.media_type or "").startswith(SOAP_MEDIA_TYPE):
        return error
    try:
        reason = str(json.loads(bytes(error.body))["error"])
    except (ValueError, KeyError, TypeError):
        reason = "request refused"
    return _fault(error.status_code, reason, code="Server" if error.status_code >= 500 else "Client")


routes = [
    Route("/webhooks/salesforce/outbound", salesforce_outbound, methods=["POST"]),
    Route("/webhooks/salesforce/events", salesforce_events, methods=["POST"]),
]
