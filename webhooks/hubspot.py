"""`POST /webhooks/hubspot`: HubSpot Webhooks API batches and workflow webhooks."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from webhooks.crm import receive


async def hubspot(request: Request) -> Response:
    """
    summary: HubSpot webhooks (Webhooks API batches and workflow "Send a webhook" actions)
    description: Signed with X-HubSpot-Signature-v3 (or v1/v2). Stored before the 200; redeliveries are acknowledged and ignored.
    responses:
      200: {description: "{received, duplicates, event_ids}"}
      400: {description: Malformed body}
      401: {description: "Missing, wrong or stale signature"}
      403: {description: Another portal}
    """
    error, new, duplicates = await receive(request, "hubspot")
    return error or JSONResponse(
        {"received": new, "duplicates": duplicates, "event_ids": getattr(request.state, "event_ids", [])}
    )


routes = [Route("/webhooks/hubspot", hubspot, methods=["POST"])]
