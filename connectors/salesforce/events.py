"""JSON events from Salesforce Flow, Apex or a Platform Event relay
(`POST /webhooks/salesforce/events`).

Body: one event object or a JSON array of 1–100 of them::

    {"object": "Contact", "id": "0035g00000XXXXXAAA", "event": "record_change",
     "fields": {"NPI__c": "1234567893", "Interest__c": "Asthma"},
     "changed": {"Interest__c": "Asthma"},            # optional; defaults to fields
     "occurred_at": "2026-01-05T09:00:00Z",           # optional, ISO 8601
     "event_id": "a0B5g000001abcdEAA",                # optional; dedupe key
     "form_id": "...", "url": "..."}                  # optional

`event` is one of record_change, form_submission, page_view, created. Without `event_id` the
dedupe key is the SHA-256 of the item's canonical JSON, so a retried identical item is
recognised.

Authentication, either of:

* `Authorization: Bearer <crm.salesforce.events_secret>` (a Named Credential with a custom
  header is enough);
* an HMAC-SHA256 signature, for relays that can sign but should not send the secret:
  `X-Trigger-Email-Timestamp: <unix seconds>` and
  `X-Trigger-Email-Signature: <hex>` or `sha256=<hex>`, where the MAC is computed with the
  secret over `<timestamp> + "." + <raw body>`. The timestamp must be within 5 minutes of the
  server's clock, so a captured request cannot be replayed later. In Apex::

      String ts = String.valueOf(Datetime.now().getTime() / 1000);
      Blob mac = Crypto.generateMac('hmacSHA256', Blob.valueOf(ts + '.' + body), Blob.valueOf(secret));
      req.setHeader('X-Trigger-Email-Timestamp', ts);
      req.setHeader('X-Trigger-Email-Signature', 'sha256=' + EncodingUtil.convertToHex(mac));
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timezone
from typing import Any, Mapping, cast

from connectors.base import WebhookRejected
from connectors.salesforce.ids import is_object_name, is_record_id
from core.activities import EventKind, InboundEvent

TIMESTAMP_HEADER = "x-trigger-email-timestamp"
SIGNATURE_HEADER = "x-trigger-email-signature"
SIGNATURE_WINDOW_SECONDS = 300
MAX_EVENTS = 100
EVENT_KINDS: frozenset[str] = frozenset({"record_change", "form_submission", "page_view", "created"})



def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """The hex signature a sender puts in `X-Trigger-Email-Signature`."""
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_events_request(headers: Mapping[str, str], body: bytes, secret: str | None, now: datetime) -> None:
    """Raise WebhookRejected(401) unless the request carries the bearer secret or a fresh,
    valid signature."""
    if not secret:
        raise WebhookRejected(401, "crm.salesforce.events_secret is not configured; events are refused")
    authorization = headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        if hmac.compare_digest(authorization[7:].strip().encode(), secret.encode()):
            return
        raise WebhookRejected(401, "wrong bearer token")
    timestamp, signature = headers.get(TIMESTAMP_HEADER), headers.get(SIGNATURE_HEADER)
    if not timestamp or not signature:
        raise WebhookRejected(401, "missing Authorization bearer token or X-Trigger-Email-Signature")
    try:
        sent_at = int(timestamp.strip())
    except ValueError:
        raise WebhookRejected(401, "X-Trigger-Email-Timestamp: expected unix seconds") from None
    if abs(now.timestamp() - sent_at) > SIGNATURE_WINDOW_SECONDS:
        raise WebhookRejected(401, "signature timestamp outside the 5-minute window")
    given = signature.strip().lower().removeprefix("sha256=")
    if not hmac.compare_digest(given.encode(), sign(secret, sent_at, body).encode()):
        raise WebhookRejected(401, "wrong signature")


def parse_events(body: bytes, source: str = "salesforce") -> list[InboundEvent]:
    """Turn the JSON body into events; raise WebhookRejected(400) naming the bad field."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise WebhookRejected(400, f"body: not valid JSON ({exc})") from None
    if isinstance(data, list):
        if not 1 <= len(data) <= MAX_EVENTS:
            raise WebhookRejected(400, f"body: expected 1 to {MAX_EVENTS} events, got {len(data)}")
        return [_event(item, f"[{index}].", source) for index, item in enumerate(data)]
    return [_event(data, "", source)]


def _event(item: Any, path: str, source: str) -> InboundEvent:
    if not isinstance(item, dict):
        raise WebhookRejected(400, f"{path.rstrip('.') or 'body'}: expected an object")

    def bad(name: str, expected: str) -> WebhookRejected:
        return WebhookRejected(400, f"{path}{name}: {expected}")

    object_type = item.get("object")
    if not is_object_name(object_type):
        raise bad("object", "expected an object API name like 'Contact'")
    object_id = item.get("id")
    if not is_record_id(object_id):
        raise bad("id", "expected a 15- or 18-character Salesforce Id")
    kind = item.get("event")
    if kind not in EVENT_KINDS:
        raise bad("event", f"expected one of {', '.join(sorted(EVENT_KINDS))}")
    fields = item.get("fields", {})
    if not isinstance(fields, dict):
        raise bad("fields", "expected an object")
    changed = item.get("changed")
    if changed is not None and not isinstance(changed, dict):
        raise bad("changed", "expected an object")
    if changed is None:
        changed = dict(fields) if kind == "record_change" else {}
    optional: dict[str, str | None] = {}
    for name in ("event_id", "form_id", "url", "occurred_at"):
        value = item.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            raise bad(name, "expected a non-empty string")
        optional[name] = value
    return InboundEvent(
        source=source,
        event_key=optional["event_id"] or _canonical_hash(item),
        event=cast(EventKind, kind),
        object_type=object_type,
        object_id=object_id,
        fields=dict(fields),
        changed=dict(changed),
        form_id=optional["form_id"],
        url=optional["url"],
        occurred_at=_timestamp(optional["occurred_at"], path),
        payload=item,
    )


def _canonical_hash(item: dict[str, Any]) -> str:
    canonical = json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _timestamp(value: str | None, path: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise WebhookRejected(400, f"{path}occurred_at: expected an ISO 8601 timestamp") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
