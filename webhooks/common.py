"""What every route shares: JSON errors, bounded body reading, API-key auth."""

from __future__ import annotations

import json
import re
from functools import wraps
from typing import Any, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from core.apikeys import check_key
from core.runtime import Runtime

MAX_BODY = 64 * 1024


class HTTPProblem(Exception):
    def __init__(self, status: int, reason: str, field: str | None = None):
        self.status = status
        self.reason = reason
        self.field = field


def problem(status: int, reason: str, field: str | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"error": reason}
    if field:
        body["field"] = field
    body.update(extra)
    return JSONResponse(body, status_code=status)


def runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def query_limit(request: Request, *, default: int, most: int, wording: str = "a number") -> int:
    """`?limit=`: ASCII digits for a number from 1 to `most` (`default` when absent), else a
    422 naming the field ("limit must be <wording> from 1 to <most>")."""
    text = request.query_params.get("limit", str(default))
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= most:
        raise HTTPProblem(422, f"limit must be {wording} from 1 to {most}", "limit")
    return int(text)


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise HTTPProblem(413, f"body is larger than {limit // 1024} KiB")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPProblem(413, f"body is larger than {limit // 1024} KiB")
        chunks.append(chunk)
    return b"".join(chunks)


MAX_JSON_DEPTH = 32
"""Deeper nesting than this is refused before parsing (no real payload comes close)."""

