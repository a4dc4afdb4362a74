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

* `POST /crm/v3/objects/{emails|notes}/search` → `{"total", "results", "paging"}` for
  `filterGroups` (OR of ANDed filters: EQ, NEQ, IN, CONTAINS_TOKEN, HAS_PROPERTY), including
  the `associations.contact` pseudo-property;
* every call needs `Authorization: Bearer <token>`, else 401.

Inputs are validated as HubSpot documents the email and note objects: only their documented
properties (plus `custom_properties`), `hs_timestamp` required (epoch ms or ISO 8601 UTC),
`hs_email_direction` in EMAIL / INCOMING_EMAIL / FORWARDED_EMAIL, `hs_email_status` in
BOUNCED / FAILED / SCHEDULED / SENDING / SENT, `hs_note_body` at most 65,536 characters, and
associations to contacts of the HUBSPOT_DEFINED type 198 (email) or 202 (note). A refusal reads
like HubSpot's: `VALIDATION_ERROR`, "Property values were not valid: [{isValid, message,
error: PROPERTY_DOESNT_EXIST | INVALID_OPTION | …, name}]".

Knobs: `rate_limit(n, retry_after)` answers the next n calls with 429, `fail_next(n, status)`
with a server error, `fail_input(trace_id)` fails one input of a batch, `whole_batch_errors`
refuses a whole batch with 400 for one bad input (whether HubSpot does so for every kind of bad
input is not documented), `lose_replies(n)` creates the next n batches and then drops the
connection before the answer is complete.

    with FakeHubSpot() as fake:
        fake.contacts["101"] = {"npi": "1234567893", "email": "a@b.example"}
        ... base_url = fake.url ...
        assert fake.calls("/crm/v3/objects/emails/batch/create")
