"""POST activity batches to any URL.

The body is `{"type": "activities", "data": [activity, …]}`. The receiver answers 2xx to
accept the whole batch, or 2xx with `{"results": [{"id": 1, "ok": false, "error": "…"}]}` to
refuse single items; 408, 425, 429 and 5xx are retried (honouring `Retry-After`), other 4xx
dead-letter the batch. Every request is signed with the Standard Webhooks scheme when
`crm.webhook.secret` is set, and a retried batch keeps its `webhook-id`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

import httpx

from connectors.base import Connector, register
from core.activities import Activity, PushResult
from core.clock import iso


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks v1: base64 HMAC-SHA256 of `id.timestamp.body`, keyed by the
    base64-decoded part of a `whsec_…` secret (or the raw secret otherwise)."""
    key = base64.b64decode(secret[len("whsec_"):]) if secret.startswith("whsec_") else secret.encode()
    digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def retry_after_seconds(value: str | None, default: float, now: datetime) -> float:
    """`Retry-After` as seconds from `now`: either delay-seconds or an HTTP-date (RFC 9110)."""
    if not value:
        return default
    try:
        return max(float(value), 0.0)
    except ValueError:
        try:
            return max((parsedate_to_datetime(value) - now).total_seconds(), 0.0)
        except (TypeError, ValueError):
            return default


def delivery_id(batch: list[Activity]) -> str:
    """The `webhook-id` of a batch: the same activities give the same id on every retry, so a
    receiver that saw a batch before (but whose answer was lost) can drop the repeat."""
    digest = hashlib.sha256(",".join(str(activity.id) for activity in batch).encode()).hexdigest()
    return f"msg_{digest[:32]}"


def activity_json(activity: Activity) -> dict[str, Any]:
    return {
        "id": activity.id,
        "kind": activity.kind,
        "npi": activity.npi,
        "campaign_id": activity.campaign_id,
        "subject": activity.subject,
        "message_id": activity.message_id,
        "occurred_at": iso(activity.occurred_at),
        "object_type": activity.object_type,
        "object_id": activity.object_id,
        "details": activity.details,
    }


@register
class WebhookConnector(Connector):
    name: ClassVar[str] = "webhook"

    @property
    def batch_size(self) -> int:  # type: ignore[override]
        assert self.config.crm.webhook is not None
        return self.config.crm.webhook.batch_size

    async def push_activities(self, batch: list[Activity]) -> list[PushResult]:
        settings = self.config.crm.webhook
        assert settings is not None
        body = json.dumps({"type": "activities", "data": [activity_json(a) for a in batch]}).encode()
        message_id = delivery_id(batch)
        now = self.clock.now()
        timestamp = int(now.timestamp())
        headers = {"content-type": "application/json", "webhook-id": message_id, "webhook-timestamp": str(timestamp)}
        if settings.secret:
            headers["webhook-signature"] = sign(settings.secret, message_id, timestamp, body)
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                response = await client.post(settings.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return [PushResult(a.id, ok=False, error=f"{type(exc).__name__}: {exc}") for a in batch]
        if response.status_code in _RETRYABLE or response.status_code >= 500:
            wait = retry_after_seconds(response.headers.get("retry-after"), 30.0 if response.status_code == 429 else 0.0, now)
            error = f"HTTP {response.status_code}"
            return [PushResult(a.id, ok=False, error=error, retry_after=wait or None) for a in batch]
        if response.status_code >= 400:
            error = f"HTTP {response.status_code}: {response.text[:200]}"
            return [PushResult(a.id, ok=False, error=error, permanent=True) for a in batch]
        refused = refused_items(response)
        return [
            PushResult(a.id, ok=False, error=refused[a.id], permanent=True) if a.id in refused else PushResult(a.id, ok=True)
            for a in batch
        ]


_RETRYABLE = {408, 425, 429}
"""Client errors that mean "not now" rather than "never"."""


def refused_items(response: httpx.Response) -> dict[int, str]:
    """Items a 2xx answer refused one by one (`{"results": [{"id", "ok": false, "error"}]}`);
    anything else in the body means the whole batch was accepted."""
    try:
        answer = response.json()
    except ValueError:
        return {}
    refused: dict[int, str] = {}
    items = answer.get("results") if isinstance(answer, dict) else None
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and item.get("ok") is False and isinstance(item.get("id"), int):
            refused[item["id"]] = str(item.get("error") or "refused")
    return refused