_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _check_strings(node: Any, path: str) -> None:
    """NUL and lone surrogates cannot be stored (PostgreSQL refuses NUL in text and jsonb;
    nothing can encode a lone surrogate as UTF-8): refuse them wherever they are."""
    if isinstance(node, str):
        if "\x00" in node:
            raise HTTPProblem(0, "NUL characters are not allowed in strings", path)
        try:
            node.encode("utf-8")
        except UnicodeEncodeError:
            raise HTTPProblem(0, "lone UTF-16 surrogates are not allowed in strings", path) from None
    elif isinstance(node, dict):
        for key, value in node.items():
            _check_strings(key, path)
            _check_strings(value, f"{path}.{key}" if path != "body" else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            _check_strings(value, f"{path}[{index}]")


def parse_json(body: bytes | str, *, status: int = 422, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The one JSON body reader of every route: strict UTF-8, no NaN/Infinity, nesting at most
    `max_depth`, no NUL or lone surrogate in any string or key. Each refusal is an
    HTTPProblem with `status` and a reason naming what was wrong."""
    try:
        text = body.decode("utf-8") if isinstance(body, (bytes, bytearray)) else body
    except UnicodeDecodeError as exc:
        raise HTTPProblem(status, f"body is not valid UTF-8: {exc.reason} at byte {exc.start}", "body") from None
    text = text.removeprefix("\ufeff")
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    depth = deepest = 0
    for char in brackets:
        depth += 1 if char in "[{" else -1
        if depth > deepest:
            deepest = depth
            if deepest > max_depth:
                raise HTTPProblem(status, f"body is nested deeper than {max_depth} levels", "body")
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise HTTPProblem(status, f"body is not valid JSON: {exc}", "body") from None
    try:
        _check_strings(value, "body")
    except HTTPProblem as exc:
        raise HTTPProblem(status, exc.reason, exc.field) from None
    return value


async def read_json(request: Request, limit: int = MAX_BODY) -> Any:
    return parse_json(await read_body(request, limit))


async def read_optional_json(request: Request, limit: int = MAX_BODY) -> Any:
    """The JSON body, or None when the request has none. A body of `null`, or of whitespace
    alone (not JSON, and not "no body" either), is refused."""
    raw = await read_body(request, limit)
    if not raw:
        return None
    value = parse_json(raw)
    if value is None:
        raise HTTPProblem(422, "body must be a JSON object, or no body at all", "body")
    return value


Endpoint = Callable[[Request], Awaitable[Response]]


def default_scope(method: str) -> str:
    """Reading needs `read`; any change needs `admin` unless the route says otherwise."""
    return "read" if method in ("GET", "HEAD") else "admin"


def api_key_required(endpoint: Endpoint | None = None, *, scope: str | None = None) -> Any:
    """`@api_key_required` (scope from the method: `read` or `admin`) or
    `@api_key_required(scope="triggers:write")`. 401 without a valid key, 403 without the scope."""

    def decorate(endpoint: Endpoint) -> Endpoint:
        @wraps(endpoint)
        async def guarded(request: Request) -> Response:
            from core.apikeys import has_scope, touch_key

            header = request.headers.get("authorization", "")
            scheme, _, key = header.partition(" ")
            if scheme.lower() != "bearer" or not key.strip():
                return problem(401, "missing API key: send 'Authorization: Bearer <key>'", "Authorization")
            rt = runtime(request)
            record = await check_key(rt.db, key.strip())
            if record is None:
                return problem(401, "unknown or revoked API key", "Authorization")
            needed = scope or default_scope(request.method)
            if not has_scope(record, needed):
                return problem(403, f"this API key lacks the {needed!r} scope", "Authorization")
            await touch_key(rt.db, record, rt.clock.now())
            request.state.api_key = record
            try:
                return await endpoint(request)
            except HTTPProblem as exc:
                return problem(exc.status, exc.reason, exc.field)

        guarded.required_scope = scope  # type: ignore[attr-defined]
        return guarded

    return decorate(endpoint) if endpoint is not None else decorate


def handles_problems(endpoint: Endpoint) -> Endpoint:
    @wraps(endpoint)
    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except HTTPProblem as exc:
            return problem(exc.status, exc.reason, exc.field)

    return wrapped


RETRY_AFTER = "30"


def unavailable_exception_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean a dependency (database, Redis) does not answer, not a bug."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from sqlalchemy.exc import InterfaceError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    return (OperationalError, InterfaceError, PoolTimeout, OSError, TimeoutError, RedisConnectionError, RedisTimeoutError)


_UNAVAILABLE_WORDS = (
    "connect", "locked", "unable to open", "terminat", "shutdown", "shutting down", "timeout", "timed out",
    "i/o error", "starting up", "too many clients", "closed",
)


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc` means the database or Redis does not answer now (retry later), false
    for a bug (a missing table, a bad statement), which stays a 500 with its traceback."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, OperationalError):
        text = str(exc.orig if exc.orig is not None else exc).lower()
        return any(word in text for word in _UNAVAILABLE_WORDS)
    return isinstance(exc, unavailable_exception_types())


def unavailable() -> JSONResponse:
    """What every route answers while the database or Redis is down: the caller (a CRM, a
    client system) retries; no host, port or exception text leaks."""
    return JSONResponse(
        {"error": "service temporarily unavailable (a dependency does not answer); retry later"},
        status_code=503, headers={"Retry-After": RETRY_AFTER},
    )


async def unavailable_handler(request: Request, exc: Exception) -> Response:
    import logging

    if not is_unavailable(exc):
        raise exc

    logging.getLogger("trigger_email.http").warning(
        "%s %s: dependency unavailable (%s)", request.method, request.url.path, type(exc).__name__
    )
    return unavailable()


class RefuseHostileUrls:
    """ASGI middleware: a path or query carrying NUL or other control characters is refused
    with 400 before any route sees it (PostgreSQL refuses NUL in text; nothing legitimate
    sends control characters in a URL)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            field = None
            if _has_control(scope.get("path", "")):
                field = "path"
            else:
                from urllib.parse import unquote_to_bytes

                raw = scope.get("query_string", b"")
                if raw and (_has_control_bytes(raw) or _has_control_bytes(unquote_to_bytes(raw.replace(b"+", b" ")))):
                    field = "query"
            if field is not None:
                response = problem(400, f"control characters (such as NUL) are not allowed in the URL {field}", field)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BYTES = re.compile(rb"[\x00-\x1f\x7f]")


def _has_control(text: str) -> bool:
    return bool(_CONTROL.search(text))


def _has_control_bytes(raw: bytes) -> bool:
    return bool(_CONTROL_BYTES.search(raw))


class RedactTokens:
    """A logging filter for uvicorn's access log: the token of a tracking or unsubscribe URL
    is a credential for that recipient (it unsubscribes them, it records their opens), so
    the access log shows `/u/…` instead."""

    _TOKEN_PATH = re.compile(r"(/(?:t/o|t/c|u)/)[^/?\s\"]+")

    def filter(self, record: Any) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            record.args = tuple(self._TOKEN_PATH.sub(r"\1…", a) if isinstance(a, str) else a for a in args)
        elif isinstance(record.msg, str):
            record.msg = self._TOKEN_PATH.sub(r"\1…", record.msg)
        return True


def redact_access_log() -> None:
    import logging

    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactTokens) for f in logger.filters):
        logger.addFilter(RedactTokens())
