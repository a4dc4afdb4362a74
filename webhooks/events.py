"""Inbound CRM events as stored: `GET /v1/events`, `GET /v1/events/{id}` (what became of each
one, and why: the triggers it made, or the error it failed with after its retries)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.clock import iso
from core.db import inbound_events
from webhooks.common import api_key_required, problem, runtime

STATUSES = ("pending", "processing", "done", "failed")


def event_view(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "source": row["source"],
        "event_key": row["event_key"],
        "status": row["status"],
        "result": row["result"],
        "attempts": row["attempts"],
        "received_at": iso(row["received_at"]),
        "processed_at": iso(row["processed_at"]),
        "due_at": iso(row["due_at"]) if row["status"] == "pending" else None,
        "event": row["event"],
    }


@api_key_required
async def get_event(request: Request) -> Response:
    """
    summary: One inbound CRM event, its status and result (or the error it failed with)
    parameters:
      - {in: path, name: event_id, required: true, schema: {type: integer}}
    responses:
      200: {description: "{id, source, event_key, status, result, attempts, received_at, processed_at, due_at, event}"}
      404: {description: No such event}
    """
    raw = request.path_params["event_id"]
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18 and int(raw) < 2**31):  # the id is a 32-bit integer
        return problem(404, "no such event")
    async with runtime(request).db.connect() as connection:
        row = (await connection.execute(select(inbound_events).where(inbound_events.c.id == int(raw)))).mappings().first()
    if row is None:
        return problem(404, "no such event")
    return JSONResponse(event_view(row))


@api_key_required
async def list_events(request: Request) -> Response:
    """
    summary: Inbound CRM events, newest first
    parameters:
      - {in: query, name: status, required: false, schema: {type: string, enum: [pending, processing, done, failed]}}
      - {in: query, name: source, required: false, schema: {type: string, maxLength: 32}}
      - {in: query, name: limit, required: false, schema: {type: integer, minimum: 1, maximum: 500}}
    responses:
      200: {description: "{events: [...]}"}
      422: {description: "Invalid query parameter: {error, field}"}
    """
    query = request.query_params
    statement = select(inbound_events).order_by(inbound_events.c.id.desc())
    status = query.get("status")
    if status is not None:
        if status not in STATUSES:
            return problem(422, f"status must be one of {', '.join(STATUSES)}", "status")
        statement = statement.where(inbound_events.c.status == status)
    source = query.get("source")
    if source is not None:
        if len(source) > 32:
            return problem(422, "source is at most 32 characters", "source")
        statement = statement.where(inbound_events.c.source == source)
    limit_text = query.get("limit", "100")
    if not (limit_text.isascii() and limit_text.isdigit() and 1 <= int(limit_text) <= 500):
        return problem(422, "limit must be a whole number from 1 to 500", "limit")
    async with runtime(request).db.connect() as connection:
        rows = (await connection.execute(statement.limit(int(limit_text)))).mappings().all()
    return JSONResponse({"events": [event_view(row) for row in rows]})


routes = [
    Route("/v1/events", list_events, methods=["GET"]),
    Route("/v1/events/{event_id}", get_event, methods=["GET"]),
]
