"""The CRM-neutral shapes that cross between core and connectors.

Inbound: a connector turns a vendor payload into `InboundEvent`s. Outbound: the outbox hands
a connector `Activity`s and gets one `PushResult` per item back.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

ActivityKind = Literal["sent", "opened", "clicked", "bounced", "unsubscribed"]
EventKind = Literal["form_submission", "page_view", "record_change", "created", "deleted", "merged"]


@dataclass
class InboundEvent:
    """One CRM event, as the trigger rules see it.

    `fields` holds the record's properties known from the payload (may lack the NPI);
    `changed` the fields this event changed, with their new values (record_change only);
    `form_id` / `url` are set for form submissions and page views.
    """

    source: str
    event_key: str
    event: EventKind
    object_type: str
    object_id: str
    fields: dict[str, Any] = field(default_factory=dict)
    changed: dict[str, Any] = field(default_factory=dict)
    form_id: str | None = None
    url: str | None = None
    occurred_at: datetime | None = None
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class Activity:
    """One engagement fact to write on a CRM record's timeline."""

    id: int
    crm: str
    kind: ActivityKind
    npi: str
    campaign_id: str
    subject: str
    message_id: str
    occurred_at: datetime
    object_type: str | None = None
    object_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    """Stable and unique across installations (message id, kind, link): what a connector
    marks the CRM record with, so a retry can find what an earlier try already wrote."""
    claim: int = 0
    """Which take of the outbox row this is (1 for the first call to the CRM)."""
    verify: bool = False
    """An earlier call may have written this activity (its answer was lost, it failed with a
    5xx, or its pusher died): the connector looks it up before creating it again."""
    lease_until: datetime | None = None
    """When another pusher may take this activity: a connector starts no CRM call for it
    that could still be running then."""

    @property
    def reference(self) -> str:
        """The activity's mark on the CRM record: the same on every try, different for every
        activity of every installation (it hashes the outbox key: message id, kind, link)."""
        key = self.key or f"{self.message_id}:{self.kind}:{self.id}"
        return "te" + hashlib.sha256(key.encode()).hexdigest()[:14]


@dataclass
class PushResult:
    """What the CRM said about one activity. `ok` removes it from the outbox; `permanent`
    dead-letters it at once; otherwise it is retried, not before `retry_after` seconds."""

    activity_id: int
    ok: bool
    error: str | None = None
    permanent: bool = False
    retry_after: float | None = None
