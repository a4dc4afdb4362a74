"""From a stored CRM event to triggers: find the record's NPI through its connector, match
the `triggers` rules, accept one trigger per matching rule."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from connectors.base import Connector, CrmUnavailable
from core.db import triggers
from core.directory import add_address, get_hcp
from core.errors import describe_error
from core.inbound import claim_event, event_from_row, finish_event, retry_event
from core.npi import npi_problem
from core.outbox import pause_crm
from core.rules import matching_rules
from core.runtime import Runtime
from core.triggers import accept_trigger

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
"""30 s, 1, 2, 4, 8, 16, 32 min between attempts: a CRM outage of about an hour is ridden out."""
UNEXPECTED_MAX_ATTEMPTS = 5
"""An event whose processing raises an unexpected error: 30 s, 1, 2, 4 min between attempts."""


def connectors_of(rt: Runtime) -> dict[str, Connector]:
    return rt.extras.get("connectors", {})


async def process_event(rt: Runtime, event_id: int) -> str | None:
    row = await claim_event(rt, event_id)
    if row is None:
        return None
    try:
        event = event_from_row(row["event"])
        result = await _process(rt, event, event_id)
    except CrmUnavailable as exc:
        if exc.retry_after:
            # The CRM's rate limit is per app, not per call: pushes to it wait too.
            await pause_crm(rt, row["source"], rt.clock.now() + timedelta(seconds=exc.retry_after), reason=str(exc))
        if row["attempts"] < MAX_ATTEMPTS:
            delay = max(timedelta(seconds=exc.retry_after or 0), timedelta(seconds=min(30 * 2 ** (row["attempts"] - 1), 3600)))
            log.warning("inbound event %s: CRM unavailable (%s), retry in %s", event_id, exc, delay)
            await retry_event(rt, event_id, f"attempt {row['attempts']}: {exc}", delay)
            return "retry"
        await finish_event(rt, event_id, "failed", f"after {row['attempts']} attempts: {exc}")
        return "failed"
    except Exception as exc:  # noqa: BLE001 - recorded on the event; the CRM was already answered
        # Retried a bounded number of times with backoff (a bug fixed or a row unstuck by
        # then goes through), then failed with the error as its result: never a loop.
        log.exception("inbound event %s failed", event_id)
        error = describe_error(exc)
        if row["attempts"] < UNEXPECTED_MAX_ATTEMPTS:
            await retry_event(rt, event_id, f"attempt {row['attempts']}: {error}", timedelta(seconds=30 * 2 ** (row["attempts"] - 1)))
            return "retry"
        await finish_event(rt, event_id, "failed", f"after {row['attempts']} attempts: {error}")
        return "failed"
    await finish_event(rt, event_id, "done", result)
    return result


async def _process(rt: Runtime, event: Any, event_id: int | None = None) -> str:
    rules = matching_rules(rt.config, event)
    if not rules:
        return "no matching rule"
    connector = connectors_of(rt).get(event.source)
    if connector is None:
        return f"crm.{event.source} is not configured"
    contact = await connector.contact_for(event)
    npi = (contact.npi or "").strip()
    ref = {"crm": event.source, "object_type": event.object_type, "object_id": event.object_id}
    if contact.email and not npi_problem(npi):
        async with rt.db.begin() as connection:
            if await get_hcp(connection, npi):
                await add_address(connection, npi, contact.email, source=f"crm:{event.source}", now=rt.clock.now())
    accepted = []
    for index, rule in rules:
        # What the decision trail shows as the source event: which stored event, which rule,
        # and which fields of the payload the trigger's data came from.
        ref = {
            **ref, "event_id": event_id, "event_key": event.event_key, "event": event.event, "rule": index,
            "fields": sorted({*contact.fields, *event.fields}),
        }
        data = {**contact.fields, **event.fields, **rule.data, "event": event.event, "object_id": event.object_id}
        if event.form_id:
            data["form_id"] = event.form_id
        if event.url:
            data["url"] = event.url
        result = await accept_trigger(
            rt,
            npi=_shown_npi(npi, event),
            campaign_id=rule.send,
            data=data,
            source=event.source,
            source_ref=ref,
            idempotency_key=f"{event.source}:{event.event_key}:rule{index}",
        )
        accepted.append(result.id)
    return "triggers " + ", ".join(accepted)


_NPI_WIDTH: int = getattr(triggers.c.npi.type, "length", None) or 64


def _shown_npi(npi: str, event: Any) -> str:
    """What the trigger records as its NPI: the value found, else which record lacked one, so
    its `invalid_npi` outcome names the record. Either is cut to the column's width: a long
    custom object name or a stray value in the NPI field must not fail the insert (PostgreSQL
    enforces the width) and leave no trigger to show."""
    shown = npi or f"(none on {event.object_type} {event.object_id})"
    if len(shown) > _NPI_WIDTH and not npi:
        shown = f"(none on {event.object_id})"
    return shown if len(shown) <= _NPI_WIDTH else shown[: _NPI_WIDTH - 1] + "…"
