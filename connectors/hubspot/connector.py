"""The HubSpot connector: signed webhooks in, contacts fetched, engagement written back."""

from __future__ import annotations

import asyncio
import importlib
import logging
from datetime import datetime, timezone
from typing import Any, Iterator

import urllib3

from config import Config, Settings
from config.schema import HubSpotConfig
from connectors.base import (
    Connector,
    ContactInfo,
    InboundRequest,
    WebhookRejected,
    lease_expired,
    lease_running_out,
    register,
)
from connectors.hubspot import activities as hs_activities
from connectors.hubspot.client import (
    DEFAULT_RETRY_AFTER,
    REQUEST_TIMEOUT,
    HubSpotApiError,
    build_client,
    error_message,
    retry_after,
    status_of,
)
from connectors.hubspot.payloads import load_json, parse_payload, portal_ids
from connectors.hubspot.signatures import verify_signature
from core.activities import Activity, InboundEvent, PushResult
from core.clock import Clock

log = logging.getLogger(__name__)

CONTACT_PROPERTIES = ("email", "firstname", "lastname")
"""Fetched alongside the NPI property: the address (when the config uses it) and a name."""

_CACHE_LIMIT = 10_000

FETCH_ATTEMPTS = 3
"""Tries of one contact fetch that HubSpot rate-limits or fails with a server error."""
FETCH_WAIT_LIMIT = 15.0
"""Seconds one event may spend waiting on HubSpot between tries. Enough for the 10-second
burst window to roll over, well inside the worker's job timeout; past it the error goes up
and the event waits in the database for its next attempt instead of holding a worker slot."""


SEARCH_GROUPS = 5
"""HubSpot's search takes up to five filter groups (OR), so five activities per search."""
SEARCH_IN_VALUES = 100
SEARCH_LIMIT = 100
SEARCH_PAGES = 10


