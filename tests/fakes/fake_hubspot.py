"""A fake HubSpot API on a real socket, so the real SDK can be pointed at it.

It follows HubSpot's documented contract for the calls the connector makes:

* `GET /crm/v3/objects/contacts/{id}?properties=a&properties=b` → 200 with the record
  (only the requested properties plus the always-present ones), or 404 in HubSpot's error
  shape;
* `POST /crm/v3/objects/{emails|notes}/batch/create` → 201 `{"status": "COMPLETE",
  "results": [...]}`, or 207 with `errors` naming failed inputs by `objectWriteTraceId`
  (HubSpot only answers multi-status when inputs carry one; otherwise a bad input fails
  the whole batch with 400);
* every call needs `Authorization: Bearer <token>`, else 401.

Knobs: `rate_limit(n, retry_after)` answers the next n calls with 429, `fail_next(n, status)`
with a server error, `fail_input(trace_id)` fails one input of a batch.

    with FakeHubSpot() as fake:
        fake.contacts["101"] = {"npi": "1234567893", "email": "a@b.example"}
        ... base_url = fake.url ...
        assert fake.calls("/crm/v3/objects/emails/batch/create")
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

MAX_BATCH_INPUTS = 100
ASSOCIATION_TYPE_IDS = {"emails": 198, "notes": 202}
"""HubSpot-defined association type ids to contacts: email → contact 198, note → contact 202."""
ALWAYS_RETURNED = ("hs_object_id", "createdate", "lastmodifieddate")


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    json: Any = None
    status: int = 0


@dataclass
class FakeHubSpot:
    token: str = "test-token"
    contacts: dict[str, dict[str, str]] = field(default_factory=dict)
    """Seeded contacts: id → properties."""
    requests: list[RecordedRequest] = field(default_factory=list)
    created: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"emails": [], "notes": []})
    """Objects created by batch calls, as HubSpot returned them."""
    url: str = ""
    _rate_limited: int = 0
    _retry_after: str | None = None
    _server_errors: int = 0
    _server_status: int = 503
    _failing_inputs: dict[str, str] = field(default_factory=dict)
    _next_id: int = 9000
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    # knobs

    def rate_limit(self, calls: int = 1, retry_after: str | None = "7") -> None:
        """Answer the next `calls` requests with 429 (and this Retry-After, if any)."""
        self._rate_limited, self._retry_after = calls, retry_after

    def fail_next(self, calls: int = 1, status: int = 503) -> None:
        self._server_errors, self._server_status = calls, status

    def fail_input(self, trace_id: str, message: str = "Property values were not valid") -> None:
        """Make the batch input with this `objectWriteTraceId` fail on its own."""
        self._failing_inputs[str(trace_id)] = message

    def reset(self) -> None:
        """Forget requests, seeded contacts, created objects and knobs (between tests)."""
        with self._lock:
            self.contacts.clear()
            self.requests.clear()
            self.created = {"emails": [], "notes": []}
            self._rate_limited = self._server_errors = 0
            self._failing_inputs.clear()

    def calls(self, path: str) -> list[RecordedRequest]:
        return [request for request in self.requests if request.path == path]

    # lifecycle

    def start(self) -> "FakeHubSpot":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        host, port = sock.getsockname()
        self.url = f"http://{host}:{port}"
        config = uvicorn.Config(self.app(), log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake HubSpot did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> "FakeHubSpot":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # the app

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/crm/v3/objects/contacts/{contact_id}", self._get_contact, methods=["GET"]),
                Route("/crm/v3/objects/{object_type}/batch/create", self._batch_create, methods=["POST"]),
            ]
        )

    async def _get_contact(self, request: Request) -> JSONResponse:
        recorded, refused = await self._admit(request)
        if refused is not None:
            return refused
        contact_id = request.path_params["contact_id"]
        stored = self.contacts.get(contact_id)
        if stored is None:
            return self._answer(recorded, _error(404, "resource not found", "OBJECT_NOT_FOUND"))
        wanted: list[str] = []
        for value in request.query_params.getlist("properties"):
            wanted.extend(name for name in value.split(",") if name)
        properties = {"hs_object_id": contact_id, "createdate": _now(), "lastmodifieddate": _now()}
        properties.update({name: stored[name] for name in (wanted or stored) if name in stored})
        body = {"id": contact_id, "properties": properties, "createdAt": _now(), "updatedAt": _now(), "archived": False}
        return self._answer(recorded, JSONResponse(body))

    async def _batch_create(self, request: Request) -> JSONResponse:
        recorded, refused = await self._admit(request)
        if refused is not None:
            return refused
        object_type = request.path_params["object_type"]
        if object_type not in ASSOCIATION_TYPE_IDS:
            return self._answer(recorded, _error(404, f"Unable to infer object type from: {object_type}", "OBJECT_NOT_FOUND"))
        inputs = (recorded.json or {}).get("inputs") if isinstance(recorded.json, dict) else None
        if not isinstance(inputs, list) or not inputs:
            return self._answer(recorded, _error(400, "Invalid input JSON: inputs is required", "VALIDATION_ERROR"))
        if len(inputs) > MAX_BATCH_INPUTS:
            return self._answer(recorded, _error(400, f"Too many inputs: {len(inputs)} > {MAX_BATCH_INPUTS}", "VALIDATION_ERROR"))
        started = _now()
        results: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for item in inputs:
            trace = item.get("objectWriteTraceId") if isinstance(item, dict) else None
            problem = self._input_problem(object_type, item)
            if problem is None:
                results.append(self._create(object_type, item, trace))
                continue
            if trace is None:
                # Without trace ids HubSpot cannot say which input failed: all or nothing.
                return self._answer(recorded, _error(400, problem, "VALIDATION_ERROR"))
            errors.append({"status": "error", "category": "VALIDATION_ERROR", "message": problem, "context": {"objectWriteTraceId": [str(trace)]}})
        body: dict[str, Any] = {"status": "COMPLETE", "results": results, "startedAt": started, "completedAt": _now()}
        if errors:
            body.update(errors=errors, numErrors=len(errors))
        with self._lock:
            self.created[object_type].extend(results)
        return self._answer(recorded, JSONResponse(body, status_code=207 if errors else 201))

    def _input_problem(self, object_type: str, item: Any) -> str | None:
        if not isinstance(item, dict) or not isinstance(item.get("properties"), dict):
            return "properties: required"
        trace = item.get("objectWriteTraceId")
        if trace is not None and str(trace) in self._failing_inputs:
            return self._failing_inputs[str(trace)]
        if "hs_timestamp" not in item["properties"]:
            return "Property values were not valid: hs_timestamp is required"
        for association in item.get("associations") or []:
            for kind in association.get("types") or []:
                if kind.get("associationCategory") != "HUBSPOT_DEFINED" or kind.get("associationTypeId") != ASSOCIATION_TYPE_IDS[object_type]:
                    return f"invalid association type {kind!r} for {object_type} → contacts"
            if self.contacts and str((association.get("to") or {}).get("id")) not in self.contacts:
                return f"contact {(association.get('to') or {}).get('id')} does not exist"
        return None

    def _create(self, object_type: str, item: dict[str, Any], trace: Any) -> dict[str, Any]:
        with self._lock:
            self._next_id += 1
            object_id = str(self._next_id)
        created = {
            "id": object_id,
            "properties": {**item["properties"], "hs_object_id": object_id},
            "createdAt": _now(),
            "updatedAt": _now(),
            "archived": False,
            "associations": item.get("associations") or [],
        }
        if trace is not None:
            created["objectWriteTraceId"] = str(trace)
        return created

    async def _admit(self, request: Request) -> tuple[RecordedRequest, JSONResponse | None]:
        """Record the request, then apply auth and the failure knobs, in HubSpot's order."""
        raw = await request.body()
        recorded = RecordedRequest(
            method=request.method,
            path=request.url.path,
            query=list(request.query_params.multi_items()),
            headers={key.lower(): value for key, value in request.headers.items()},
        )
        if raw:
            try:
                recorded.json = json.loads(raw)
            except ValueError:
                recorded.json = None
        with self._lock:
            self.requests.append(recorded)
        if recorded.headers.get("authorization") != f"Bearer {self.token}":
            return recorded, self._answer(recorded, _error(
                401,
                "Authentication credentials not found. This API supports OAuth 2.0 authentication.",
                "INVALID_AUTHENTICATION",
            ))
        with self._lock:
            if self._rate_limited > 0:
                self._rate_limited -= 1
                response = _error(
                    429, "You have reached your ten_secondly_rolling limit.", "RATE_LIMITS",
                    errorType="RATE_LIMIT", policyName="TEN_SECONDLY_ROLLING",
                )
                if self._retry_after is not None:
                    response.headers["Retry-After"] = self._retry_after
                return recorded, self._answer(recorded, response)
            if self._server_errors > 0:
                self._server_errors -= 1
                return recorded, self._answer(recorded, _error(self._server_status, "internal error", "INTERNAL_ERROR"))
        return recorded, None

    @staticmethod
    def _answer(recorded: RecordedRequest, response: JSONResponse) -> JSONResponse:
        recorded.status = response.status_code
        return response


def _error(status: int, message: str, category: str, **extra: Any) -> JSONResponse:
    """HubSpot's error body: status, message, correlationId, category (+ extras)."""
    body = {"status": "error", "message": message, "correlationId": str(uuid.uuid4()), "category": category, **extra}
    return JSONResponse(body, status_code=status)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
