"""Admin API: the suppression list and the CRM activity outbox."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.clock import iso
from core.directory import email_problem
from core.npi import npi_problem
from core.outbox import list_outbox, outbox_counts, paused_until, retry_dead
from core.suppression import add_suppression, list_suppressions, remove_suppressions
from webhooks.common import HTTPProblem, api_key_required, query_limit, read_optional_json, runtime


def _json(row: dict[str, Any]) -> dict[str, Any]:
    return {key: iso(value) if isinstance(value, datetime) else value for key, value in row.items()}


def _target(body: Any) -> tuple[str | None, str | None]:
    """The NPI or the address a suppression request is about (exactly one of them)."""
    if not isinstance(body, dict):
        raise HTTPProblem(422, "body must be a JSON object", "body")
    npi, address = body.get("npi"), body.get("email")
    # A field that is present is checked, even when empty: "" is not "absent".
    if npi is not None and (not isinstance(npi, str) or npi_problem(npi)):
        raise HTTPProblem(422, npi_problem(npi) or "npi must be a string", "npi")
    if address is not None and (not isinstance(address, str) or email_problem(address)):
        raise HTTPProblem(422, f"invalid email address {str(address)[:100]!r}", "email")
    if not npi and not address:
        raise HTTPProblem(422, "give npi or email", "npi")
    if npi and address:
        raise HTTPProblem(422, "give npi or email, not both: one suppression blocks an HCP or one address", "email")
    if npi and (not isinstance(npi, str) or npi_problem(npi)):
        raise HTTPProblem(422, npi_problem(str(npi)) or "npi must be a string", "npi")
    if address and (not isinstance(address, str) or email_problem(address)):
        raise HTTPProblem(422, f"invalid email address {address!r}", "email")
    return npi, address.lower() if address else None


def _suppression_json(row: dict[str, Any]) -> dict[str, Any]:
    return _json({
        "id": row["id"], "npi": row["npi"], "email": row["address"], "campaign_id": row["campaign_id"],
        "reason": row["reason"], "detail": row["detail"], "created_at": row["created_at"],
    })


def _short_text(body: dict[str, Any], name: str, limit: int) -> str | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or len(value) > limit):
        raise HTTPProblem(422, f"{name} must be a string of at most {limit} characters", name)
    return value or None


@api_key_required
async def suppressions(request: Request) -> Response:
    """
    summary: "The suppression list: GET lists (?npi= / ?email= filter), POST adds {npi or email, reason, campaign_id?, detail?}, DELETE removes by npi or email (body or query)"
    responses:
      200: {description: "{suppressions: [{id, npi, email, campaign_id, reason, detail, created_at}]} or {removed}"}
      201: {description: "{id, npi, email, campaign_id, reason}"}
      422: {description: Invalid field}
    """
    rt = runtime(request)
    if request.method == "GET":
        query = request.query_params
        if query.get("npi") is not None and npi_problem(query["npi"]):
            raise HTTPProblem(422, npi_problem(query["npi"]) or "", "npi")
        if query.get("email") is not None and email_problem(query["email"]):
            raise HTTPProblem(422, f"invalid email address {query['email'][:100]!r}", "email")
        async with rt.db.connect() as connection:
            rows = await list_suppressions(connection, npi=query.get("npi"), address=query.get("email"))
        return JSONResponse({"suppressions": [_suppression_json(row) for row in rows]})
    body = await read_optional_json(request)
    if body is None:
        if request.method == "POST":
            raise HTTPProblem(422, "body must be a JSON object", "body")
        body = dict(request.query_params)  # DELETE /v1/suppressions?email=…
    npi, address = _target(body)
    if request.method == "DELETE":
        async with rt.db.begin() as connection:
            removed = await remove_suppressions(connection, npi=npi, address=address)
        return JSONResponse({"removed": removed})
    reason = _short_text(body, "reason", 32) or "manual"
    campaign_id = _short_text(body, "campaign_id", 128)
    if campaign_id and rt.config.campaign(campaign_id) is None:
        raise HTTPProblem(422, f"unknown campaign {campaign_id!r}", "campaign_id")
    detail = _short_text(body, "detail", 1000)
    async with rt.db.begin() as connection:
        suppression_id = await add_suppression(
            connection, reason=reason, now=rt.clock.now(), npi=npi, address=address, campaign_id=campaign_id, detail=detail,
        )
    return JSONResponse(
        {"id": suppression_id, "npi": npi, "email": address, "campaign_id": campaign_id, "reason": reason}, status_code=201
    )


@api_key_required
async def outbox(request: Request) -> Response:
    """
    summary: CRM activity outbox rows, newest first (?status=pending|pushed|dead, ?limit=1..1000, default 100)
    responses:
      200: {description: "{counts, items, paused}: paused maps a CRM that asked to wait (429 / Retry-After) to the time pushes resume"}
    """
    rt = runtime(request)
    status = request.query_params.get("status")
    if status not in (None, "pending", "pushed", "dead"):
        raise HTTPProblem(422, "status must be pending, pushed or dead", "status")
    limit = query_limit(request, default=100, most=1000)
    rows = await list_outbox(rt, status=status, limit=limit)
    paused = {crm: iso(until) for crm, until in (await paused_until(rt)).items()}
    return JSONResponse({"counts": await outbox_counts(rt), "items": [_json(row) for row in rows], "paused": paused})


@api_key_required
async def outbox_retry(request: Request) -> Response:
    """
    summary: "Put dead-lettered outbox rows back in the queue (body {ids: [...]}; no body = every dead row)"
    responses:
      200: {description: "{retried}"}
    """
    rt = runtime(request)
    body = await read_optional_json(request)
    if body is not None and not isinstance(body, dict):
        raise HTTPProblem(422, "body must be a JSON object {ids: [...]} or empty", "body")
    ids = body.get("ids") if body else None
    if body and "ids" in body and not (
        isinstance(ids, list) and len(ids) <= 1000
        and all(type(i) is int and 0 < i < 2**31 for i in ids)
    ):
        raise HTTPProblem(422, "ids must be a list of at most 1000 positive integers", "ids")
    return JSONResponse({"retried": await retry_dead(rt, ids)})


routes = [
    Route("/v1/suppressions", suppressions, methods=["GET", "POST", "DELETE"]),
    Route("/v1/outbox", outbox, methods=["GET"]),
    Route("/v1/outbox/retry", outbox_retry, methods=["POST"]),
]
