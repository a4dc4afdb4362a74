"""A fake Salesforce org over real HTTPS, for driving simple-salesforce end to end.

It serves the documented REST contract the connector uses:

* `POST /services/oauth2/token`: client credentials (`client_id`/`client_secret` in the form
  or HTTP Basic) and JWT bearer (`assertion`, checked against the connected app's public
  key) → `{"access_token", "instance_url", "id", "token_type", "issued_at", "signature"}`;
  errors as `{"error", "error_description"}` with 400.
* `GET /services/data/vXX.X/sobjects/{Object}/{id}` → the record with `attributes`, or 404
  `[{"errorCode": "NOT_FOUND", "message": ...}]`.
* `POST /services/data/vXX.X/composite/sobjects` → one SaveResult per record, in order.

Every data call answers `Sforce-Limit-Info: api-usage=<used>/<limit>` and is refused with
`401 [{"errorCode": "INVALID_SESSION_ID", ...}]` unless it carries a token this fake issued.
Knobs: `expire_sessions()`, `fail_next(...)` / `limit_exceeded()`, `fail_who_ids`.

TLS comes from a throwaway `trustme` CA; point `REQUESTS_CA_BUNDLE` at `ca_bundle`.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import secrets
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
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
        self._fail_next: list[FailNext] = []
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

    def calls(self, path_part: str, method: str | None = None) -> list[RecordedRequest]:
        return [r for r in self.requests if path_part in r.path and (method is None or r.method == method)]

    # -- the app ---------------------------------------------------------------------------

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/services/oauth2/token", self._token, methods=["POST"]),
                Route("/services/data/v{version}/sobjects/{object_type}/{record_id}", self._get_record, methods=["GET"]),
                Route("/services/data/v{version}/composite/sobjects", self._create_collection, methods=["POST"]),
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
        recorded = await self._record(request)
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        try:
            body = recorded.json()
            records = body["records"]
            assert isinstance(records, list)
        except (ValueError, KeyError, AssertionError):
            return JSONResponse(
                [{"message": "Json Deserialization failed on token 'null'", "errorCode": "JSON_PARSER_ERROR"}],
                status_code=400,
                headers=self._usage(),
            )
        if len(records) > 200:
            return JSONResponse(
                [{"message": "Maximum number of records exceeded: 200", "errorCode": "EXCEEDED_ID_LIMIT"}],
                status_code=400,
                headers=self._usage(),
            )
        results = []
        for record in records:
            object_type = (record.get("attributes") or {}).get("type")
            who_id = record.get("WhoId")
            if not object_type:
                results.append(self._save_error("INVALID_TYPE", "sObject type not specified", []))
            elif who_id in self.fail_who_ids:
                code, message = self.fail_who_ids[who_id]
                results.append(self._save_error(code, message, ["WhoId"]))
            else:
                record_id = f"00T5g{next(self._ids):010d}AAA"
                self.created.append({"Id": record_id, **record})
                results.append({"id": record_id, "success": True, "errors": []})
        return JSONResponse(results, headers=self._usage())

    @staticmethod
    def _save_error(code: str, message: str, fields: list[str]) -> dict[str, Any]:
        return {"success": False, "errors": [{"statusCode": code, "message": message, "fields": fields}]}


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
