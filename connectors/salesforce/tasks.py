"""Engagement activities as completed Salesforce Tasks, written with sObject Collections.

A Task on the Contact or Lead (`WhoId`) is what a sales rep sees in the record's activity
timeline; `TaskSubtype = Email` gives it the email icon. `POST composite/sobjects` creates
up to 200 records per call and, with `allOrNone: false`, reports each record on its own, so
one bad record does not hold back the rest.
"""

from __future__ import annotations

from datetime import timezone
from typing import Any

from core.activities import Activity, PushResult

COLLECTION_LIMIT = 200
SUBJECT_MAX = 255
DESCRIPTION_MAX = 32000

_SUBJECT_PREFIX = {
    "sent": "Email sent: ",
    "opened": "Email opened: ",
    "clicked": "Email clicked: ",
    "bounced": "Email bounced: ",
    "unsubscribed": "Unsubscribed: ",
}
_WHO_TYPES = {"Contact", "Lead"}
_WHO_PREFIXES = ("003", "00Q")
"""Key prefixes of Contact and Lead Ids, for activities that carry no object type."""
TRANSIENT_RECORD_ERRORS = frozenset({"UNABLE_TO_LOCK_ROW"})
"""Per-record failures that succeed when tried again later; any other one will not."""


def link_field(activity: Activity) -> str:
    """`WhoId` for Contacts and Leads, `WhatId` for any other record (an Account, a custom object)."""
    assert activity.object_id, "activities without a record are rejected before this"
    is_who = activity.object_type in _WHO_TYPES or (
        activity.object_type is None and activity.object_id.startswith(_WHO_PREFIXES)
    )
    return "WhoId" if is_who else "WhatId"


def activity_date(activity: Activity) -> str:
    occurred = activity.occurred_at
    if occurred.tzinfo is not None:
        occurred = occurred.astimezone(timezone.utc)
    return occurred.date().isoformat()


def task_record(activity: Activity, id_field: str | None = None) -> dict[str, Any]:
    """The Task for one activity, linked by `link_field`; its Description ends with the
    activity's reference (and `id_field`, an External ID field, holds it when configured)."""
    assert activity.object_id, "activities without a record are rejected before this"
    ref = f"\nRef: {activity.reference}"
    record = {
        "attributes": {"type": "Task"},
        link_field(activity): activity.object_id,
        "Subject": _clip(_SUBJECT_PREFIX.get(activity.kind, f"Email {activity.kind}: ") + activity.subject, SUBJECT_MAX),
        "Status": "Completed",
        "TaskSubtype": "Email",
        "ActivityDate": activity_date(activity),
        "Description": _clip(description(activity), DESCRIPTION_MAX - len(ref)) + ref,
    }
    if id_field:
        record[id_field] = activity.reference
    return record


def description(activity: Activity) -> str:
    details = dict(activity.details)
    lines = [f"Campaign: {activity.campaign_id}", f"Subject: {activity.subject}"]
    labelled = (("to", "To"), ("open_count", "Opens"), ("click_count", "Clicks"), ("link", "Link"), ("url", "Link"), ("reason", "Reason"))
    for key, label in labelled:
        value = details.pop(key, None)
        if value not in (None, ""):
            lines.append(f"{label}: {value}")
    lines += [f"{key}: {value}" for key, value in sorted(details.items()) if value not in (None, "")]
    lines += [
        f"When: {activity.occurred_at.isoformat()}",
        f"NPI: {activity.npi}",
        f"Message-ID: {activity.message_id}",
    ]
    return "\n".join(lines)


def record_result(activity: Activity, result: Any) -> PushResult:
    """One SaveResult (`{"id", "success", "errors": [{"statusCode", "message", "fields"}]}`)."""
    if isinstance(result, dict) and result.get("success") is True:
        return PushResult(activity.id, ok=True)
    errors = result.get("errors") if isinstance(result, dict) else None
    errors = errors if isinstance(errors, list) and errors else [{"statusCode": "UNKNOWN", "message": repr(result)[:200]}]
    codes = {str(error.get("statusCode")) for error in errors if isinstance(error, dict)}
    text = "; ".join(_error_text(error) for error in errors if isinstance(error, dict))
    transient = bool(codes) and codes <= TRANSIENT_RECORD_ERRORS
    return PushResult(activity.id, ok=False, error=text, permanent=not transient)


def _error_text(error: dict[str, Any]) -> str:
    fields = error.get("fields") or []
    where = f" ({', '.join(map(str, fields))})" if fields else ""
    return f"{error.get('statusCode')}: {error.get('message')}{where}"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
