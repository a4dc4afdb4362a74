"""Engagement activities as HubSpot CRM objects.

A sent email becomes an email engagement (`/crm/v3/objects/emails/batch/create`) so it reads
like any logged email on the contact's timeline; opens, clicks, bounces and unsubscribes
become notes (`/crm/v3/objects/notes/batch/create`) a sales rep can read at a glance.

Each input carries `objectWriteTraceId` = the activity id. With it HubSpot answers a batch
with partial failures as 207 Multi-Status, and every result or error names the input it
belongs to, so one bad record does not fail the other 99.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parseaddr
from typing import Any, Iterable, Iterator, Literal

from core.activities import Activity, PushResult

MAX_INPUTS = 100
"""HubSpot's limit on inputs per batch create call."""

ObjectType = Literal["emails", "notes"]

ASSOCIATION_TYPE_IDS: dict[ObjectType, int] = {"emails": 198, "notes": 202}
"""HubSpot-defined association types: email → contact is 198, note → contact is 202."""

_SUBJECT_MAX = 60


@dataclass
class BatchCall:
    """One batch create request and the activities it writes, in input order."""

    object_type: ObjectType
    activities: list[Activity]

    def body(self, sender: str, id_property: str | None = None) -> dict[str, Any]:
        build = email_input if self.object_type == "emails" else note_input
        return {"inputs": [build(activity, sender, id_property) for activity in self.activities]}

    def halves(self) -> tuple["BatchCall", "BatchCall"]:
        middle = len(self.activities) // 2
        return BatchCall(self.object_type, self.activities[:middle]), BatchCall(self.object_type, self.activities[middle:])


def plan_calls(activities: Iterable[Activity]) -> Iterator[BatchCall]:
    """Emails first, then notes, each in calls of at most `MAX_INPUTS`."""
    emails = [activity for activity in activities if activity.kind == "sent"]
    notes = [activity for activity in activities if activity.kind != "sent"]
    for object_type, group in (("emails", emails), ("notes", notes)):
        for start in range(0, len(group), MAX_INPUTS):
            yield BatchCall(object_type, group[start : start + MAX_INPUTS])  # type: ignore[arg-type]


def unpushable(activity: Activity) -> str | None:
    """Why `activity` can never be written to HubSpot, or None."""
    if not activity.object_id:
        return "no HubSpot contact to write to (activity has no object_id)"
    if activity.object_type and activity.object_type.lower() not in ("contact", "contacts"):
        return f"HubSpot activities are written to contacts, not {activity.object_type!r}"
    if activity.kind not in ("sent", "opened", "clicked", "bounced", "unsubscribed"):
        return f"unknown activity kind {activity.kind!r}"
    return None


def reference(activity: Activity) -> str:
    return activity.reference


def body_property(object_type: ObjectType) -> str:
    return "hs_email_text" if object_type == "emails" else "hs_note_body"


def email_input(activity: Activity, sender: str, id_property: str | None = None) -> dict[str, Any]:
    """An email engagement, logged as sent from our sender to the HCP's address."""
    to = activity.details.get("to")
    sender_name, sender_address = parseaddr(sender)
    headers = {
        "from": {"email": sender_address, **({"firstName": sender_name} if sender_name else {})},
        "to": [{"email": to}] if to else [],
        "cc": [],
        "bcc": [],
    }
    text = activity.details.get("text") or (
        f"{activity.subject}\n\nCampaign: {activity.campaign_id}\nMessage-ID: {activity.message_id}"
        + (f"\nTo: {to}" if to else "")
    )
    text += f"\nRef: {reference(activity)}"
    properties = {
        "hs_timestamp": timestamp(activity.occurred_at),
        "hs_email_direction": "EMAIL",
        "hs_email_status": "SENT",
        "hs_email_subject": activity.subject,
        "hs_email_text": text,
        "hs_email_headers": json.dumps(headers),
    }
    if activity.details.get("html"):
        properties["hs_email_html"] = str(activity.details["html"])
    if id_property:
        properties[id_property] = reference(activity)
    return _input(activity, properties, "emails")


def note_input(activity: Activity, sender: str = "", id_property: str | None = None) -> dict[str, Any]:
    properties = {"hs_timestamp": timestamp(activity.occurred_at), "hs_note_body": note_body(activity)}
    if id_property:
        properties[id_property] = reference(activity)
    return _input(activity, properties, "notes")


def note_body(activity: Activity) -> str:
    """One line a sales rep understands without opening anything."""
    details = activity.details
    subject = f"'{short(activity.subject)}'"
    if activity.kind == "opened":
        count = _int(details.get("open_count"))
        text = f"Opened {subject}" + (f" — {count} times" if count > 1 else "")
    elif activity.kind == "clicked":
        link = details.get("link") or details.get("url")
        text = f"Clicked {link} in {subject}" if link else f"Clicked a link in {subject}"
    elif activity.kind == "bounced":
        to = details.get("to")
        reason = details.get("reason")
        text = f"Bounced {subject}" + (f" to {to}" if to else "") + (f" — {reason}" if reason else "")
    else:
        text = f"Unsubscribed via {subject}"
    return html.escape(f"{text} (campaign {activity.campaign_id}, ref {reference(activity)})", quote=False)


def short(subject: str) -> str:
    return subject if len(subject) <= _SUBJECT_MAX else subject[: _SUBJECT_MAX - 1].rstrip() + "…"


def timestamp(moment: datetime) -> str:
    """`hs_timestamp` as UTC ISO 8601 with milliseconds, as HubSpot documents it."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def read_batch_response(call: BatchCall, status: int, data: Any) -> list[PushResult]:
    """One result per activity of `call` from a 201 or 207 answer.

    An input named in `errors` failed for good (HubSpot validated and refused it); one named
    in `results` was created. A plain success (201) created everything. On 207 an input
    named nowhere is retried rather than assumed done or dead.
    """
    by_trace = {str(activity.id): activity for activity in call.activities}
    created = {
        str(trace) for trace in (getattr(item, "object_write_trace_id", None) for item in (getattr(data, "results", None) or []))
        if trace is not None
    }
    failed: dict[str, str] = {}
    for error in getattr(data, "errors", None) or []:
        message = getattr(error, "message", None) or "rejected by HubSpot"
        for trace in _error_traces(error, call):
            failed.setdefault(trace, message)
    results = []
    for trace, activity in by_trace.items():
        if trace in failed:
            results.append(PushResult(activity.id, ok=False, error=failed[trace], permanent=True))
        elif trace in created or status != 207:
            results.append(PushResult(activity.id, ok=True))
        else:
            results.append(PushResult(activity.id, ok=False, error="HubSpot did not confirm this input"))
    return results


def _error_traces(error: Any, call: BatchCall) -> list[str]:
    context = getattr(error, "context", None) or {}
    traces = [str(trace) for trace in context.get("objectWriteTraceId", []) or []]
    for index in context.get("index", []) or []:
        position = _int(index, default=-1)
        if 0 <= position < len(call.activities):
            traces.append(str(call.activities[position].id))
    return traces


def _input(activity: Activity, properties: dict[str, str], object_type: ObjectType) -> dict[str, Any]:
    return {
        "properties": properties,
        "associations": [
            {
                "to": {"id": str(activity.object_id)},
                "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": ASSOCIATION_TYPE_IDS[object_type]}],
            }
        ],
        "objectWriteTraceId": str(activity.id),
    }


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