"""

from __future__ import annotations

import asyncio
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

COMMON_PROPERTIES = {"hs_timestamp", "hubspot_owner_id", "hs_attachment_ids"}
OBJECT_PROPERTIES = {
    "emails": COMMON_PROPERTIES | {
        "hs_email_direction", "hs_email_html", "hs_email_status", "hs_email_subject", "hs_email_text", "hs_email_headers",
    },
    "notes": COMMON_PROPERTIES | {"hs_note_body"},
}
"""The properties HubSpot documents for logging emails and notes through the CRM v3 objects API."""
ENUMERATIONS = {
    "hs_email_direction": ("EMAIL", "INCOMING_EMAIL", "FORWARDED_EMAIL"),
    "hs_email_status": ("BOUNCED", "FAILED", "SCHEDULED", "SENDING", "SENT"),
}
NOTE_BODY_MAX = 65_536
SEARCH_OPERATORS = {"EQ", "NEQ", "IN", "CONTAINS_TOKEN", "HAS_PROPERTY"}


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
    custom_properties: dict[str, set[str]] = field(default_factory=lambda: {"emails": set(), "notes": set()})
    """Properties an admin created on the object (e.g. an activity id property)."""
    whole_batch_errors: bool = False
    _lost_replies: int = 0
    _hold: threading.Event | None = None
    _hold_calls: int = 0
    held: threading.Event = field(default_factory=threading.Event)
    """Set when a batch create has written its objects and is being held (see `hold_replies`)."""
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

    def lose_replies(self, calls: int = 1) -> None:
        """Create the objects of the next `calls` batch requests, then drop the connection in
        the middle of the answer, as a proxy timeout or a network cut would."""
        self._lost_replies = calls

    def hold_replies(self, calls: int = 1) -> threading.Event:
        """The next `calls` batch creates write their objects, then wait to answer until the
        returned event is set (a slow network, an overloaded HubSpot); `held` tells when one
        is waiting."""
        self.held.clear()
        self._hold = threading.Event()
        self._hold_calls = calls
        return self._hold

    def reset(self) -> None:
        """Forget requests, seeded contacts, created objects and knobs (between tests)."""
        if self._hold is not None:
            self._hold.set()
            self._hold = None
        self.held.clear()
        with self._lock:
            self.contacts.clear()
            self.requests.clear()
            self.created = {"emails": [], "notes": []}
            self._rate_limited = self._server_errors = self._lost_replies = 0
            self._failing_inputs.clear()
            self.custom_properties = {"emails": set(), "notes": set()}
            self.whole_batch_errors = False

    def timeline(self, contact_id: str | None = None) -> list[dict[str, Any]]:
        """Every created email and note (on one contact's timeline when `contact_id` is given)."""
        return [
            item for object_type in ("emails", "notes") for item in self.created[object_type]
            if contact_id is None or any(str(a.get("to", {}).get("id")) == str(contact_id) for a in item["associations"])
        ]

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
                Route("/crm/v3/objects/{object_type}/search", self._search, methods=["POST"]),
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
        recorded, object_type, refused = await self._admit_object(request)
        if refused is not None:
            return refused
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
            if trace is None or self.whole_batch_errors:
                # Without trace ids HubSpot cannot say which input failed: all or nothing.
                return self._answer(recorded, _error(400, problem, "VALIDATION_ERROR"))
            errors.append({"status": "error", "category": "VALIDATION_ERROR", "message": problem, "context": {"objectWriteTraceId": [str(trace)]}})
        body: dict[str, Any] = {"status": "COMPLETE", "results": results, "startedAt": started, "completedAt": _now()}
        if errors:
            body.update(errors=errors, numErrors=len(errors))
        with self._lock:
            self.created[object_type].extend(results)
            lose = self._lost_replies > 0
            if lose:
                self._lost_replies -= 1
        with self._lock:
            hold = self._hold if self._hold_calls > 0 else None
            self._hold_calls -= 1 if hold is not None else 0
        if hold is not None:
            self.held.set()
            await asyncio.to_thread(hold.wait, 30)
        if lose:
            recorded.status = -1
            return _CutOff(body)  # type: ignore[return-value]
        return self._answer(recorded, JSONResponse(body, status_code=207 if errors else 201))

    async def _search(self, request: Request) -> JSONResponse:
        recorded, object_type, refused = await self._admit_object(request)
        if refused is not None:
            return refused
        body = recorded.json if isinstance(recorded.json, dict) else {}
        groups = body.get("filterGroups") or []
        known = OBJECT_PROPERTIES[object_type] | self.custom_properties[object_type] | set(ALWAYS_RETURNED)
        if len(groups) > 5 or sum(len(group.get("filters") or []) for group in groups) > 18:
            return self._answer(recorded, _error(400, "too many filters: at most 5 filterGroups and 18 filters", "VALIDATION_ERROR"))
        for group in groups:
            for condition in group.get("filters") or []:
                name = str(condition.get("propertyName"))
                if condition.get("operator") not in SEARCH_OPERATORS:
                    return self._answer(recorded, _error(400, f"unknown operator {condition.get('operator')!r}", "VALIDATION_ERROR"))
                if name not in known and name != "associations.contact":
                    return self._answer(recorded, _error(400, f"There was a problem with the request. Property {name!r} does not exist", "VALIDATION_ERROR"))
        limit = int(body.get("limit") or 10)
        if limit > 200:
            return self._answer(recorded, _error(400, "limit: at most 200", "VALIDATION_ERROR"))
        with self._lock:
            candidates = list(self.created[object_type])
        matching = [item for item in candidates if not groups or any(_matches(item, group) for group in groups)]
        after = int(body.get("after") or 0)
        page = matching[after : after + limit]
        wanted = body.get("properties") or ["hs_object_id", "createdate", "lastmodifieddate"]
        results = [
            {
                "id": item["id"],
                "properties": {name: item["properties"].get(name) for name in {*wanted, *ALWAYS_RETURNED}},
                "createdAt": item["createdAt"], "updatedAt": item["updatedAt"], "archived": False,
            }
            for item in page
        ]
        answer: dict[str, Any] = {"total": len(matching), "results": results}
        if after + limit < len(matching):
            answer["paging"] = {"next": {"after": str(after + limit)}}
        return self._answer(recorded, JSONResponse(answer))

    def _input_problem(self, object_type: str, item: Any) -> str | None:
        if not isinstance(item, dict) or not isinstance(item.get("properties"), dict):
            return "properties: required"
        trace = item.get("objectWriteTraceId")
        if trace is not None and str(trace) in self._failing_inputs:
            return self._failing_inputs[str(trace)]
        invalid = self._property_problems(object_type, item["properties"])
        if invalid:
            return "Property values were not valid: " + json.dumps(invalid)
        for association in item.get("associations") or []:
            for kind in association.get("types") or []:
                if kind.get("associationCategory") != "HUBSPOT_DEFINED" or kind.get("associationTypeId") != ASSOCIATION_TYPE_IDS[object_type]:
                    return f"invalid association type {kind!r} for {object_type} → contacts"
            if self.contacts and str((association.get("to") or {}).get("id")) not in self.contacts:
                return f"contact {(association.get('to') or {}).get('id')} does not exist"
        return None

    def _property_problems(self, object_type: str, properties: dict[str, Any]) -> list[dict[str, Any]]:
        known = OBJECT_PROPERTIES[object_type] | self.custom_properties[object_type]
        problems = []

        def invalid(name: str, error: str, message: str) -> None:
            problems.append({"isValid": False, "message": message, "error": error, "name": name, "localizedErrorMessage": message})

        for name, value in properties.items():
            if name not in known:
                invalid(name, "PROPERTY_DOESNT_EXIST", f'Property "{name}" does not exist')
            elif value is not None and not isinstance(value, (str, int, float, bool)):
                invalid(name, "INVALID_PROPERTY_VALUE", f"{name} must be a string, number or boolean")
            elif name in ENUMERATIONS and str(value) not in ENUMERATIONS[name]:
                invalid(name, "INVALID_OPTION", f"{value} was not one of the allowed options: [{', '.join(ENUMERATIONS[name])}]")
            elif name == "hs_timestamp" and not _timestamp_ok(value):
                invalid(name, "INVALID_DATE", f"{value!r} is not a valid timestamp: use epoch milliseconds or ISO 8601 in UTC")
            elif name == "hs_note_body" and len(str(value)) > NOTE_BODY_MAX:
                invalid(name, "INVALID_PROPERTY_VALUE", f"hs_note_body is longer than {NOTE_BODY_MAX} characters")
        if "hs_timestamp" not in properties:
            invalid("hs_timestamp", "REQUIRED_PROPERTY", "hs_timestamp is required")
        return problems

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

    async def _admit_object(self, request: Request) -> tuple[RecordedRequest, str, JSONResponse | None]:
        """`_admit`, then HubSpot's 404 for an object type in the path that it does not know."""
        recorded, refused = await self._admit(request)
        object_type = request.path_params["object_type"]
        if refused is None and object_type not in ASSOCIATION_TYPE_IDS:
            refused = self._answer(recorded, _error(404, f"Unable to infer object type from: {object_type}", "OBJECT_NOT_FOUND"))
        return recorded, object_type, refused

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


class _CutOff:
    """An answer that starts (status line, headers, part of the body) and is then cut off:
    the server closes the connection, so the client never learns the objects exist."""

    def __init__(self, body: dict[str, Any]):
        self.content = json.dumps(body).encode()
        self.status_code = 201

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({
            "type": "http.response.start", "status": 201,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(self.content)).encode())],
        })
        await send({"type": "http.response.body", "body": self.content[: len(self.content) // 2], "more_body": True})
        raise ConnectionAbortedError("fake HubSpot drops the connection mid-answer")


def _timestamp_ok(value: Any) -> bool:
    text = str(value)
    if text.isdigit():
        return True
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return moment.tzinfo is not None and moment.utcoffset() == timezone.utc.utcoffset(None)


def _millis(value: Any) -> int | None:
    text = str(value)
    if text.isdigit():
        return int(text)
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def _matches(item: dict[str, Any], group: dict[str, Any]) -> bool:
    for condition in group.get("filters") or []:
        name, operator = condition.get("propertyName"), condition.get("operator")
        if name == "associations.contact":
            actual: Any = {str(a.get("to", {}).get("id")) for a in item["associations"]}
        else:
            actual = item["properties"].get(name)
        wanted = [condition.get("value")] if operator in ("EQ", "NEQ", "CONTAINS_TOKEN") else list(condition.get("values") or [])
        if name == "hs_timestamp":
            actual = _millis(actual) if actual is not None else None
            wanted = [_millis(value) for value in wanted]
        elif not isinstance(actual, set):
            actual = None if actual is None else str(actual)
            wanted = [str(value) for value in wanted]
        else:
            wanted = [str(value) for value in wanted]
        if operator == "HAS_PROPERTY":
            ok = bool(actual)
        elif operator == "CONTAINS_TOKEN":
            ok = actual is not None and str(wanted[0]).lower() in str(actual).lower().split()
        elif isinstance(actual, set):
            ok = bool(actual & set(wanted)) if operator != "NEQ" else not (actual & set(wanted))
        elif operator == "NEQ":
            ok = actual not in wanted
        else:
            ok = actual in wanted
        if not ok:
            return False
    return True


def _error(status: int, message: str, category: str, **extra: Any) -> JSONResponse:
    """HubSpot's error body: status, message, correlationId, category (+ extras)."""
    body = {"status": "error", "message": message, "correlationId": str(uuid.uuid4()), "category": category, **extra}
    return JSONResponse(body, status_code=status)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
