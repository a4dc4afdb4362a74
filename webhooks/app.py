"""The Starlette application: every HTTP route of trigger-email."""

from __future__ import annotations

import contextlib
import gc
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute

from core.runtime import Runtime
from webhooks import api, console_api, dev, health


def all_routes(*, dev_routes: bool) -> list[BaseRoute]:
    from webhooks import admin, deliverability, events, hubspot, salesforce, tracking
    from webhooks.dashboard import pages as dashboard

    # Tracking first: pixel loads are the most frequent requests by far.
    routes: list[BaseRoute] = [
        *tracking.routes, *health.routes, *api.routes, *console_api.routes, *admin.routes, *hubspot.routes,
        *salesforce.routes, *events.routes, *deliverability.routes, *dashboard.routes,
    ]
    if dev_routes:
        routes += dev.routes
    return routes


async def http_error(request: Request, exc: Exception) -> Response:
    """The router's own 404 and 405 (and any HTTPException) as JSON, like every API error;
    the dashboard answers people with a page."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if request.url.path.startswith("/dashboard"):
        from html import escape

        return HTMLResponse(
            f"<!doctype html><title>{exc.status_code}</title><link rel=stylesheet href=/dashboard/static/console.css>"
            f"<main class=narrow><h1>{exc.status_code}</h1><p>{escape(str(exc.detail))}</p>"
            f"<p><a href=/dashboard>Back to the dashboard</a></p></main>",
            status_code=exc.status_code, headers=headers,
        )
    body = {"error": str(exc.detail)}
    if exc.status_code == 405 and "allow" in {key.lower() for key in headers}:
        body["allowed"] = next(value for key, value in headers.items() if key.lower() == "allow")
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


def create_app(rt: Runtime | None = None, *, dev_routes: bool = False) -> Starlette:
    """With `rt`, serve that runtime (dev mode, tests); without, build one from the
    environment at startup and close it at shutdown (`trigger-email serve`)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if rt is not None:
            yield
            return
        from config import Settings
        from core.runtime import build_runtime
        from core.engagement import flush_engagement
        from connectors.base import attach_connectors

        from core import live_config

        built = await build_runtime(Settings())
        attach_connectors(built)
        app.state.runtime = built
        live_config.start(built)  # `config reload` and SIGHUP reach this process
        # Start-up objects (SDKs, config) live for the process: keeping them out of the
        # collector's generations avoids 60-70 ms full collections in the middle of requests.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await live_config.stop(built)
            await flush_engagement(built)
            await built.aclose()

    from starlette.middleware import Middleware

    from webhooks.common import RefuseHostileUrls, redact_access_log, unavailable_exception_types, unavailable_handler

    redact_access_log()
    app = Starlette(
        routes=all_routes(dev_routes=dev_routes),
        lifespan=lifespan,
        middleware=[Middleware(RefuseHostileUrls)],
        exception_handlers={HTTPException: http_error, **{kind: unavailable_handler for kind in unavailable_exception_types()}},
    )
    if rt is not None:
        app.state.runtime = rt
    return app
