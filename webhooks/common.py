"""What every route shares: JSON errors, bounded body reading, API-key auth."""

from __future__ import annotations

import json
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


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPProblem(413, f"body is larger than {limit // 1024} KiB")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPProblem(413, f"body is larger than {limit // 1024} KiB")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int = MAX_BODY) -> Any:
    body = await read_body(request, limit)
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPProblem(422, f"body is not valid JSON: {exc}", "body") from None


Endpoint = Callable[[Request], Awaitable[Response]]


def api_key_required(endpoint: Endpoint) -> Endpoint:
    @wraps(endpoint)
    async def guarded(request: Request) -> Response:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return problem(401, "missing API key: send 'Authorization: Bearer <key>'", "Authorization")
        record = await check_key(runtime(request).db, key.strip())
        if record is None:
            return problem(401, "unknown or revoked API key", "Authorization")
        request.state.api_key = record
        try:
            return await endpoint(request)
        except HTTPProblem as exc:
            return problem(exc.status, exc.reason, exc.field)

    return guarded


def handles_problems(endpoint: Endpoint) -> Endpoint:
    @wraps(endpoint)
    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except HTTPProblem as exc:
            return problem(exc.status, exc.reason, exc.field)

    return wrapped
