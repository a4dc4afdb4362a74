"""`POST /webhooks/salesforce/outbound` (SOAP Outbound Messages) and
`POST /webhooks/salesforce/events` (JSON from Flow, Apex, Platform Event relays)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from webhooks.crm import receive


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
    Route("/webhooks/salesforce/outbound", salesforce_outbound, methods=["POST"]),
    Route("/webhooks/salesforce/events", salesforce_events, methods=["POST"]),
]