@register
class HubSpotConnector(Connector):
    name = "hubspot"
    batch_size = hs_activities.MAX_INPUTS

    def __init__(self, config: Config, settings: Settings, clock: Clock):
        super().__init__(config, settings, clock)
        if config.crm.hubspot is None:
            raise ValueError("crm.hubspot is not configured")
        self.hubspot: HubSpotConfig = config.crm.hubspot
        self._client: Any = None
        self._apis: dict[str, Any] = {}
        self._contacts: dict[str, tuple[datetime, dict[str, Any]]] = {}
        self._decoded: tuple[bytes, Any] | None = None

    # inbound

    def verify(self, request: InboundRequest) -> None:
        """401 unless HubSpot signed the request with our client secret; 403 when it comes
        from another HubSpot account than `crm.hubspot.portal_id`."""
        verify_signature(request, self.hubspot.client_secret, self.clock.now())
        try:
            data = self._decode(request.body)
        except WebhookRejected:
            return  # `parse` answers 400 for it
        self._check_portal(data)

    def parse(self, request: InboundRequest) -> list[InboundEvent]:
        """400 for a malformed body; the portal is checked again so a caller that skipped
        `verify` still cannot store another account's events."""
        data = self._decode(request.body)
        self._decoded = None
        self._check_portal(data)
        return parse_payload(data, request.body, now=self.clock.now())

    def _decode(self, body: bytes) -> Any:
        """The decoded body, decoded once for `verify` and `parse` of the same request: a
        batch of 100 events is ~30 KB, and decoding it is a tenth of what a delivery costs.
        The memo holds the body itself, so `is` cannot match another request's bytes."""
        memo = self._decoded
        if memo is not None and memo[0] is body:
            return memo[1]
        data = load_json(body)
        self._decoded = (body, data)
        return data

    def _check_portal(self, data: Any) -> None:
        expected = self.hubspot.portal_id
        if expected is None or data is None:
            return
        others = portal_ids(data) - {expected}
        if others:
            raise WebhookRejected(403, f"portal {sorted(others)[0]} is not the configured crm.hubspot.portal_id {expected}")

    # contacts

    async def contact_for(self, event: InboundEvent) -> ContactInfo:
        """The NPI from the payload when it carries `npi_property`; otherwise (or when the
        config wants the contact's own address and the payload lacks it) from the contact
        record, cached for `contact_cache_ttl`. A contact HubSpot no longer has → no NPI."""
        known = {key: value for key, value in event.fields.items() if value not in (None, "")}
        needs_email = self.hubspot.use_contact_email and not known.get("email")
        fields = dict(event.fields)
        if _npi(known.get(self.hubspot.npi_property)) is None or needs_email:
            fetched = await self._contact_properties(event.object_id)
            if fetched is not None:
                fields = {**fetched, **known}
        email = fields.get("email") if self.hubspot.use_contact_email else None
        return ContactInfo(npi=_npi(fields.get(self.hubspot.npi_property)), fields=fields, email=email or None)

    async def _contact_properties(self, contact_id: str) -> dict[str, Any] | None:
        now = self.clock.now()
        cached = self._contacts.get(contact_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        properties = await self._fetch_with_retries(contact_id)
        if properties is not None:
            now = self.clock.now()  # a rate-limited fetch may have waited
            if len(self._contacts) >= _CACHE_LIMIT:
                self._contacts = {key: entry for key, entry in self._contacts.items() if entry[0] > now}
            self._contacts[contact_id] = (now + self.hubspot.contact_cache_ttl, properties)
        return properties

    async def _fetch_with_retries(self, contact_id: str) -> dict[str, Any] | None:
        """A 429 waits its Retry-After (HubSpot's burst limit rolls over every 10 seconds), a
        5xx or lost connection a moment, on our clock; anything else is raised at once."""
        waited = 0.0
        attempt = 1
        while True:
            try:
                return await asyncio.to_thread(self._fetch_contact, contact_id)
            except HubSpotApiError as exc:
                if exc.status == 429:
                    wait = exc.retry_after if exc.retry_after is not None else DEFAULT_RETRY_AFTER
                elif exc.status == 0 or exc.status >= 500:
                    wait = float(2 ** (attempt - 1))
                else:
                    raise
                if attempt >= FETCH_ATTEMPTS or waited + wait > FETCH_WAIT_LIMIT:
                    raise
                log.info("hubspot contact %s: %s; trying again in %.0f s", contact_id, exc, wait)
                waited += wait
                attempt += 1
                await self.clock.sleep(wait)

    def _fetch_contact(self, contact_id: str) -> dict[str, Any] | None:
        properties = [self.hubspot.npi_property, *CONTACT_PROPERTIES]
        try:
            contact = self._api("contacts").get_by_id(contact_id, properties=properties, _request_timeout=REQUEST_TIMEOUT)
        except Exception as exc:
            if status_of(exc) == 404:
                return None
            error = self._api_error(exc, f"fetching contact {contact_id}")
            if error is None:
                raise
            raise error from None
        return dict(contact.properties or {})

    # outbound

    async def push_activities(self, batch: list[Activity]) -> list[PushResult]:
        """Sent emails as email engagements, everything else as notes, on the contact.

        A 429 stops the batch: what was not yet written waits `retry_after`. A 5xx or a
        lost connection fails that call's items for a later retry, and that retry first
        looks for what the earlier call may have written. Per-item errors of a 207
        dead-letter only those items; a whole batch refused with 400 is split in halves
        until the bad input is alone, so the good ones are still written."""
        results: dict[int, PushResult] = {}
        pushable = []
        for activity in batch:
            problem = hs_activities.unpushable(activity)
            if not self.hubspot.access_token:
                problem = "crm.hubspot.access_token is not set: nothing is written to HubSpot"
            if problem:
                results[activity.id] = PushResult(activity.id, ok=False, error=problem, permanent=True)
            else:
                pushable.append(activity)
        throttled: float | None = None
        for call in hs_activities.plan_calls(pushable):
            if throttled is None:
                outcome = await self._push_call(call)
                throttled = next((result.retry_after for result in outcome if result.retry_after is not None), None)
            else:
                outcome = _waiting(call.activities, throttled)
            results.update({result.activity_id: result for result in outcome})
        return [results[activity.id] for activity in batch]

    async def _push_call(self, call: hs_activities.BatchCall) -> list[PushResult]:
        """Activities an earlier try may have written are looked up first; the rest created."""
        written: dict[int, PushResult] = {}
        doubtful = [activity for activity in call.activities if activity.verify]
        if lease_running_out(call.activities, self.clock.now()):
            return lease_expired(call.activities)
        if doubtful:
            try:
                found = await asyncio.to_thread(self._find_written, call.object_type, doubtful)
            except HubSpotApiError as exc:
                log.warning("hubspot search %s failed: %s", call.object_type, exc)
                if exc.status == 429:
                    return _waiting(call.activities, exc.retry_after)
                # Not knowing whether they exist, none of them is created blind.
                error = f"looking for an earlier write: {exc}"
                written = {activity.id: PushResult(activity.id, ok=False, error=error) for activity in doubtful}
            else:
                written = {activity_id: PushResult(activity_id, ok=True) for activity_id in found}
        rest = [activity for activity in call.activities if activity.id not in written]
        created = await self._create_splitting(hs_activities.BatchCall(call.object_type, rest)) if rest else []
        by_id = {**written, **{result.activity_id: result for result in created}}
        return [by_id[activity.id] for activity in call.activities]

    async def _create_splitting(self, call: hs_activities.BatchCall) -> list[PushResult]:
        if lease_running_out(call.activities, self.clock.now()):
            return lease_expired(call.activities)
        body = call.body(self.config.sender.from_, self.hubspot.activity_id_property)
        try:
            status, data = await asyncio.to_thread(self._create_batch, call.object_type, body)
        except HubSpotApiError as exc:
            log.warning("hubspot batch create %s of %d failed: %s", call.object_type, len(call.activities), exc)
            if exc.status == 400 and len(call.activities) > 1:
                first, second = call.halves()
                head = await self._create_splitting(first)
                wait = next((result.retry_after for result in head if result.retry_after is not None), None)
                tail = _waiting(second.activities, wait) if wait is not None else await self._create_splitting(second)
                return head + tail
            return [self._failure(activity.id, exc) for activity in call.activities]
        return hs_activities.read_batch_response(call, status, data)

    def _find_written(self, object_type: hs_activities.ObjectType, activities: list[Activity]) -> set[int]:
        """Ids of `activities` already on HubSpot, found by search: by the activity id
        property when one is configured, else by time and contact, then by the reference
        each body carries."""
        models = importlib.import_module(f"hubspot.crm.objects.{object_type}")
        api = self._api(f"{object_type}-search")
        prop = self.hubspot.activity_id_property
        wanted = {hs_activities.reference(activity): activity.id for activity in activities}
        found: set[int] = set()
        if prop:
            for start in range(0, len(activities), SEARCH_IN_VALUES):
                refs = [hs_activities.reference(a) for a in activities[start : start + SEARCH_IN_VALUES]]
                groups = [models.FilterGroup(filters=[models.Filter(property_name=prop, operator="IN", values=refs)])]
                for item in self._search(api, models, groups, [prop]):
                    ref = (item.properties or {}).get(prop)
                    if ref in wanted:
                        found.add(wanted[ref])
            return found
        text = hs_activities.body_property(object_type)
        for start in range(0, len(activities), SEARCH_GROUPS):
            chunk = activities[start : start + SEARCH_GROUPS]
            groups = [
                models.FilterGroup(filters=[
                    models.Filter(property_name="hs_timestamp", operator="EQ", value=str(_millis(activity.occurred_at))),
                    models.Filter(property_name="associations.contact", operator="EQ", value=str(activity.object_id)),
                ])
                for activity in chunk
            ]
            for item in self._search(api, models, groups, [text]):
                body = str((item.properties or {}).get(text) or "")
                found.update(activity_id for ref, activity_id in wanted.items() if ref in body)
        return found

    def _search(self, api: Any, models: Any, groups: list[Any], properties: list[str]) -> Iterator[Any]:
        after: str | None = None
        for _ in range(SEARCH_PAGES):
            request = models.PublicObjectSearchRequest(filter_groups=groups, properties=properties, limit=SEARCH_LIMIT, after=after)
            try:
                page = api.do_search(public_object_search_request=request, _request_timeout=REQUEST_TIMEOUT)
            except Exception as exc:
                error = self._api_error(exc, "searching for earlier writes")
                if error is None:
                    raise
                raise error from None
            yield from page.results or []
            after = getattr(getattr(getattr(page, "paging", None), "next", None), "after", None)
            if not after:
                return

    def _create_batch(self, object_type: hs_activities.ObjectType, body: dict[str, Any]) -> tuple[int, Any]:
        try:
            data, status, _headers = self._api(object_type).create_with_http_info(body, _request_timeout=REQUEST_TIMEOUT)
        except Exception as exc:
            error = self._api_error(exc, f"creating {object_type}")
            if error is None:
                raise
            raise error from None
        return status, data

    @staticmethod
    def _failure(activity_id: int, exc: HubSpotApiError) -> PushResult:
        if exc.status == 429:
            return PushResult(activity_id, ok=False, error=exc.message, retry_after=exc.retry_after)
        # A request HubSpot validated and refused fails the same way every time; auth and
        # server problems get fixed elsewhere, and then the same request succeeds.
        permanent = exc.status in (400, 404, 409, 422)
        return PushResult(activity_id, ok=False, error=str(exc), permanent=permanent)

    # SDK plumbing

    def _api(self, name: str) -> Any:
        """The SDK API object for `name`, built once: each access to a discovery property
        builds a fresh client and connection pool."""
        api = self._apis.get(name)
        if api is None:
            if not self.hubspot.access_token:
                raise HubSpotApiError(0, "crm.hubspot.access_token is not configured")
            if self._client is None:
                self._client = build_client(self.hubspot)
            if name == "contacts":
                api = self._client.crm.contacts.basic_api
            elif name.endswith("-search"):
                api = getattr(self._client.crm.objects, name.removesuffix("-search")).search_api
            elif name == "emails":
                api = self._client.crm.objects.emails.batch_api
            else:
                api = self._client.crm.objects.notes.batch_api
            self._apis[name] = api
        return api

    def _api_error(self, exc: BaseException, doing: str) -> HubSpotApiError | None:
        """`exc` as a HubSpotApiError when it is an API or connection failure; None for
        anything else (a bug, which should surface as itself)."""
        if isinstance(exc, HubSpotApiError):
            return exc
        status = status_of(exc)
        if status is None:
            if isinstance(exc, urllib3.exceptions.HTTPError):
                return HubSpotApiError(0, f"{doing}: {exc.__class__.__name__}")
            return None
        wait = retry_after(getattr(exc, "headers", None), self.clock.now()) if status == 429 else None
        return HubSpotApiError(status, f"{doing}: {error_message(exc)}", retry_after=wait)

    async def aclose(self) -> None:
        self._contacts.clear()
        for api in self._apis.values():
            api_client = getattr(api, "api_client", None)
            if api_client is not None:
                api_client.close()
                api_client.rest_client.pool_manager.clear()
        self._apis.clear()
        self._client = None


def _waiting(activities: list[Activity], wait: float | None) -> list[PushResult]:
    return [PushResult(a.id, ok=False, error="HubSpot rate limit", retry_after=wait) for a in activities]


def _millis(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def _npi(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None
