"""Turn HubSpot webhook bodies into `InboundEvent`s.

Two senders post to `/webhooks/hubspot`:

* the Webhooks API (an app's subscriptions): a JSON array of up to 100 events, each with
  `eventId`, `subscriptionType` (`contact.propertyChange`, `contact.creation`, …), `objectId`,
  `occurredAt` (epoch ms) and, for property changes, `propertyName` / `propertyValue`;
* a workflow's "Send a webhook" action: one JSON object per enrolled contact. Depending on
  how the admin set the action up it is the contact record (`objectId` + `properties`, each
  property either a plain value or `{"value": …, "versions": […]}`), the legacy contact
  format (`vid`, `canonical-vid`, `properties.<name>.value`, `form-submissions`), or a
  customised body of chosen key/value pairs.

A Webhooks API event's key is `portalId:subscriptionId:eventId`: HubSpot documents that
`eventId` alone is not guaranteed unique (two subscriptions, or two accounts installing the
app, can repeat one). An event lacking any of the three is keyed by the SHA-256 of the event
itself, less `attemptNumber` (which a retry increments). Workflow bodies carry no event id, so
their key is the SHA-256 of the raw body: a retry of the same delivery is recognised, a new
enrolment is not mistaken for it.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any, Iterable, cast

from connectors.base import WebhookRejected
from core.activities import EventKind, InboundEvent

SOURCE = "hubspot"
MAX_EVENTS = 100
"""HubSpot sends at most 100 events per Webhooks API request."""

OBJECT_TYPE = "contact"

_SUBSCRIPTIONS: dict[str, EventKind] = {
    "propertyChange": "record_change",
    "creation": "created",
    "deletion": "deleted",
    "privacyDeletion": "deleted",
    "merge": "merged",
}
_CONTACT_OBJECT_TYPE_ID = "0-1"
"""Generic (`object.*`) subscriptions name the object type by id; contacts are 0-1."""

_ID_KEYS = ("canonical-vid", "vid", "objectId", "hs_object_id", "contact_id", "contactId", "id")
_FORM_KEYS = ("form_id", "formId", "form-id", "form_guid", "formGuid")
_URL_KEYS = ("page_url", "pageUrl", "page-url", "url")
_EVENT_KEYS = ("event", "event_type", "eventType")
_WORKFLOW_EVENTS: frozenset[str] = frozenset({"form_submission", "page_view", "record_change", "created"})
_PORTAL_KEYS = ("portalId", "portal-id", "portal_id")


def load_json(body: bytes) -> Any:
    """The decoded body, or `WebhookRejected(400)` naming what is wrong with it."""
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise WebhookRejected(400, f"body is not valid JSON: {exc}") from None


def portal_ids(data: Any) -> set[int]:
    """Every HubSpot account id the body names (events of an array, or a workflow body)."""
    items: Iterable[Any] = data if isinstance(data, list) else [data]
    found: set[int] = set()
    for item in items:
        if not isinstance(item, dict):
            continue
        for key in _PORTAL_KEYS:
            value = item.get(key)
            if value is not None:
                try:
                    found.add(int(value))
                except (TypeError, ValueError):
                    raise WebhookRejected(400, f"{key} is not a number: {value!r}") from None
    return found


def parse_payload(data: Any, body: bytes, *, now: datetime) -> list[InboundEvent]:
    """All contact events in `data` (the decoded `body`); `now` dates workflow bodies that
    carry no time of their own."""
    if isinstance(data, list):
        return parse_webhook_events(data)
    if isinstance(data, dict):
        return [parse_workflow_body(data, body, now=now)]
    raise WebhookRejected(400, "expected a JSON array of webhook events or a workflow JSON object")


def parse_webhook_events(events: list[Any]) -> list[InboundEvent]:
    """Webhooks API deliveries. Events of other objects or subscription types are skipped:
    they are acknowledged so HubSpot does not retry them, and nothing triggers on them."""
    if len(events) > MAX_EVENTS:
        raise WebhookRejected(400, f"at most {MAX_EVENTS} events per request, got {len(events)}")
    parsed: list[InboundEvent] = []
    for index, raw in enumerate(events):
        if not isinstance(raw, dict):
            raise WebhookRejected(400, f"[{index}]: expected an event object")
        for key in ("subscriptionType", "objectId"):
            if raw.get(key) in (None, ""):
                raise WebhookRejected(400, f"[{index}].{key}: required")
        event = _webhook_event(raw, index)
        if event is not None:
            parsed.append(event)
    return parsed


def _webhook_event(raw: dict[str, Any], index: int) -> InboundEvent | None:
    subscription = str(raw["subscriptionType"])
    object_name, _, action = subscription.partition(".")
    if object_name == "object":
        if str(raw.get("objectTypeId", "")) != _CONTACT_OBJECT_TYPE_ID:
            return None
    elif object_name != OBJECT_TYPE:
        return None
    kind = _SUBSCRIPTIONS.get(action)
    if kind is None:
        return None
    fields: dict[str, Any] = {}
    changed: dict[str, Any] = {}
    if kind == "record_change":
        name = raw.get("propertyName")
        if not name:
            raise WebhookRejected(400, f"[{index}].propertyName: required for {subscription}")
        fields = {str(name): raw.get("propertyValue")}
        changed = dict(fields)
    return InboundEvent(
        source=SOURCE,
        event_key=webhook_event_key(raw),
        event=kind,
        object_type=OBJECT_TYPE,
        object_id=str(raw["objectId"]),
        fields=fields,
        changed=changed,
        occurred_at=_from_millis(raw.get("occurredAt"), f"[{index}].occurredAt"),
        payload=raw,
    )


def webhook_event_key(raw: dict[str, Any]) -> str:
    """`portalId:subscriptionId:eventId`, or `sha256:<hash of the event less attemptNumber>`
    when one of them is missing."""
    parts = [raw.get(name) for name in ("portalId", "subscriptionId", "eventId")]
    if all(part not in (None, "") for part in parts):
        return ":".join(str(part) for part in parts)
    stable = {key: value for key, value in raw.items() if key != "attemptNumber"}
    canonical = json.dumps(stable, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def parse_workflow_body(data: dict[str, Any], body: bytes, *, now: datetime) -> InboundEvent:
    """One workflow "Send a webhook" body: default, legacy or customised."""
    properties = data.get("properties")
    if properties is not None and not isinstance(properties, dict):
        raise WebhookRejected(400, "properties: expected an object")
    fields = _flatten(properties) if properties is not None else _scalars(data)
    object_id = _first(data, _ID_KEYS) or fields.get("hs_object_id") or fields.get("vid")
    if object_id in (None, ""):
        raise WebhookRejected(400, f"no contact id: expected one of {', '.join(_ID_KEYS)}")

    explicit = _first(data, _EVENT_KEYS)
    if explicit is not None and explicit not in _WORKFLOW_EVENTS:
        raise WebhookRejected(400, f"event: expected one of {', '.join(sorted(_WORKFLOW_EVENTS))}, got {explicit!r}")
    submission = _latest_submission(data.get("form-submissions"))
    form_id = _first(data, _FORM_KEYS)
    url = _first(data, _URL_KEYS)
    occurred_at = _from_millis(_first(data, ("occurredAt", "timestamp")), "timestamp") or now
    if submission is not None and form_id is None:
        form_id = submission.get("form-id")
        url = url or submission.get("page-url")
        occurred_at = _from_millis(submission.get("timestamp"), "form-submissions[].timestamp") or occurred_at

    kind: EventKind
    if explicit is not None:
        kind = cast(EventKind, explicit)
    elif form_id is not None:
        kind = "form_submission"
    elif url is not None:
        kind = "page_view"
    else:
        kind = "record_change"
    if kind in ("record_change", "created"):
        form_id = url = None
    return InboundEvent(
        source=SOURCE,
        event_key=hashlib.sha256(body).hexdigest(),
        event=kind,
        object_type=OBJECT_TYPE,
        object_id=str(object_id),
        fields=fields,
        changed=dict(fields) if kind == "record_change" else {},
        form_id=str(form_id) if form_id is not None else None,
        url=str(url) if url is not None else None,
        occurred_at=occurred_at,
        payload=data,
    )


def _flatten(properties: dict[str, Any]) -> dict[str, Any]:
    """`{"npi": {"value": "1234567893", "versions": [...]}}` and `{"npi": "1234567893"}` both
    become `{"npi": "1234567893"}`."""
    flat: dict[str, Any] = {}
    for name, value in properties.items():
        if isinstance(value, dict):
            if "value" in value:
                flat[name] = value["value"]
        elif not isinstance(value, list):
            flat[name] = value
    return flat


def _scalars(data: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in data.items() if not isinstance(value, (dict, list))}


def _first(data: dict[str, Any], keys: Iterable[str]) -> Any:
    for key in keys:
        value = data.get(key)
        if value not in (None, ""):
            return value
    return None


def _latest_submission(submissions: Any) -> dict[str, Any] | None:
    if not isinstance(submissions, list):
        return None
    candidates = [item for item in submissions if isinstance(item, dict) and item.get("form-id")]
    if not candidates:
        return None
    return max(candidates, key=lambda item: _millis_or_zero(item.get("timestamp")))


def _millis_or_zero(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _from_millis(value: Any, where: str) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        return datetime.fromtimestamp(int(value) / 1000, tz=timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        raise WebhookRejected(400, f"{where}: expected epoch milliseconds, got {value!r}") from None
