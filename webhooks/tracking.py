"""Recipient-facing routes: open pixel, click redirect, unsubscribe (RFC 8058 one-click)."""

from __future__ import annotations

import base64
from html import escape

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from core.compose import tokens_for
from core.engagement import record_click, record_open, unsubscribe
from webhooks.common import handles_problems, read_body, runtime

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_STORE = {"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0", "Pragma": "no-cache"}


def _not_found() -> Response:
    return JSONResponse({"error": "unknown link"}, status_code=404, headers=NO_STORE)


async def open_pixel(request: Request) -> Response:
    """
    summary: Open-tracking pixel (1x1 GIF)
    responses:
      200: {description: image/gif}
      404: {description: "Forged, altered or unknown token"}
    """
    rt = runtime(request)
    payload = tokens_for(rt).read(request.path_params["token"], "o")
    prefetch = request.method == "HEAD"  # link checkers and gateways probe; people GET
    if payload is None or not await record_open(rt, payload[1], request.headers.get("user-agent"), prefetch=prefetch):
        return _not_found()
    return Response(PIXEL, media_type="image/gif", headers=NO_STORE)


async def click(request: Request) -> Response:
    """
    summary: Click redirect, only to a link that was in that email
    responses:
      302: {description: Redirect to the original link}
      404: {description: "Forged, altered or unknown token"}
    """
    rt = runtime(request)
    payload = tokens_for(rt).read(request.path_params["token"], "c")
    if payload is None:
        return _not_found()
    prefetch = request.method == "HEAD"
    url = await record_click(rt, payload[1], payload[2], request.headers.get("user-agent"), prefetch=prefetch)
    if url is None:
        return _not_found()
    return RedirectResponse(url, status_code=302, headers=NO_STORE)


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{title}</title></head><body style="font-family:Arial,sans-serif;max-width:32em;margin:3em auto;color:#222">
{body}</body></html>"""


_MAX_FORM = 4 * 1024
"""A one-click body is 26 bytes; the page's form adds nothing."""


@handles_problems
async def unsubscribe_page(request: Request) -> Response:
    """
    summary: Unsubscribe; GET shows a page whose button POSTs, POST (RFC 8058 one-click) unsubscribes at once
    responses:
      200: {description: "Unsubscribed, or the confirmation page"}
      404: {description: "Forged, altered or unknown token"}
    """
    rt = runtime(request)
    token = request.path_params["token"]
    payload = tokens_for(rt).read(token, "u")
    if payload is None:
        return _not_found()
    if request.method != "POST":
        # GET and HEAD (link scanners, mail gateways) only show the page; nothing changes.
        body = (
            "<h1>Unsubscribe</h1><p>Stop receiving these emails?</p>"
            f'<form method="post" action="{escape(rt.config.public_url)}/u/{escape(token)}">'
            '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
            '<button type="submit">Unsubscribe</button></form>'
        )
        return HTMLResponse(_PAGE.format(title="Unsubscribe", body=body), headers=NO_STORE)
    form = await read_body(request, limit=_MAX_FORM)
    one_click = "list-unsubscribe=one-click" in form.decode("utf-8", "replace").lower()
    done = await unsubscribe(rt, payload[1], via="one-click" if one_click else "page")
    if done is None:
        return _not_found()
    body = "<h1>You are unsubscribed</h1><p>You will not receive these emails any more.</p>"
    return HTMLResponse(_PAGE.format(title="Unsubscribed", body=body), headers=NO_STORE)


routes = [
    Route("/t/o/{token}", open_pixel, methods=["GET"]),
    Route("/t/c/{token}", click, methods=["GET"]),
    Route("/u/{token}", unsubscribe_page, methods=["GET", "POST"]),
]
