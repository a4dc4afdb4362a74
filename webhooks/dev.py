"""Routes that exist only under `trigger-email dev`."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.capture import CaptureServer
from webhooks.common import api_key_required, problem, runtime


@api_key_required
async def dev_outbox(request: Request) -> Response:
    """
    summary: Emails captured by the dev SMTP server, oldest first (dev only)
    responses:
      200: {description: "{messages: [{to, from, subject, message_id, date, headers, html, text}]}"}
    """
    capture: CaptureServer | None = runtime(request).extras.get("capture")
    if capture is None:
        return problem(404, "no capture server: SMTP_URL points at a real server")
    return JSONResponse({"messages": await asyncio.to_thread(capture.messages)})


routes = [Route("/dev/outbox", dev_outbox, methods=["GET"])]
