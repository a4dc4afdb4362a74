"""Inbound CRM events as stored: `GET /v1/events`, `GET /v1/events/{id}` (what became of each
one, and why: the triggers it made with the rule that matched, the error it failed with after
its retries, or why it made none; and whether the CRM sent it again)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.console import BadQuery, get_event as read_event, list_events as read_events, parse_time
from webhooks.common import api_key_required, problem, query_limit, runtime

STATUSES = ("pending", "processing", "done", "failed")
MAX_EVENT_ID = 2**31 - 1
"""Event ids are a 32-bit INTEGER column: a larger number names no event (and PostgreSQL
would refuse it as a query argument)."""


@api_key_required
async def get_event(request: Request) -> Response:
    """
    summary: One inbound CRM event, its status and result (or the error it failed with), the triggers it made
    parameters:
      - {in: path, name: event_id, required: true, schema: {type: integer, minimum: 0, maximum: 2147483647}}
    responses:
      200: {description: "{id, source, event_key, status, event_type, result, attempts, received_at, processed_at, due_at, duplicates, trigger_ids, triggers, why_none, event}"}
      404: {description: No such event}
    """
    raw = request.path_params["event_id"]
    if not (raw.isascii() and raw.isdigit() and int(raw) <= MAX_EVENT_ID):
        return problem(404, "no such event")
    view = await read_event(runtime(request).db, int(raw))
    if view is None:
        return problem(404, "no such event")
    return JSONResponse(view)


@api_key_required
async def list_events(request: Request) -> Response:
    """
    summary: "Inbound CRM events, newest first: filter by source, status, from, to (ISO 8601); cursor pagination"
    parameters:
      - {in: query, name: status, required: false, schema: {type: string, enum: [pending, processing, done, failed]}}
      - {in: query, name: source, required: false, schema: {type: string, maxLength: 32}}
      - {in: query, name: from, required: false, schema: {type: string, description: "ISO 8601 date or date-time, UTC when no zone"}}
      - {in: query, name: to, required: false, schema: {type: string, description: "ISO 8601 date or date-time, UTC when no zone"}}
      - {in: query, name: cursor, required: false, schema: {type: string}}
      - {in: query, name: limit, required: false, schema: {type: integer, minimum: 1, maximum: 500}}
    responses:
      200: {description: "{events: [...], next_cursor}"}
      422: {description: "Invalid query parameter: {error, field}"}
    """
    query = request.query_params
    status = query.get("status")
    if status is not None and status not in STATUSES:
        return problem(422, f"status must be one of {', '.join(STATUSES)}", "status")
    source = query.get("source")
    if source is not None and len(source) > 32:
        return problem(422, "source is at most 32 characters", "source")
    limit = query_limit(request, default=100, most=500, wording="a whole number")
    try:
        page, following = await read_events(
            runtime(request).db, source=source or None, status=status, start=parse_time(query.get("from"), "from"),
            end=parse_time(query.get("to"), "to"), cursor=query.get("cursor") or None, limit=limit,
        )
    except BadQuery as exc:
        return problem(422, exc.reason, exc.field)
    return JSONResponse({"events": page, "next_cursor": following})


routes = [
    Route("/v1/events", list_events, methods=["GET"]),
    Route("/v1/events/{event_id}", get_event, methods=["GET"]),
]
