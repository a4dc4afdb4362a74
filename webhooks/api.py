"""The trigger API: `/v1/triggers` and `/v1/campaigns`."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.clock import iso
from core.campaigns import describe, is_paused, paused_ids, set_paused
from core.npi import npi_problem
from core.triggers import IdempotencyMismatch, accept_trigger, storage_problem, trigger_view
from webhooks.common import HTTPProblem, api_key_required, problem, read_json, runtime


def validate_trigger(body: Any, config: Any) -> tuple[str, str, dict[str, Any]]:
    """The checks that make a trigger worth storing; each failure names its field."""
    if not isinstance(body, dict):
        raise HTTPProblem(422, "body must be a JSON object", "body")
    npi = body.get("npi")
    if npi is None:
        raise HTTPProblem(422, "npi is required", "npi")
    issue = npi_problem(npi)
    if issue:
        raise HTTPProblem(422, issue, "npi")
    campaign_id = body.get("campaign_id")
    if not isinstance(campaign_id, str) or not campaign_id:
        raise HTTPProblem(422, "campaign_id is required (a string)", "campaign_id")
    if len(campaign_id) > 128:
        raise HTTPProblem(422, "campaign_id must be at most 128 characters", "campaign_id")
    if config.campaign(campaign_id) is None:
        raise HTTPProblem(422, f"unknown campaign_id {campaign_id!r}", "campaign_id")
    data = body.get("data", {})
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise HTTPProblem(422, "data must be a JSON object", "data")
    for key, value in data.items():
        problem = storage_problem(key) or storage_problem(value)
        if problem:
            raise HTTPProblem(422, f"data.{key[:60]}: {problem}", f"data.{key[:60]}")
    unknown = set(body) - {"npi", "campaign_id", "data"}
    if unknown:
        raise HTTPProblem(422, f"unknown field(s): {', '.join(sorted(unknown))}", sorted(unknown)[0])
    return npi, campaign_id, data


@api_key_required(scope="triggers:write")
async def create_trigger(request: Request) -> Response:
    """
    summary: Trigger a campaign email to one HCP
    description: Stored before the answer; decided and sent by a worker. Same Idempotency-Key, same trigger.
    parameters:
      - {in: header, name: Idempotency-Key, required: false, schema: {type: string, maxLength: 200}}
    requestBody:
      content:
        application/json:
          schema:
            type: object
            required: [npi, campaign_id]
            properties:
              npi: {type: string, pattern: "^[0-9]{10}$"}
              campaign_id: {type: string}
              data: {type: object}
    responses:
      202: {description: "Accepted: {id, status}"}
      401: {description: Missing or wrong API key}
      403: {description: "The API key lacks the triggers:write scope"}
      413: {description: Body over 64 KiB}
      422: {description: "Invalid field, or an Idempotency-Key reused with another body: {error, field}"}
    """
    rt = runtime(request)
    body = await read_json(request)
    npi, campaign_id, data = validate_trigger(body, rt.config)
    key = request.headers.get("idempotency-key")
    if key is not None and not (0 < len(key) <= 200 and key.isprintable()):
        raise HTTPProblem(422, "Idempotency-Key must be 1 to 200 printable characters", "Idempotency-Key")
    scoped = f"api:{request.state.api_key['id']}:{key}" if key else None
    try:
        accepted = await accept_trigger(
            rt, npi=npi, campaign_id=campaign_id, data=data, source="api", idempotency_key=scoped, check_request=True
        )
    except IdempotencyMismatch:
        raise HTTPProblem(
            422, "Idempotency-Key was already used with a different request body; use a new key for a new request",
            "Idempotency-Key",
        ) from None
    return JSONResponse({"id": accepted.id, "status": accepted.status}, status_code=202)


@api_key_required
async def get_trigger(request: Request) -> Response:
    """
    summary: A trigger's outcome, reason and messages
    responses:
      200: {description: "{id, npi, campaign_id, status, reason, created_at, decided_at, messages}"}
      404: {description: No such trigger}
    """
    trigger_id = request.path_params["trigger_id"]
    view = await trigger_view(runtime(request), trigger_id) if len(trigger_id) <= 40 else None
    if view is None:
        return problem(404, "no such trigger")
    return JSONResponse(view)


@api_key_required
async def list_campaigns(request: Request) -> Response:
    """
    summary: "Campaigns from the config with their live / paused state, version and when it took effect"
    responses:
      200: {description: "{campaigns: [...]}"}
    """
    from core.live_config import versions

    rt = runtime(request)
    config = rt.config
    async with rt.db.connect() as connection:
        paused = await paused_ids(connection, config)
    history = await versions(rt)
    listed = []
    for campaign in config.campaigns:
        view = describe(campaign, campaign.id in paused)
        mine = history.get(campaign.id, [])
        current = next((item for item in mine if item["version"] == campaign.version), None)
        view["version"] = campaign.version
        view["version_since"] = iso(current["took_effect_at"]) if current else None
        view["versions"] = [{"version": item["version"], "took_effect_at": iso(item["took_effect_at"])} for item in mine[:20]]
        listed.append(view)
    return JSONResponse({"campaigns": listed})


async def _set_state(request: Request, paused: bool) -> Response:
    rt = runtime(request)
    campaign = rt.config.campaign(request.path_params["campaign_id"])
    if campaign is None:
        return problem(404, f"no campaign {request.path_params['campaign_id']!r}")
    async with rt.db.begin() as connection:
        await set_paused(connection, campaign.id, paused, rt.clock.now())
        now_paused = await is_paused(connection, campaign)
    return JSONResponse(describe(campaign, now_paused))


@api_key_required
async def pause_campaign(request: Request) -> Response:
    """
    summary: "Pause a campaign: its triggers end as campaign_paused; its resends and retries wait until resume"
    responses:
      200: {description: The campaign}
      404: {description: No such campaign}
    """
    return await _set_state(request, True)


@api_key_required
async def resume_campaign(request: Request) -> Response:
    """
    summary: Resume a paused campaign
    responses:
      200: {description: The campaign}
      404: {description: No such campaign}
    """
    return await _set_state(request, False)


routes = [
    # POST /v1/triggers is routed with GET (the log) by webhooks.console_api.TriggerCollection.
    Route("/v1/triggers/{trigger_id}", get_trigger, methods=["GET"]),
    Route("/v1/campaigns", list_campaigns, methods=["GET"]),
    # GET /v1/campaigns/{campaign_id}/stats (from, to, interval) is served by webhooks.console_api.
    Route("/v1/campaigns/{campaign_id}/pause", pause_campaign, methods=["POST"]),
    Route("/v1/campaigns/{campaign_id}/resume", resume_campaign, methods=["POST"]),
]
