"""Dashboard sessions: a signed cookie (itsdangerous) holding the user id and a CSRF token;
HttpOnly, SameSite=Lax, Secure when the public URL is https. Wrong passwords are counted in
Redis per address and per client, so every `serve` replica enforces the same limit."""

from __future__ import annotations

import hmac
import secrets
from functools import wraps
from typing import Any, Awaitable, Callable
from urllib.parse import quote

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from core.users import get_user
from webhooks.common import runtime

COOKIE = "te_session"
LOGIN_COOKIE = "te_login"
PATH = "/dashboard"
SESSION_AGE = 12 * 3600
MAX_FAILURES = 5
"""Wrong passwords for one address before it is locked for the rest of the window."""
MAX_CLIENT_FAILURES = 20
"""Wrong passwords from one client, whatever the address."""
FAILURE_WINDOW = 15 * 60


def _serializer(request: Request, salt: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(runtime(request).settings.secret_key or "dev-only", salt=salt)


def secure(request: Request) -> bool:
    return runtime(request).config.public_url.startswith("https://")


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, path=PATH, httponly=True, samesite="lax", secure=secure(request))


def start_session(request: Request, response: Response, user: dict[str, Any]) -> None:
    token = _serializer(request, "trigger-email.dashboard").dumps({"u": user["id"], "c": secrets.token_urlsafe(24)})
    set_cookie(request, response, COOKIE, token, SESSION_AGE)
    response.delete_cookie(LOGIN_COOKIE, path=PATH)


def end_session(response: Response) -> None:
    response.delete_cookie(COOKIE, path=PATH)


async def current_session(request: Request) -> dict[str, Any] | None:
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    try:
        data = _serializer(request, "trigger-email.dashboard").loads(token, max_age=SESSION_AGE)
    except (BadSignature, SignatureExpired):
        return None
    if not isinstance(data, dict) or "u" not in data:
        return None
    user = await get_user(runtime(request).db, int(data["u"]))
    if user is None:
        return None
    return {"user": user, "csrf": str(data["c"])}


def login_csrf(request: Request, response: Response | None = None) -> str:
    """The login form's CSRF token: a random value in a cookie, repeated in the form."""
    token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    if response is not None:
        set_cookie(request, response, LOGIN_COOKIE, token, 3600)
    return token


def csrf_matches(expected: str | None, given: Any) -> bool:
    return bool(expected) and isinstance(given, str) and hmac.compare_digest(expected.encode(), given.encode())


Page = Callable[[Request], Awaitable[Response]]


def login_required(page: Page) -> Page:
    """No page, no data without a session: everything else is sent to the login page. Every
    POST must carry the session's CSRF token."""

    @wraps(page)
    async def guarded(request: Request) -> Response:
        session = await current_session(request)
        if session is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"{PATH}/login?next={quote(target)}", status_code=303)
        request.state.session = session
        if request.method == "POST":
            form = await request.form()
            if not csrf_matches(session["csrf"], form.get("csrf")):
                from webhooks.dashboard.pages import render

                return render(request, "error.html", {"title": "Refused", "message": "This form has no valid CSRF token; reload the page and try again."}, status=403)
            request.state.form = form
        return await page(request)

    return guarded


async def count_failure(request: Request, email: str) -> None:
    redis = runtime(request).queue.redis
    if redis is None:
        return
    for key in _keys(request, email):
        count = await redis.incr(key)
        if count == 1:
            await redis.expire(key, FAILURE_WINDOW)


async def locked_for(request: Request, email: str) -> int:
    """Seconds until this address (or this client) may try again; 0 when it may now."""
    redis = runtime(request).queue.redis
    if redis is None:
        return 0
    wait = 0
    for key, limit in zip(_keys(request, email), (MAX_FAILURES, MAX_CLIENT_FAILURES)):
        count = int(await redis.get(key) or 0)
        if count >= limit:
            wait = max(wait, int(await redis.ttl(key)) or 1)
    return wait


async def clear_failures(request: Request, email: str) -> None:
    redis = runtime(request).queue.redis
    if redis is not None:
        await redis.delete(_keys(request, email)[0])


def _keys(request: Request, email: str) -> list[str]:
    client = request.client.host if request.client else "unknown"
    return [f"trigger-email:login-failures:email:{email.strip().lower()}", f"trigger-email:login-failures:client:{client}"]
