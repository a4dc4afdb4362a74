"""A fake Salesforce org over real HTTPS, for driving simple-salesforce end to end.

It serves the documented REST contract the connector uses:

* `POST /services/oauth2/token`: client credentials (`client_id`/`client_secret` in the form
  or HTTP Basic) and JWT bearer (`assertion`, checked against the connected app's public
  key) → `{"access_token", "instance_url", "id", "token_type", "issued_at", "signature"}`;
  errors as `{"error", "error_description"}` with 400.
* `GET /services/data/vXX.X/sobjects/{Object}/{id}` → the record with `attributes`, or 404
  `[{"errorCode": "NOT_FOUND", "message": ...}]`.
* `POST /services/data/vXX.X/composite/sobjects` → one SaveResult per record, in order.

* `PATCH /services/data/vXX.X/composite/sobjects/Task/{ExternalIdField}` → one UpsertResult
  (`created` true or false) per record, matched on the external id field.
* `GET /services/data/vXX.X/query?q=SELECT … FROM Task WHERE …` for the Task lookups the
  connector makes (`WhoId IN (…)`, `WhatId IN (…)`, `ActivityDate IN (…)`, `TaskSubtype = '…'`),
  with `nextRecordsUrl` paging.

Tasks are validated as Salesforce does: a field Task does not have (and no `custom_fields`)
fails the whole request with `400 [{"errorCode": "INVALID_FIELD", "message": "No such column
'X' on sobject of type Task"}]`, an ActivityDate that is not a date with `JSON_PARSER_ERROR`;
per record, Status / Priority / TaskSubtype outside their picklists give
`INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST`, a WhoId that is not a Contact (003) or Lead (00Q)
id `FIELD_INTEGRITY_EXCEPTION`, a Subject over 255 characters `STRING_TOO_LONG`.

Every data call answers `Sforce-Limit-Info: api-usage=<used>/<limit>` and is refused with
`401 [{"errorCode": "INVALID_SESSION_ID", ...}]` unless it carries a token this fake issued.
Knobs: `expire_sessions()`, `fail_next(...)` / `limit_exceeded()`, `fail_who_ids`,
`malformed_who_ids` (the whole request is refused with 400), `lose_replies(n)`, `hold_replies()`.

TLS comes from a throwaway `trustme` CA; point `REQUESTS_CA_BUNDLE` at `ca_bundle`.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import secrets
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs

import jwt
import pytest
import trustme
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

TASK_FIELDS = {
    "WhoId", "WhatId", "Subject", "ActivityDate", "Status", "Priority", "OwnerId", "Description", "Type",
    "IsReminderSet", "ReminderDateTime", "TaskSubtype", "CallType", "CallDurationInSeconds", "CallDisposition",
    "CallObject", "RecurrenceType", "RecurrenceInterval", "IsVisibleInSelfService",
}
"""Task fields a client may set on create (Salesforce's Object Reference for Task)."""
PICKLISTS = {
    "Status": ("Not Started", "In Progress", "Completed", "Waiting on someone else", "Deferred"),
    "Priority": ("High", "Normal", "Low"),
    "TaskSubtype": ("Task", "Email", "ListEmail", "Cadence", "Call", "LinkedIn"),
}
"""The default picklist values of a new org."""
LENGTHS = {"Subject": 255, "Description": 32000}
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ORG_ID = "00D5g000004ABCDEAA"


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def form(self) -> dict[str, str]:
        return {key: values[0] for key, values in parse_qs(self.body.decode()).items()}


@dataclass
class FailNext:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class FakeSalesforce:
    def __init__(
        self,
        *,
        client_id: str = "fake-client-id",
        client_secret: str = "fake-client-secret",
        username: str | None = None,
        jwt_public_key: bytes | None = None,
        api_limit: int = 15000,
    ):
        self.client_id = client_id
        self.client_secret = client_secret
        self.username = username
        self.jwt_public_key = jwt_public_key
        self.api_limit = api_limit
        self.records: dict[tuple[str, str], dict[str, Any]] = {}
        self.created: list[dict[str, Any]] = []
        self.requests: list[RecordedRequest] = []
        self.tokens: set[str] = set()
        self.fail_who_ids: dict[str, tuple[str, str]] = {}
        """WhoId → (statusCode, message) for a per-record failure in sObject Collections."""
        self.api_used = 0
        self.custom_fields: set[str] = set()
        """Custom Task fields the org has (e.g. an External ID field)."""
        self.external_id_fields: set[str] = set()
        self.malformed_who_ids: set[str] = set()
        """A record with one of these WhoIds makes Salesforce refuse the whole request (400)."""
        self.query_page_size = 2000
        self._lost_replies = 0
        self._hold: threading.Event | None = None
        self.held = threading.Event()
        self._fail_next: list[FailNext] = []
        self._cursors: dict[str, tuple[list[dict[str, Any]], int]] = {}
        self._ids = itertools.count(1)
        self._tmp = tempfile.TemporaryDirectory(prefix="fake-salesforce-")
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self.ca_bundle = ""

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> "FakeSalesforce":
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        tmp = Path(self._tmp.name)
        ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
        cert.private_key_and_cert_chain_pem.write_to_path(str(tmp / "server.pem"))
        self.ca_bundle = str(tmp / "ca.pem")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app(), log_level="warning", ssl_certfile=str(tmp / "server.pem"), lifespan="off", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(self._server, sock),), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake Salesforce did not start")
            time.sleep(0.01)
        return self

    async def _serve(self, server: uvicorn.Server, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        await server.serve(sockets=[sock])

    def stop(self) -> None:
        server, loop = self._server, self._loop
        if server is not None and loop is not None and self._thread is not None:
            # Kept-alive TLS connections would hold a graceful shutdown for the TLS close
            # timeout; drop them first.
            def drop_connections() -> None:
                for connection in list(server.server_state.connections):
                    transport = getattr(connection, "transport", None)
                    if transport is not None:
                        transport.abort()
                server.should_exit = True

            loop.call_soon_threadsafe(drop_connections)
            self._thread.join(timeout=10)
        self._tmp.cleanup()

    def reset(self) -> None:
        if self._hold is not None:
            self._hold.set()
        self._hold = None
        self.held.clear()
        self._lost_replies = 0
        self.custom_fields.clear()
        self.external_id_fields.clear()
        self.malformed_who_ids.clear()
        self.query_page_size = 2000
        self.records.clear()
        self.created.clear()
        self.requests.clear()
        self.tokens.clear()
        self.fail_who_ids.clear()
        self._fail_next.clear()
        self.api_used = 0

    # -- knobs -----------------------------------------------------------------------------

    def add_record(self, object_type: str, record_id: str, **fields: Any) -> None:
        self.records[(object_type, record_id)] = {"Id": record_id, **fields}

    def issue_token(self) -> str:
        token = f"{ORG_ID}!{secrets.token_urlsafe(24)}"
        self.tokens.add(token)
        return token

    def expire_sessions(self) -> None:
        """Every issued token stops working, as after a session timeout or revocation."""
        self.tokens.clear()

    def fail_next(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        """The next data call (after authentication) answers this instead."""
        self._fail_next.append(FailNext(status, body, headers or {}))

    def limit_exceeded(self, retry_after: int | None = None) -> None:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        self.fail_next(403, [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}], headers)

    def lose_replies(self, calls: int = 1) -> None:
        """The next `calls` collection writes are applied, then the connection drops mid-answer."""
        self._lost_replies = calls

    def hold_replies(self) -> threading.Event:
        """The next collection write is applied, then waits to answer until the event is set."""
        self.held.clear()
        self._hold = threading.Event()
        return self._hold

    def tasks_on(self, record_id: str) -> list[dict[str, Any]]:
        return [task for task in self.created if record_id in (task.get("WhoId"), task.get("WhatId"))]

    def calls(self, path_part: str, method: str | None = None) -> list[RecordedRequest]:
        return [r for r in self.requests if path_part in r.path and (method is None or r.method == method)]

    # -- the app ---------------------------------------------------------------------------

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/services/oauth2/token", self._token, methods=["POST"]),
                Route("/services/data/v{version}/sobjects/{object_type}/{record_id}", self._get_record, methods=["GET"]),
                Route("/services/data/v{version}/composite/sobjects", self._create_collection, methods=["POST"]),
                Route(
                    "/services/data/v{version}/composite/sobjects/{object_type}/{id_field}",
                    self._upsert_collection, methods=["PATCH"],
                ),
                Route("/services/data/v{version}/query", self._query, methods=["GET"]),
                Route("/services/data/v{version}/query/", self._query, methods=["GET"]),
            ]
        )

    async def _record(self, request: Request) -> RecordedRequest:
        recorded = RecordedRequest(request.method, request.url.path, dict(request.headers), await request.body())
        self.requests.append(recorded)
        return recorded

    async def _token(self, request: Request) -> Response:
        form = (await self._record(request)).form
        grant = form.get("grant_type")
        if grant == "client_credentials":
            client_id, client_secret = form.get("client_id"), form.get("client_secret")
            basic = request.headers.get("authorization", "")
            if basic.lower().startswith("basic "):
                client_id, _, client_secret = base64.b64decode(basic[6:]).decode().partition(":")
            if (client_id, client_secret) != (self.client_id, self.client_secret):
                return self._oauth_error("invalid_client", "invalid client credentials")
        elif grant == JWT_GRANT:
            if self.jwt_public_key is None:
                return self._oauth_error("invalid_grant", "no certificate registered for the connected app")
            try:
                claims = jwt.decode(
                    form.get("assertion", ""), self.jwt_public_key, algorithms=["RS256"], audience=self.url
                )
            except jwt.PyJWTError as exc:
                return self._oauth_error("invalid_grant", f"invalid assertion: {exc}")
            if claims.get("iss") != self.client_id or claims.get("sub") != self.username:
                return self._oauth_error("invalid_grant", "user hasn't approved this consumer")
        else:
            return self._oauth_error("unsupported_grant_type", "grant type not supported")
        return JSONResponse(
            {
                "access_token": self.issue_token(),
                "signature": base64.b64encode(secrets.token_bytes(32)).decode(),
                "instance_url": self.url,
                "id": f"{self.url}/id/{ORG_ID}/005000000000001AAA",
                "token_type": "Bearer",
                "issued_at": str(int(time.time() * 1000)),
            }
        )

    @staticmethod
    def _oauth_error(error: str, description: str) -> Response:
        return JSONResponse({"error": error, "error_description": description}, status_code=400)

    def _refusal(self, request: Request) -> Response | None:
        """Authentication first, then any injected failure; counts the call like the org."""
        authorization = request.headers.get("authorization", "")
        if not authorization.startswith("Bearer ") or authorization[7:] not in self.tokens:
            return JSONResponse(
                [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}], status_code=401
            )
        self.api_used += 1
        if self._fail_next:
            failure = self._fail_next.pop(0)
            return JSONResponse(failure.body, status_code=failure.status, headers={**self._usage(), **failure.headers})
        return None

    def _usage(self) -> dict[str, str]:
        return {"Sforce-Limit-Info": f"api-usage={self.api_used}/{self.api_limit}"}

    async def _get_record(self, request: Request) -> Response:
        await self._record(request)
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        object_type, record_id = request.path_params["object_type"], request.path_params["record_id"]
        record = self.records.get((object_type, record_id)) or next(
            (r for (t, i), r in self.records.items() if t == object_type and i[:15] == record_id[:15]), None
        )
        if record is None:
            return JSONResponse(
                [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}],
                status_code=404,
                headers=self._usage(),
            )
        version = request.path_params["version"]
        attributes = {"type": object_type, "url": f"/services/data/v{version}/sobjects/{object_type}/{record['Id']}"}
        return JSONResponse({"attributes": attributes, **record}, headers=self._usage())

    async def _create_collection(self, request: Request) -> Response:
        return await self._write_collection(request, None)

    async def _upsert_collection(self, request: Request) -> Response:
        id_field = request.path_params["id_field"]
        if request.path_params["object_type"] != "Task" or id_field not in self.external_id_fields:
            await self._record(request)
            refusal = self._refusal(request)
            if refusal is not None:
                return refusal
            return JSONResponse(
                [{"errorCode": "NOT_FOUND", "message": f"Provided external ID field does not exist or is not accessible: {id_field}"}],
                status_code=404, headers=self._usage(),
            )
        return await self._write_collection(request, id_field)

    async def _write_collection(self, request: Request, id_field: str | None) -> Response:
        recorded = await self._record(request)
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        try:
            body = recorded.json()
            records = body["records"]
            assert isinstance(records, list) and all(isinstance(record, dict) for record in records)
        except (ValueError, KeyError, AssertionError):
            return self._bad_request("JSON_PARSER_ERROR", "Json Deserialization failed on token 'null'")
        if len(records) > 200:
            return self._bad_request("EXCEEDED_ID_LIMIT", "Maximum number of records exceeded: 200")
        whole = self._request_problem(records, id_field)
        if whole is not None:
            return self._bad_request(*whole)
        results = []
        for record in records:
            object_type = (record.get("attributes") or {}).get("type")
            who_id = record.get("WhoId")
            problem = self._record_problem(record) if object_type == "Task" else None
            if not object_type:
                results.append(self._save_error("INVALID_TYPE", "sObject type not specified", []))
            elif who_id in self.fail_who_ids:
                code, message = self.fail_who_ids[who_id]
                results.append(self._save_error(code, message, ["WhoId"]))
            elif problem is not None:
                results.append(self._save_error(*problem))
            elif id_field is not None and (existing := self._by_external_id(id_field, record.get(id_field))) is not None:
                existing.update({k: v for k, v in record.items() if k != "attributes"})
                results.append({"id": existing["Id"], "success": True, "errors": [], "created": False})
            else:
                record_id = f"00T5g{next(self._ids):010d}AAA"
                self.created.append({"Id": record_id, **record})
                results.append({"id": record_id, "success": True, "errors": [], **({"created": True} if id_field else {})})
        hold = self._hold
        if hold is not None:
            self._hold = None
            self.held.set()
            await asyncio.to_thread(hold.wait, 30)
        if self._lost_replies > 0:
            self._lost_replies -= 1
            return _CutOff(json.dumps(results).encode(), self._usage())  # type: ignore[return-value]
        return JSONResponse(results, headers=self._usage())

    def _bad_request(self, code: str, message: str) -> Response:
        return JSONResponse([{"message": message, "errorCode": code}], status_code=400, headers=self._usage())

    def _request_problem(self, records: list[dict[str, Any]], id_field: str | None) -> tuple[str, str] | None:
        """What makes Salesforce refuse the whole request before saving any record."""
        for record in records:
            if (record.get("attributes") or {}).get("type") != "Task":
                continue
            for name in record:
                if name != "attributes" and name not in TASK_FIELDS | self.custom_fields:
                    return "INVALID_FIELD", f"No such column '{name}' on sobject of type Task"
            date = record.get("ActivityDate")
            if date is not None and not _is_date(date):
                return "JSON_PARSER_ERROR", (
                    f"Cannot deserialize instance of date from VALUE_STRING value {date} or request may be missing a required field"
                )
            if record.get("WhoId") in self.malformed_who_ids:
                return "JSON_PARSER_ERROR", f"Cannot deserialize instance of reference from VALUE_STRING value {record['WhoId']}"
            if id_field is not None and not record.get(id_field):
                return "INVALID_FIELD", f"Field {id_field} is required for an upsert on its value"
        return None

    @staticmethod
    def _record_problem(record: dict[str, Any]) -> tuple[str, str, list[str]] | None:
        for name, values in PICKLISTS.items():
            if name in record and record[name] not in values:
                return "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", f"{name}: bad value for restricted picklist field: {record[name]}", [name]
        for name, limit in LENGTHS.items():
            value = record.get(name)
            if isinstance(value, str) and len(value) > limit:
                return "STRING_TOO_LONG", f"{name}: data value too large: {value[:40]}... (max length={limit})", [name]
        who, what = record.get("WhoId"), record.get("WhatId")
        if who is not None and not (_is_id(who) and str(who).startswith(("003", "00Q"))):
            return "FIELD_INTEGRITY_EXCEPTION", f"Name ID: id value of incorrect type: {who}", ["WhoId"]
        if what is not None and not (_is_id(what) and not str(what).startswith(("003", "00Q"))):
            return "FIELD_INTEGRITY_EXCEPTION", f"Related To ID: id value of incorrect type: {what}", ["WhatId"]
        return None

    def _by_external_id(self, field_name: str, value: Any) -> dict[str, Any] | None:
        return next((task for task in self.created if value is not None and task.get(field_name) == value), None)

    async def _query(self, request: Request) -> Response:
        await self._record(request)
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        version = request.path_params["version"]
        cursor = request.query_params.get("cursor")
        if cursor is not None:
            matching, start = self._cursors.get(cursor, ([], 0))
        else:
            parsed = _parse_task_query(request.query_params.get("q", ""))
            if isinstance(parsed, str):
                return JSONResponse([{"message": parsed, "errorCode": "MALFORMED_QUERY"}], status_code=400, headers=self._usage())
            fields, conditions = parsed
            unknown = [name for name in fields if name not in TASK_FIELDS | self.custom_fields | {"Id"}]
            if unknown:
                return JSONResponse(
                    [{"message": f"No such column '{unknown[0]}' on entity 'Task'", "errorCode": "INVALID_FIELD"}],
                    status_code=400, headers=self._usage(),
                )
            matching = [
                {"attributes": {"type": "Task", "url": f"/services/data/v{version}/sobjects/Task/{task['Id']}"},
                 **{name: task.get(name) for name in fields}}
                for task in self.created if _task_matches(task, conditions)
            ]
            start = 0
        page = matching[start : start + self.query_page_size]
        done = start + len(page) >= len(matching)
        body: dict[str, Any] = {"totalSize": len(matching), "done": done, "records": page}
        if not done:
            token = secrets.token_hex(8)
            self._cursors[token] = (matching, start + len(page))
            body["nextRecordsUrl"] = f"/services/data/v{version}/query?cursor={token}"
        return JSONResponse(body, headers=self._usage())

    @staticmethod
    def _save_error(code: str, message: str, fields: list[str]) -> dict[str, Any]:
        return {"success": False, "errors": [{"statusCode": code, "message": message, "fields": fields}]}


