"""The Salesforce API session: how we log in, re-login, and read the org's API budget.

Three ways in, from `crm.salesforce`:

* `instance_url` + `access_token`: a token obtained elsewhere, used as is;
* `client_id` + `client_secret`: OAuth 2.0 client credentials flow;
* `client_id` + `username` + `private_key_file`: OAuth 2.0 JWT bearer flow.

The token request goes to `<login_url>/services/oauth2/token`. simple-salesforce's own login
only knows `https://<domain>.salesforce.com`, so it cannot reach a My Domain behind a proxy, a
sandbox alias or a local test server with a port; the token call is therefore made here with
the same `requests` session, and simple-salesforce is used for every API call after it.

Salesforce expires sessions on its own schedule (timeout policy, admin revocation). A call
answered `401 INVALID_SESSION_ID` logs in again once and is retried once; a second failure is
reported to the caller. Calls are synchronous (simple-salesforce is built on `requests`); the
connector runs them in a thread.
"""

from __future__ import annotations

import logging
import threading
import time
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Callable, TypeVar

import jwt
import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError

from config.schema import SalesforceConfig
from connectors.base import CrmUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
TIMEOUT_SECONDS = 30.0
_GENERIC_LOGIN_HOSTS = ("https://login.salesforce.com", "https://test.salesforce.com")


class SalesforceCallFailed(CrmUnavailable):
    """A Salesforce call that did not succeed, reduced to what a caller decides on."""

    def __init__(self, status: int | None, error_code: str | None, message: str, retry_after: float | None = None):
        super().__init__(status, error_code, message, retry_after)
        self.status = status
        """HTTP status; None when no response arrived (connection error, timeout)."""
        self.error_code = error_code
        self.message = message
        self.retry_after = retry_after

    def __str__(self) -> str:
        head = f"{self.status} " if self.status else ""
        code = f"{self.error_code}: " if self.error_code else ""
        return f"{head}{code}{self.message}"

    @property
    def rate_limited(self) -> bool:
        """Salesforce says `403 REQUEST_LIMIT_EXCEEDED` when the org's daily API budget or
        concurrency limit is used up; 429 / 503 come from the edge."""
        return self.error_code == "REQUEST_LIMIT_EXCEEDED" or self.status in (429, 503)


class SalesforceLoginFailed(SalesforceCallFailed):
    """The token endpoint refused or could not be reached; a configuration or outage problem,
    never a problem of the request that needed the session."""


