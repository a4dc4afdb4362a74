"""The Salesforce connector: Outbound Messages and JSON events in, Tasks out."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from config import Config, Settings
from config.schema import SalesforceConfig
from connectors.base import (
    Connector,
    ContactInfo,
    InboundRequest,
    WebhookRejected,
    lease_expired,
    lease_running_out,
    register,
)
from connectors.salesforce import events, soap
from connectors.salesforce.client import SalesforceCallFailed, SalesforceClient, SalesforceLoginFailed
from connectors.salesforce.ids import is_object_name, is_record_id
from connectors.salesforce.tasks import COLLECTION_LIMIT, activity_date, link_field, record_result, task_record
from core.activities import Activity, InboundEvent, PushResult
from core.clock import Clock

RequestKind = Literal["soap", "events"]
DEFAULT_RETRY_AFTER = 60.0
QUERY_IDS = 200
"""Activities looked up per SOQL query (their record ids go in an IN list)."""
_CACHE_MAX = 2048


ROUTE_KINDS: dict[str, RequestKind] = {"/webhooks/salesforce/outbound": "soap", "/webhooks/salesforce/events": "events"}
"""Each route takes one kind of body. Deciding by the body would let an XML body posted to
the events route skip the bearer / HMAC check (Outbound Messages carry no secret) and a JSON
body posted to the outbound route be answered with an Ack for something Salesforce never sent."""
_JSON_MEDIA = ("application/json",)
_XML_MEDIA = ("text/xml", "application/xml", "application/soap+xml")


def request_kind(request: InboundRequest) -> RequestKind:
    """`soap` for an Outbound Message, `events` for JSON from Flow / Apex. The route called
    decides; a request to any other path (a direct call, a test) goes by its body, then by its
    Content-Type. The route answers a `soap` request with `soap_ack()` (text/xml) once the
    events are stored."""
    path = urlsplit(request.public_url).path.rstrip("/")
    for route, kind in ROUTE_KINDS.items():
        if path.endswith(route):
            return kind
    return _body_kind(request.body) or _declared_kind(request) or "events"


def _body_kind(body: bytes) -> RequestKind | None:
    first = body.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if first == b"<":
        return "soap"
    if first in (b"{", b"["):
        return "events"
    return None


def _declared_kind(request: InboundRequest) -> RequestKind | None:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type in _JSON_MEDIA or media_type.endswith("+json"):
        return "events"
    if media_type in _XML_MEDIA or media_type.endswith("+xml"):
        return "soap"
    return None


def _check_media(request: InboundRequest, kind: RequestKind) -> None:
    """Refuse with 415, before any authentication or parsing, a request whose body or
    Content-Type is of the other kind. Neither saying anything (an empty body, text/plain
    over something else) is left to the parser, which refuses it as malformed (400)."""
    carried = {_body_kind(request.body), _declared_kind(request)} - {None}
    if carried <= {kind}:
        return
    if kind == "soap":
        raise soap.rejected(
            415, "this endpoint takes Salesforce Outbound Messages (SOAP, text/xml); "
            "send JSON events to /webhooks/salesforce/events"
        )
    raise WebhookRejected(
        415, "this endpoint takes JSON events (application/json); "
        "Outbound Messages go to /webhooks/salesforce/outbound"
    )


@register
class SalesforceConnector(Connector):
    name = "salesforce"
    batch_size = COLLECTION_LIMIT

    def __init__(self, config: Config, settings: Settings, clock: Clock):
        super().__init__(config, settings, clock)
        assert config.crm.salesforce is not None, "built only when crm.salesforce is configured"
        self.sf_config: SalesforceConfig = config.crm.salesforce
        self.client = SalesforceClient(self.sf_config)
        self._records: dict[tuple[str, str], tuple[datetime, dict[str, Any] | None]] = {}
        self._last_outbound: tuple[bytes, soap.OutboundMessage] | None = None

    @property
    def api_usage(self) -> tuple[int, int] | None:
        """(used, limit) of the org's daily API requests as of the latest response."""
        return self.client.api_usage

    # -- inbound ---------------------------------------------------------------------------

    request_kind = staticmethod(request_kind)

    def verify(self, request: InboundRequest) -> None:
        """JSON events: bearer secret or fresh HMAC signature. Outbound Messages carry no
        signature; they are authenticated by their OrganizationId, which is in the body, so
        the same check runs here and again in `parse` (before anything is stored). A body of
        the other kind is refused first (415)."""
        kind = request_kind(request)
        _check_media(request, kind)
        if kind == "soap":
            self._outbound(request)
        else:
            events.verify_events_request(request.headers, request.body, self.sf_config.events_secret, self.clock.now())

    def parse(self, request: InboundRequest) -> list[InboundEvent]:
        kind = request_kind(request)
        _check_media(request, kind)
        if kind == "events":
            return events.parse_events(request.body, self.name)
        message = self._outbound(request)
        return [
            InboundEvent(
                source=self.name,
                event_key=notification.id,
                event="record_change",
                object_type=notification.object_type,
                object_id=notification.object_id,
                fields=dict(notification.fields),
                changed={key: value for key, value in notification.fields.items() if key != "Id"},
                # The envelope around the notification; its sObject is `fields` already, and
                # a second copy would double what every stored event weighs.
                payload={
                    "OrganizationId": message.organization_id,
                    "ActionId": message.action_id,
                    "EnterpriseUrl": message.enterprise_url,
                    "PartnerUrl": message.partner_url,
                    "NotificationId": notification.id,
                },
            )
            for notification in message.notifications
        ]

    def _outbound(self, request: InboundRequest) -> soap.OutboundMessage:
        """Parse and check the org. `verify` and `parse` run back to back on the same request,
        so the message parsed by the first is kept (keyed by the identity of the body) and not
        parsed again by the second: up to 100 notifications is most of a request's work."""
        last = self._last_outbound
        if last is not None and last[0] is request.body:
            message = last[1]
        else:
            message = soap.parse_outbound(request.body)
            self._last_outbound = (request.body, message)
        expected = self.sf_config.organization_id
        if not expected:
            raise soap.rejected(403, "crm.salesforce.organization_id is not configured; outbound messages are refused")
        if not soap.same_org(message.organization_id, expected):
            raise soap.rejected(403, f"OrganizationId {message.organization_id} is not the configured org")
        return message

    # -- records ---------------------------------------------------------------------------

    async def contact_for(self, event: InboundEvent) -> ContactInfo:
        """The NPI from the event when it carries the configured field, else from the record
        (and its Email when `use_record_email`). A deleted or invisible record (404) has no NPI."""
        npi_field = self.sf_config.npi_fields.get(event.object_type)
        fields = dict(event.fields)
        missing_npi = npi_field is not None and npi_field not in fields
        missing_email = self.sf_config.use_record_email and "Email" not in fields
        if (missing_npi or missing_email) and is_object_name(event.object_type) and is_record_id(event.object_id):
            record = await self._record(event.object_type, event.object_id)
            if record is None:
                return ContactInfo(npi=None, fields=fields)
            fields.update(record)
        npi = _npi(fields.get(npi_field)) if npi_field else None
        email = fields.get("Email") if self.sf_config.use_record_email else None
        return ContactInfo(npi=npi, fields=fields, email=email or None)

    async def _record(self, object_type: str, object_id: str) -> dict[str, Any] | None:
        key = (object_type, object_id)
        now = self.clock.now()
        cached = self._records.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        record = await asyncio.to_thread(self._fetch, object_type, object_id)
        self._remember(key, record, now + self.sf_config.record_cache_ttl)
        return record

    def _fetch(self, object_type: str, object_id: str) -> dict[str, Any] | None:
        try:
            record = self.client.call(lambda sf, kw: getattr(sf, object_type).get(object_id, **kw))
        except SalesforceCallFailed as failure:
            if failure.status == 404:
                return None
            raise
        return {key: value for key, value in dict(record).items() if key != "attributes"}

    def _remember(self, key: tuple[str, str], record: dict[str, Any] | None, expires: datetime) -> None:
        if len(self._records) >= _CACHE_MAX:
            now = self.clock.now()
            self._records = {k: v for k, v in self._records.items() if v[0] > now}
            while len(self._records) >= _CACHE_MAX:
                self._records.pop(next(iter(self._records)))
        self._records[key] = (expires, record)

    # -- outbound --------------------------------------------------------------------------

    async def push_activities(self, batch: list[Activity]) -> list[PushResult]:
        """Tasks in sObject Collections of up to 200. With `activity_id_field` they are
        upserted on it, so a repeat updates the Task it wrote before; without it, activities an
        earlier try may have written are looked up (SOQL on the record, date and reference)
        before the rest are created. A request refused whole (400) is split in halves until the
        bad record is alone; a rate limit or outage stops the batch."""
        results: dict[int, PushResult] = {}
        linked = []
        for activity in batch:
            if activity.object_id:
                linked.append(activity)
            else:
                results[activity.id] = PushResult(activity.id, ok=False, error="no Salesforce record id", permanent=True)
        halt = _Halt()
        for start in range(0, len(linked), COLLECTION_LIMIT):
            chunk = linked[start : start + COLLECTION_LIMIT]
            results.update((result.activity_id, result) for result in await self._push_checked(chunk, halt))
            if halt.failure is not None:
                # Out of API budget, session or service down: the remaining chunks would
                # fail the same way and only spend calls.
                results.update((a.id, self._call_failed(a, halt.failure)) for a in linked[start + len(chunk) :])
                break
        return [results[activity.id] for activity in batch]

    async def _push_checked(self, chunk: list[Activity], halt: "_Halt") -> list[PushResult]:
        if lease_running_out(chunk, self.clock.now()):
            return lease_expired(chunk)
        written: dict[int, PushResult] = {}
        doubtful = [activity for activity in chunk if activity.verify]
        if doubtful and not self.sf_config.activity_id_field:
            try:
                found = await asyncio.to_thread(self._find_written, doubtful)
            except SalesforceCallFailed as failure:
                if not self._call_failed(chunk[0], failure).permanent:
                    halt.failure = failure
                    return self._call_failed_all(chunk, failure)
                # Not knowing whether they exist, none of them is created blind.
                error = f"looking for an earlier write: {failure}"
                written = {a.id: PushResult(a.id, ok=False, error=error) for a in doubtful}
            else:
                written = {activity_id: PushResult(activity_id, ok=True) for activity_id in found}
        rest = [activity for activity in chunk if activity.id not in written]
        created = await self._write_splitting(rest, halt) if rest else []
        by_id = {**written, **{result.activity_id: result for result in created}}
        return [by_id[activity.id] for activity in chunk]

    async def _write_splitting(self, chunk: list[Activity], halt: "_Halt") -> list[PushResult]:
        if halt.failure is not None:
            return self._call_failed_all(chunk, halt.failure)
        if lease_running_out(chunk, self.clock.now()):
            return lease_expired(chunk)
        try:
            return await asyncio.to_thread(self._push_chunk, chunk)
        except SalesforceCallFailed as failure:
            outcome = self._call_failed_all(chunk, failure)
            if not outcome[0].permanent:
                halt.failure = failure
            elif len(chunk) > 1 and failure.status == 400:
                middle = len(chunk) // 2
                return await self._write_splitting(chunk[:middle], halt) + await self._write_splitting(chunk[middle:], halt)
            return outcome

    def _call_failed_all(self, chunk: list[Activity], failure: SalesforceCallFailed) -> list[PushResult]:
        return [self._call_failed(activity, failure) for activity in chunk]

    def _push_chunk(self, chunk: list[Activity]) -> list[PushResult]:
        id_field = self.sf_config.activity_id_field
        payload = {"allOrNone": False, "records": [task_record(activity, id_field) for activity in chunk]}
        if id_field:
            path = f"composite/sobjects/Task/{id_field}"
            response = self.client.call(lambda sf, kw: sf.restful(path, method="PATCH", json=payload, **kw))
        else:
            response = self.client.call(lambda sf, kw: sf.restful("composite/sobjects", method="POST", json=payload, **kw))
        if not isinstance(response, list) or len(response) != len(chunk):
            error = f"unexpected sObject Collections response: {str(response)[:200]}"
            return [PushResult(activity.id, ok=False, error=error) for activity in chunk]
        return [record_result(activity, result) for activity, result in zip(chunk, response)]

    def _find_written(self, activities: list[Activity]) -> set[int]:
        """Ids of `activities` whose Task exists: completed email Tasks on the same records and
        days, told apart by the reference at the end of their Description."""
        found: set[int] = set()
        for start in range(0, len(activities), QUERY_IDS):
            part = activities[start : start + QUERY_IDS]
            links: dict[str, set[str]] = {"WhoId": set(), "WhatId": set()}
            for activity in part:
                links[link_field(activity)].add(str(activity.object_id))
            where_link = " OR ".join(
                f"{name} IN ({', '.join(_soql_string(value) for value in sorted(values))})" for name, values in links.items() if values
            )
            days = ", ".join(sorted({activity_date(activity) for activity in part}))
            soql = (
                "SELECT Id, WhoId, WhatId, Description FROM Task "
                f"WHERE ({where_link}) AND ActivityDate IN ({days}) AND TaskSubtype = 'Email'"
            )
            records = self.client.call(lambda sf, kw: sf.query_all(soql, **kw))["records"]
            wanted = {activity.reference: activity.id for activity in part}
            for record in records:
                text = str(record.get("Description") or "")
                found.update(activity_id for ref, activity_id in wanted.items() if f"Ref: {ref}" in text)
        return found

    @staticmethod
    def _call_failed(activity: Activity, failure: SalesforceCallFailed) -> PushResult:
        if failure.rate_limited:
            retry_after = failure.retry_after or DEFAULT_RETRY_AFTER
            return PushResult(activity.id, ok=False, error=str(failure), retry_after=retry_after)
        # A request Salesforce calls malformed will be just as malformed next time; a refused
        # login, an expired session, the network or a server error may all heal.
        permanent = failure.status == 400 and not isinstance(failure, SalesforceLoginFailed)
        return PushResult(activity.id, ok=False, error=str(failure), permanent=permanent)

    async def aclose(self) -> None:
        self._records.clear()
        self._last_outbound = None
        self.client.session.close()


@dataclass
class _Halt:
    """Set by the first call of a push that failed in a way every further call would too."""

    failure: SalesforceCallFailed | None = None


def _soql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _npi(value: Any) -> str | None:
    """NPI fields are text or number fields; a number comes back as 1234567893.0."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None