class _CutOff:
    """An answer whose body stops halfway: the connection is dropped after the write."""

    def __init__(self, content: bytes, headers: dict[str, str]):
        self.content, self.headers, self.status_code = content, headers, 200

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(self.content)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.content[: len(self.content) // 2], "more_body": True})
        raise ConnectionAbortedError("fake Salesforce drops the connection mid-answer")


def _is_date(value: Any) -> bool:
    try:
        date.fromisoformat(str(value))
    except ValueError:
        return False
    return len(str(value)) == 10


def _is_id(value: Any) -> bool:
    return isinstance(value, str) and len(value) in (15, 18) and value.isalnum()


_QUERY = re.compile(r"^\s*SELECT\s+(?P<fields>[\w\s,]+?)\s+FROM\s+Task(?:\s+WHERE\s+(?P<where>.+?))?\s*$", re.I | re.S)
_CONDITION = re.compile(r"^(?P<field>\w+)\s*(?:=\s*(?P<one>'[^']*'|[\w-]+)|IN\s*\((?P<many>[^)]*)\))$", re.I)


def _parse_task_query(soql: str) -> tuple[list[str], list[list[tuple[str, list[str]]]]] | str:
    """`SELECT a, b FROM Task WHERE (x IN (…) OR y IN (…)) AND z = '…'`: the fields, and the
    conditions as an AND of ORs. Anything else is a MALFORMED_QUERY."""
    match = _QUERY.match(soql)
    if match is None:
        return f"unexpected token in: {soql[:80]}"
    fields = [name.strip() for name in match["fields"].split(",") if name.strip()]
    conditions: list[list[tuple[str, list[str]]]] = []
    for part in re.split(r"\s+AND\s+", match["where"] or "", flags=re.I) if match["where"] else []:
        alternatives = []
        part = part.strip()
        if part.startswith("(") and part.endswith(")"):
            part = part[1:-1]
        for piece in re.split(r"\s+OR\s+", part, flags=re.I):
            found = _CONDITION.match(piece.strip())
            if found is None:
                return f"unexpected condition: {piece.strip()[:80]}"
            raw = [found["one"]] if found["one"] is not None else [v.strip() for v in found["many"].split(",") if v.strip()]
            alternatives.append((found["field"], [value.strip("'") for value in raw]))
        conditions.append(alternatives)
    return fields, conditions


def _task_matches(task: dict[str, Any], conditions: list[list[tuple[str, list[str]]]]) -> bool:
    return all(any(str(task.get(name)) in values for name, values in alternatives) for alternatives in conditions)


# Shared pytest fixtures: import `fake` (and `fake_server`) into a test module to use them.


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeSalesforce]:
    """One HTTPS fake per test module (starting uvicorn with TLS costs ~0.5 s)."""
    server = FakeSalesforce().start()
    yield server
    server.stop()


@pytest.fixture
def fake(fake_server: FakeSalesforce, monkeypatch: pytest.MonkeyPatch) -> FakeSalesforce:
    """The fake, emptied, with simple-salesforce (requests) trusting its throwaway CA."""
    fake_server.reset()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", fake_server.ca_bundle)
    return fake_server