class SalesforceClient:
    """One authenticated simple-salesforce session shared by the connector's threads."""

    def __init__(self, config: SalesforceConfig, session: requests.Session | None = None):
        self.config = config
        self.session = session or requests.Session()
        self.api_usage: tuple[int, int] | None = None
        """(used, limit) of the org's daily API requests, from the latest `Sforce-Limit-Info`."""
        self._lock = threading.Lock()
        self._sf: Salesforce | None = None
        self._generation = 0
        self._used_configured_token = False

    # -- calls -----------------------------------------------------------------------------

    def call(self, operation: Callable[[Salesforce, dict[str, Any]], T]) -> T:
        """Run `operation(sf, request_kwargs)`; pass `request_kwargs` on to the simple-salesforce
        method (they carry the timeout and the hook that reads response headers)."""
        sf, generation = self._current()
        try:
            return self._attempt(operation, sf)
        except SalesforceCallFailed as failure:
            if failure.status != 401:
                raise
            log.info("salesforce session rejected (%s); logging in again", failure)
            sf = self._relogin(generation, failure)
            return self._attempt(operation, sf)

    def _attempt(self, operation: Callable[[Salesforce, dict[str, Any]], T], sf: Salesforce) -> T:
        seen: list[requests.Response] = []

        def observe(response: requests.Response, *args: Any, **kwargs: Any) -> None:
            seen.append(response)
            self._note_usage(response)

        request_kwargs: dict[str, Any] = {"timeout": TIMEOUT_SECONDS, "hooks": {"response": [observe]}}
        try:
            return operation(sf, request_kwargs)
        except SalesforceError as exc:
            raise _failure(exc.status, exc.content, seen[-1] if seen else None) from None
        except requests.RequestException as exc:
            raise SalesforceCallFailed(None, None, f"{type(exc).__name__}: {exc}") from None

    def _note_usage(self, response: requests.Response) -> None:
        header = response.headers.get("Sforce-Limit-Info")
        if header:
            usage = Salesforce.parse_api_usage(header).get("api-usage")
            if usage is not None:
                self.api_usage = (usage.used, usage.total)

    # -- sessions --------------------------------------------------------------------------

    def _current(self) -> tuple[Salesforce, int]:
        with self._lock:
            if self._sf is None:
                self._sf = self._login()
                self._generation += 1
            return self._sf, self._generation

    def _relogin(self, stale_generation: int, failure: SalesforceCallFailed) -> Salesforce:
        """Log in again unless another thread already did since `stale_generation`."""
        with self._lock:
            if self._generation == stale_generation or self._sf is None:
                if not self._can_login():
                    raise SalesforceCallFailed(
                        401, failure.error_code, f"{failure.message}; no OAuth credentials configured to log in again"
                    )
                self._sf = self._login(fresh=True)
                self._generation += 1
            return self._sf

    def _can_login(self) -> bool:
        cfg = self.config
        return bool(cfg.client_id and (cfg.client_secret or (cfg.username and cfg.private_key_file)))

    def _login(self, fresh: bool = False) -> Salesforce:
        cfg = self.config
        if cfg.access_token and cfg.instance_url and not fresh and not self._used_configured_token:
            self._used_configured_token = True
            return self._client(cfg.access_token, cfg.instance_url)
        if not self._can_login():
            raise SalesforceLoginFailed(
                None,
                "INVALID_AUTH",
                "crm.salesforce needs instance_url + access_token, client_id + client_secret, "
                "or client_id + username + private_key_file",
            )
        token, instance_url = self._request_token()
        return self._client(token, instance_url)

    def _client(self, token: str, instance_url: str) -> Salesforce:
        return Salesforce(
            session_id=token, instance_url=instance_url, version=self.config.api_version, session=self.session
        )

    def _request_token(self) -> tuple[str, str]:
        cfg = self.config
        login_url = cfg.login_url.rstrip("/")
        if cfg.username and cfg.private_key_file:
            data = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": self._assertion(login_url)}
        else:
            # The client credentials flow is only served on the org's My Domain, not on the
            # generic login hosts.
            if login_url in _GENERIC_LOGIN_HOSTS and cfg.instance_url:
                login_url = cfg.instance_url.rstrip("/")
            data = {"grant_type": "client_credentials", "client_id": cfg.client_id, "client_secret": cfg.client_secret}
        try:
            response = self.session.post(f"{login_url}/services/oauth2/token", data=data, timeout=TIMEOUT_SECONDS)
        except requests.RequestException as exc:
            raise SalesforceLoginFailed(None, "INVALID_AUTH", f"token request failed: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or not isinstance(body, dict) or not body.get("access_token"):
            error = body.get("error") if isinstance(body, dict) else None
            description = body.get("error_description") if isinstance(body, dict) else None
            raise SalesforceLoginFailed(
                response.status_code, "INVALID_AUTH", f"token request refused: {error or ''} {description or ''}".strip()
            )
        instance_url = body.get("instance_url") or cfg.instance_url
        if not instance_url:
            raise SalesforceLoginFailed(response.status_code, "INVALID_AUTH", "token response lacks instance_url")
        return str(body["access_token"]), str(instance_url)

    def _assertion(self, audience: str) -> str:
        """A JWT signed with the connected app's key. `exp` uses the real time, not the
        service clock: Salesforce checks it against its own."""
        cfg = self.config
        key = Path(cfg.private_key_file or "").read_bytes()
        claims = {"iss": cfg.client_id, "sub": cfg.username, "aud": audience, "exp": int(time.time()) + 180}
        return jwt.encode(claims, key, algorithm="RS256")


def _failure(status: int, content: Any, response: requests.Response | None) -> SalesforceCallFailed:
    """Salesforce REST errors are `[{"message": ..., "errorCode": ...}]`."""
    error_code: str | None = None
    message = str(content)[:500]
    if isinstance(content, list) and content and isinstance(content[0], dict):
        error_code = content[0].get("errorCode")
        message = str(content[0].get("message", message))
    elif isinstance(content, dict):
        error_code = content.get("errorCode")
        message = str(content.get("message", message))
    retry_after = _retry_after(response.headers.get("Retry-After")) if response is not None else None
    return SalesforceCallFailed(status, error_code, message, retry_after)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
