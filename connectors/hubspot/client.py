"""The HubSpot SDK client as this connector uses it, and how its errors are read.

The SDK is synchronous (urllib3), so every call runs in a worker thread. Its own retries
are limited to connection failures: a 429 or 5xx must come back to us, since the outbox
schedules the retry on our clock instead of a thread sleeping on Retry-After.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Mapping

from hubspot import HubSpot
from urllib3.util.retry import Retry

from config.schema import HubSpotConfig
from connectors.base import CrmUnavailable

REQUEST_TIMEOUT = (5.0, 30.0)
"""(connect, read) seconds for one API call."""

DEFAULT_RETRY_AFTER = 10.0
"""Seconds to wait after a 429 that names no Retry-After."""


class HubSpotApiError(CrmUnavailable):
    """A HubSpot API call failed. `status` is the HTTP status (0: no response);
    `retry_after` is set for rate limits."""

    def __init__(self, status: int, message: str, *, retry_after: float | None = None):
        super().__init__(f"HubSpot API {status or 'unreachable'}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after


def build_client(config: HubSpotConfig) -> HubSpot:
    """An SDK client whose every API talks to `config.base_url`: the SDK copies each key of
    its config onto every generated `Configuration`, and `host` is one of them."""
    retry = Retry(
        total=2, connect=2, read=0, redirect=0, status=0, other=0,
        respect_retry_after_header=False, raise_on_status=False,
    )
    return HubSpot(access_token=config.access_token, retry=retry, host=config.base_url.rstrip("/"))


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of an SDK `ApiException` (every generated package has its own class,
    so they are recognised by shape), or None for anything else."""
    status = getattr(exc, "status", None)
    if status is None or not hasattr(exc, "headers") or not hasattr(exc, "body"):
        return None
    try:
        return int(status)
    except (TypeError, ValueError):
        return None


def error_message(exc: BaseException) -> str:
    """HubSpot's own `message` from an error body, else the exception's reason."""
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str) and body:
        try:
            decoded = json.loads(body)
        except ValueError:
            return body[:500]
        if isinstance(decoded, dict) and decoded.get("message"):
            return str(decoded["message"])
    return str(getattr(exc, "reason", None) or exc.__class__.__name__)


def retry_after(headers: Mapping[str, Any] | None, now: datetime) -> float:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), else the default."""
    value = None
    for name, header in (headers or {}).items():
        if str(name).lower() == "retry-after":
            value = str(header).strip()
            break
    if not value:
        return DEFAULT_RETRY_AFTER
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return DEFAULT_RETRY_AFTER
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, (moment - now).total_seconds())
