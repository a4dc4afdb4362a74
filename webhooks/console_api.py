"""The API behind the admin console: the trigger log with decision trails, inbound CRM events,
and campaign figures over time. Bearer API key, JSON, cursor pagination newest first."""

from __future__ import annotations

from typing import Any, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.endpoints import HTTPEndpoint
from starlette.routing import Route

from core.console import (
    OUTCOMES, BadQuery, TriggerFilter, campaign_figures, list_triggers, parse_time, trigger_detail,
)
from core.variants import ab_view
from webhooks.common import HTTPProblem, api_key_required, problem, runtime

MAX_LIMIT = 200


def _limit(request: Request, default: int = 50) -> int:
    text = request.query_params.get("limit", str(default))
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise HTTPProblem(422, f"limit must be a number from 1 to {MAX_LIMIT}", "limit")
    return int(text)


def _bad_query(call: Callable[..., Any]) -> Callable[..., Any]:
    async def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return await call(*args, **kwargs)
        except BadQuery as exc:
            raise HTTPProblem(422, exc.reason, exc.field) from None

    return run


def trigger_filter(request: Request) -> TriggerFilter:
    query = request.query_params
    status = query.get("status") or None
    if status and status not in OUTCOMES:
        raise HTTPProblem(422, f"status must be one of {', '.join(OUTCOMES)}", "status")
    try:
        return TriggerFilter(
            npi=(query.get("npi") or "").strip() or None, campaign_id=query.get("campaign_id") or None, status=status,
            source=query.get("source") or None, start=parse_time(query.get("from"), "from"), end=parse_time(query.get("to"), "to"),
        )
    except BadQuery as exc:
        raise HTTPProblem(422, exc.reason, exc.field) from None


@api_key_required
async def triggers_log(request: Request) -> Response:
    """
    summary: "The trigger log, newest first: filter by npi, campaign_id, status, source, from, to (ISO 8601); cursor pagination"
    parameters:
      - {in: query, name: npi, schema: {type: string}}
      - {in: query, name: campaign_id, schema: {type: string}}
      - {in: query, name: status, schema: {type: string}}
      - {in: query, name: source, schema: {type: string}}
      - {in: query, name: from, schema: {type: string, description: "ISO 8601 date or date-time, UTC when no zone"}}
      - {in: query, name: to, schema: {type: string, description: "ISO 8601 date or date-time, UTC when no zone"}}
      - {in: query, name: cursor, schema: {type: string}}
      - {in: query, name: limit, schema: {type: integer, minimum: 1, maximum: 200, default: 50}}
    responses:
      200: {description: "{triggers: [{id, npi, campaign_id, status, reason, source, created_at, decided_at, trail}], next_cursor}"}
      401: {description: Missing or wrong API key}
      422: {description: "Invalid filter: {error, field}"}
    """
    where = trigger_filter(request)
    page, following = await _bad_query(list_triggers)(
        runtime(request).db, where, cursor=request.query_params.get("cursor") or None, limit=_limit(request)
    )
    return JSONResponse({"triggers": page, "next_cursor": following})


@api_key_required
async def trigger_trail(request: Request) -> Response:
    """
    summary: "A trigger's whole decision trail: source event, every check, messages with SMTP answers and engagement, resends, CRM activities"
    responses:
      200: {description: "{id, status, reason, trail, source_event, messages, resends, activities}"}
      404: {description: No such trigger}
    """
    rt = runtime(request)
    view = await trigger_detail(rt.db, rt.config, request.path_params["trigger_id"])
    if view is None:
        return problem(404, "no such trigger")
    return JSONResponse(view)


@api_key_required
async def campaign_stats(request: Request) -> Response:
    """
    summary: "A campaign's figures: totals (in [from, to) when given) and a series per hour or day, computed in SQL"
    parameters:
      - {in: query, name: from, schema: {type: string, description: "ISO 8601 date or date-time, UTC when no zone"}}
      - {in: query, name: to, schema: {type: string, description: "ISO 8601 date or date-time, UTC when no zone"}}
      - {in: query, name: interval, schema: {type: string, enum: [hour, day], default: day}}
    responses:
      200: {description: "{triggers, outcomes, sent, delivered, hard_bounced, soft_bounced, opened, machine_opened, clicked, unsubscribed, complaints, rates, series}; with A/B subjects also variants and ab (the decision)"}
      404: {description: No such campaign}
      422: {description: "Invalid from, to or interval"}
    """
    rt = runtime(request)
    campaign_id = request.path_params["campaign_id"]
    if rt.config.campaign(campaign_id) is None:
        return problem(404, f"no campaign {campaign_id!r}")
    figures = await _bad_query(_figures)(request, campaign_id)
    figures.update(await ab_view(rt, rt.config.campaign(campaign_id)))  # A/B subjects: per variant, the decision
    return JSONResponse(figures)


async def _figures(request: Request, campaign_id: str) -> Any:
    query = request.query_params
    rt = runtime(request)
    return await campaign_figures(
        rt.db, campaign_id, start=parse_time(query.get("from"), "from"), end=parse_time(query.get("to"), "to"),
        interval=query.get("interval") or "day", now=rt.clock.now(),
    )


class TriggerCollection(HTTPEndpoint):
    """`/v1/triggers`: POST creates a trigger (webhooks.api), GET reads the log; one route, so
    a 405 names both methods."""

    async def get(self, request: Request) -> Response:
        return await triggers_log(request)

    async def post(self, request: Request) -> Response:
        from webhooks.api import create_trigger

        return await create_trigger(request)

    get.__doc__ = triggers_log.__doc__


def _describe_post() -> None:
    from webhooks.api import create_trigger

    TriggerCollection.post.__doc__ = create_trigger.__doc__


_describe_post()

routes = [
    Route("/v1/triggers", TriggerCollection),
    Route("/v1/triggers/{trigger_id}/trail", trigger_trail, methods=["GET"]),
    # GET /v1/events and /v1/events/{id} are served by webhooks.events, from core.console.
    Route("/v1/campaigns/{campaign_id}/stats", campaign_stats, methods=["GET"]),
]
