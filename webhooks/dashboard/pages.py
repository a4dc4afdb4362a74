"""The dashboard's pages: server-rendered Jinja2, every asset served by the app."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from config import format_duration
from core.campaigns import is_paused, paused_ids, set_paused
from core.console import (
    CHECK_NAMES, OUTCOMES, BadQuery, TriggerFilter, campaign_figures, get_event, list_events, list_triggers, outbox_page,
    outbox_summary, parse_time, rule_in_words, trigger_detail, where_in_words,
)
from core.outbox import retry_dead
from core.users import authenticate
from webhooks.common import runtime
from webhooks.dashboard import auth
from webhooks.dashboard.charts import line_chart

log = logging.getLogger("trigger_email.console")
STATIC = Path(__file__).with_name("static")
PAGE_SIZE = 25

env = Environment(loader=PackageLoader("webhooks.dashboard", "templates"), autoescape=select_autoescape(default=True))
env.globals["check_names"] = CHECK_NAMES


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


env.filters["pct"] = _pct
env.filters["when"] = lambda value: (value[:10] + " " + value[11:19] if value else "—")


def render(request: Request, template: str, context: dict[str, Any], *, status: int = 200) -> HTMLResponse:
    session = getattr(request.state, "session", None)
    rt = runtime(request)
    html = env.get_template(template).render(
        request=request, session=session, csrf=session["csrf"] if session else "", dev=rt.settings.dev,
        capture=rt.extras.get("capture") is not None, path=request.url.path, **context,
    )
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})


def _until(text: str | None) -> Any:
    """The dashboard's "To" is a day the person wants included: a bare date means up to the
    end of that day (the API's `to` is exclusive)."""
    from datetime import timedelta

    end = parse_time(text, "to")
    return end + timedelta(days=1) if end is not None and text and len(text.strip()) == 10 else end


def _not_found(request: Request, message: str) -> HTMLResponse:
    return render(request, "error.html", {"title": "Not found", "message": message}, status=404)


def _paging(request: Request, following: str | None) -> dict[str, str | None]:
    """The links under a cursor-paged list: the next page, and back to the first one."""
    return {
        "next_url": _query(request, cursor=following) if following else None,
        "first_url": _query(request, cursor=None) if request.query_params.get("cursor") else None,
    }


async def _listing(
    fetch: Callable[[], Awaitable[tuple[list[dict[str, Any]], str | None]]],
) -> tuple[list[dict[str, Any]], str | None, str | None]:
    """One page of a filtered list: (rows, next cursor, None), or an empty page with the
    filter's error ("field: reason") when the query is bad."""
    try:
        page, following = await fetch()
    except BadQuery as exc:
        return [], None, f"{exc.field}: {exc.reason}"
    return page, following, None


def _query(request: Request, **changes: Any) -> str:
    values = {key: value for key, value in request.query_params.items() if value}
    values.update({key: value for key, value in changes.items()})
    return "?" + urlencode({key: value for key, value in values.items() if value not in (None, "")})


# -- login ---------------------------------------------------------------------------------


def _next(request: Request, value: str | None) -> str:
    return value if value and value.startswith("/dashboard") and not value.startswith("//") else "/dashboard/campaigns"


async def login(request: Request) -> Response:
    if request.method == "GET":
        if await auth.current_session(request):
            return RedirectResponse(_next(request, request.query_params.get("next")), status_code=303)
        return _login_form(request, request.query_params.get("next", ""), "", None, 200)
    form = await request.form()
    email = str(form.get("email") or "").strip()
    password = str(form.get("password") or "")
    target = str(form.get("next") or "")
    if not auth.csrf_matches(request.cookies.get(auth.LOGIN_COOKIE), form.get("csrf")):
        return _login_form(request, target, email, "The form expired or has no CSRF token; try again.", 403)
    wait = await auth.locked_for(request, email)
    if wait:
        return _login_form(request, target, email, f"Too many failed logins. Try again in {max(1, (wait + 59) // 60)} minute(s).", 429)
    user = await authenticate(runtime(request).db, email, password, runtime(request).clock.now())
    if user is None:
        await auth.count_failure(request, email)
        log.warning("dashboard login refused for %r", email)
        return _login_form(request, target, email, "Wrong email or password.", 401)
    await auth.clear_failures(request, email)
    response = RedirectResponse(_next(request, target), status_code=303)
    auth.start_session(request, response, user)
    return response


def _login_form(request: Request, target: str, email: str, error: str | None, status: int) -> Response:
    token = auth.login_csrf(request)
    response = render(request, "login.html", {"next": target, "email": email, "error": error, "login_csrf": token, "title": "Log in"},
                      status=status)
    auth.set_cookie(request, response, auth.LOGIN_COOKIE, token, 3600)
    return response


@auth.login_required
async def logout(request: Request) -> Response:
    response = RedirectResponse("/dashboard/login", status_code=303)
    auth.end_session(response)
    return response


# -- campaigns -----------------------------------------------------------------------------


def rules_in_words(campaign: Any, config: Any) -> list[str]:
    words = [f"{campaign.kind.capitalize()} email, subject “{campaign.subject}”."]
    if campaign.resend:
        words.append(
            f"Resend up to {campaign.resend.max} time(s), {format_duration(campaign.resend.after)} after the previous email, "
            f"unless the HCP {'opened' if config.tracking.engagement == 'open' else 'clicked'} it."
        )
    else:
        words.append("No resend.")
    words.append(f"Cooldown {format_duration(campaign.cooldown)}: no second email of this campaign to an HCP within it "
                 "(counted from the last email or open, whichever is later).")
    audience = campaign.audience.model_dump(exclude_none=True)
    if audience:
        words.append("Audience: " + "; ".join(
            f"{key}: {', '.join(map(str, value)) if isinstance(value, list) else value}" for key, value in audience.items()
        ) + ".")
    else:
        words.append("Audience: every HCP in the directory.")
    cap = config.limits.per_hcp
    if cap and campaign.kind == "marketing":
        words.append(f"Frequency cap: at most {cap.max} marketing emails per HCP per {format_duration(cap.per)}, all campaigns together.")
    else:
        words.append("Not counted against the frequency cap." if cap else "No frequency cap configured.")
    fired_by = [f"from {rule.from_} on {rule.on}" + (f" where {where_in_words(rule.where)}" if rule.where else "")
                for rule in config.triggers if rule.send == campaign.id]
    if fired_by:
        words.append("Triggered " + "; ".join(fired_by) + ", and by POST /v1/triggers.")
    return words


@auth.login_required
async def campaigns(request: Request) -> Response:
    rt = runtime(request)
    async with rt.db.connect() as connection:
        paused = await paused_ids(connection, rt.config)
    now = rt.clock.now()
    rows = []
    for campaign in rt.config.campaigns:
        figures = await campaign_figures(rt.db, campaign.id, start=None, end=None, interval="day", now=now)
        rows.append({"campaign": campaign, "paused": campaign.id in paused, "figures": figures})
    return render(request, "campaigns.html", {"rows": rows, "title": "Campaigns"})


@auth.login_required
async def campaign_page(request: Request) -> Response:
    rt = runtime(request)
    campaign = rt.config.campaign(request.path_params["campaign_id"])
    if campaign is None:
        return _not_found(request, "No such campaign.")
    interval = request.query_params.get("interval") or "day"
    error = None
    try:
        start = parse_time(request.query_params.get("from"), "from")
        end = _until(request.query_params.get("to"))
        figures = await campaign_figures(rt.db, campaign.id, start=start, end=end, interval=interval, now=rt.clock.now())
    except BadQuery as exc:
        error = exc.reason
        interval = "day"
        figures = await campaign_figures(rt.db, campaign.id, start=None, end=None, interval="day", now=rt.clock.now())
    async with rt.db.connect() as connection:
        paused = await is_paused(connection, campaign)
    return render(request, "campaign.html", {
        "title": campaign.name or campaign.id, "campaign": campaign, "paused": paused, "figures": figures, "error": error,
        "chart": line_chart(figures["series"]["points"], interval), "interval": interval,
        "rules": rules_in_words(campaign, rt.config), "from_value": request.query_params.get("from", ""),
        "to_value": request.query_params.get("to", ""),
    })


@auth.login_required
async def campaign_state(request: Request) -> Response:
    rt = runtime(request)
    campaign = rt.config.campaign(request.path_params["campaign_id"])
    if campaign is None:
        return _not_found(request, "No such campaign.")
    if request.path_params["action"] not in ("pause", "resume"):
        return _not_found(request, "No such action.")
    paused = request.path_params["action"] == "pause"
    async with rt.db.begin() as connection:
        await set_paused(connection, campaign.id, paused, rt.clock.now())
    log.info(
        "campaign %s %s from the dashboard by %s", campaign.id, "paused" if paused else "resumed", request.state.session["user"]["email"]
    )
    return RedirectResponse(f"/dashboard/campaigns/{campaign.id}", status_code=303)


# -- triggers ------------------------------------------------------------------------------


@auth.login_required
async def triggers_page(request: Request) -> Response:
    rt = runtime(request)
    query = request.query_params

    async def fetch() -> tuple[list[dict[str, Any]], str | None]:
        status = query.get("status") or None
        if status and status not in OUTCOMES:
            raise BadQuery("status", "unknown outcome")
        where = TriggerFilter(
            npi=(query.get("npi") or "").strip() or None, campaign_id=query.get("campaign_id") or None, status=status,
            source=query.get("source") or None, start=parse_time(query.get("from"), "from"), end=_until(query.get("to")),
        )
        return await list_triggers(rt.db, where, cursor=query.get("cursor") or None, limit=PAGE_SIZE)

    page, following, error = await _listing(fetch)
    return render(request, "triggers.html", {
        "title": "Triggers", "page": page, "error": error, "q": query, "outcomes": OUTCOMES,
        "campaigns": [c.id for c in rt.config.campaigns], "sources": ["api", "cli", "hubspot", "salesforce", "webhook", "email"],
        **_paging(request, following),
    })


@auth.login_required
async def trigger_page(request: Request) -> Response:
    rt = runtime(request)
    detail = await trigger_detail(rt.db, rt.config, request.path_params["trigger_id"])
    if detail is None:
        return _not_found(request, "No such trigger.")
    return render(request, "trigger.html", {"title": f"Trigger {detail['id']}", "t": detail})


# -- inbound events --------------------------------------------------------------------------


@auth.login_required
async def events_page(request: Request) -> Response:
    rt = runtime(request)
    query = request.query_params

    async def fetch() -> tuple[list[dict[str, Any]], str | None]:
        return await list_events(
            rt.db, source=query.get("source") or None, status=query.get("status") or None,
            start=parse_time(query.get("from"), "from"), end=_until(query.get("to")),
            cursor=query.get("cursor") or None, limit=PAGE_SIZE,
        )

    page, following, error = await _listing(fetch)
    crms = [name for name in ("hubspot", "salesforce", "webhook") if getattr(rt.config.crm, name, None) is not None]
    return render(request, "events.html", {
        "title": "Inbound events", "page": page, "rule_text": lambda index: rule_in_words(rt.config, index), "error": error, "q": query, "crms": crms,
        **_paging(request, following),
    })


@auth.login_required
async def event_page(request: Request) -> Response:
    text = request.path_params["event_id"]
    event = await get_event(runtime(request).db, int(text)) if text.isdigit() else None
    if event is None:
        return _not_found(request, "No such event.")
    return render(request, "event.html", {"title": f"Event #{event['id']}", "e": event,
                                          "rule_text": lambda index: rule_in_words(runtime(request).config, index),
                                          "payload": json.dumps(event["event"], indent=2, default=str)})


# -- CRM outbox ------------------------------------------------------------------------------


@auth.login_required
async def outbox_view_page(request: Request) -> Response:
    rt = runtime(request)
    query = request.query_params
    status = query.get("status") or None

    async def fetch() -> tuple[list[dict[str, Any]], str | None]:
        if status and status not in ("pending", "pushed", "dead"):
            raise BadQuery("status", "must be pending, pushed or dead")
        return await outbox_page(rt.db, crm=query.get("crm") or None, status=status,
                                 cursor=query.get("cursor") or None, limit=PAGE_SIZE)

    page, following, error = await _listing(fetch)
    return render(request, "outbox.html", {
        "title": "CRM outbox", "summary": await outbox_summary(rt.db, rt.clock.now()), "page": page, "error": error, "q": query,
        "retried": query.get("retried"),
        **_paging(request, following),
    })


@auth.login_required
async def outbox_retry(request: Request) -> Response:
    form = request.state.form
    raw = [value for value in form.getlist("id") if str(value).isdigit()]
    ids = [int(value) for value in raw] if raw else None
    crm = str(form.get("crm") or "")
    if ids is None and crm:
        from sqlalchemy import select

        from core.db import outbox

        async with runtime(request).db.connect() as connection:
            ids = list((await connection.execute(select(outbox.c.id).where(outbox.c.crm == crm, outbox.c.status == "dead"))).scalars())
    retried = await retry_dead(runtime(request), ids)
    return RedirectResponse(f"/dashboard/outbox?retried={retried}", status_code=303)


# -- captured mail ------------------------------------------------------------------------------


def _captured(request: Request) -> list[dict[str, Any]] | None:
    capture = runtime(request).extras.get("capture")
    return None if capture is None else capture.messages()


@auth.login_required
async def mail_page(request: Request) -> Response:
    messages = await asyncio.to_thread(_captured, request)
    if messages is None:
        return render(request, "error.html", {"title": "No captured mail",
                                              "message": "Mail is captured only under trigger-email dev without SMTP_URL."}, status=404)
    messages.reverse()
    page_number = request.query_params.get("page", "1")
    number = int(page_number) if page_number.isdigit() and int(page_number) > 0 else 1
    shown = messages[(number - 1) * PAGE_SIZE: number * PAGE_SIZE]
    return render(request, "mail.html", {
        "title": "Captured mail", "messages": shown, "total": len(messages), "number": number,
        "has_next": number * PAGE_SIZE < len(messages),
    })


@auth.login_required
async def mail_message(request: Request) -> Response:
    messages = await asyncio.to_thread(_captured, request)
    found = next((m for m in messages or [] if m.get("id") == request.path_params["mail_id"]), None)
    if found is None:
        return _not_found(request, "No such captured email.")
    return render(request, "mail_message.html", {"title": found["subject"], "m": found})


async def home(request: Request) -> Response:
    return RedirectResponse("/dashboard/campaigns", status_code=303)


routes = [
    Route("/dashboard", home, methods=["GET"], include_in_schema=False),
    Route("/dashboard/", home, methods=["GET"], include_in_schema=False),
    Route("/dashboard/login", login, methods=["GET", "POST"], include_in_schema=False),
    Route("/dashboard/logout", logout, methods=["POST"], include_in_schema=False),
    Route("/dashboard/campaigns", campaigns, methods=["GET"], include_in_schema=False),
    Route("/dashboard/campaigns/{campaign_id}", campaign_page, methods=["GET"], include_in_schema=False),
    Route("/dashboard/campaigns/{campaign_id}/{action:str}", campaign_state, methods=["POST"], include_in_schema=False),
    Route("/dashboard/triggers", triggers_page, methods=["GET"], include_in_schema=False),
    Route("/dashboard/triggers/{trigger_id}", trigger_page, methods=["GET"], include_in_schema=False),
    Route("/dashboard/events", events_page, methods=["GET"], include_in_schema=False),
    Route("/dashboard/events/{event_id}", event_page, methods=["GET"], include_in_schema=False),
    Route("/dashboard/outbox", outbox_view_page, methods=["GET"], include_in_schema=False),
    Route("/dashboard/outbox/retry", outbox_retry, methods=["POST"], include_in_schema=False),
    Route("/dashboard/mail", mail_page, methods=["GET"], include_in_schema=False),
    Route("/dashboard/mail/{mail_id}", mail_message, methods=["GET"], include_in_schema=False),
    Mount("/dashboard/static", app=StaticFiles(directory=STATIC), name="dashboard-static"),
]
