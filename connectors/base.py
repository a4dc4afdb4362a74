"""The one interface every CRM connector implements, and the registry that finds them.

A connector verifies and parses inbound webhooks, fetches a record the event did not carry
in full, and pushes engagement activities back. It knows nothing of Starlette: the route in
`webhooks/` hands it an `InboundRequest`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Mapping

from config import Config, Settings
from core.activities import Activity, InboundEvent, PushResult
from core.clock import Clock
from core.runtime import Runtime


@dataclass
class InboundRequest:
    method: str
    public_url: str
    """The URL the CRM called (config `public_url` + path + query), which is what it signs."""
    headers: Mapping[str, str]
    """Lower-cased header names."""
    body: bytes


class WebhookRejected(Exception):
    """The request is refused with `status`; nothing of it was stored."""

    def __init__(self, status: int, reason: str, *, body: str | None = None, media_type: str | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.body = body
        self.media_type = media_type


class CrmUnavailable(Exception):
    """The CRM could not answer now (rate limit, outage, expired credentials). The event is
    retried later instead of being dropped; `retry_after` (seconds) when the CRM said."""

    retry_after: float | None = None


@dataclass
class ContactInfo:
    """What a connector found on the CRM record behind an event."""

    npi: str | None
    fields: dict[str, Any] = field(default_factory=dict)
    email: str | None = None
    """The record's own address; joins the directory's candidates when the config says so."""


CALL_MARGIN = timedelta(seconds=90)
"""Longer than one CRM call can take with its timeouts and connection retries."""


def lease_running_out(activities: list[Activity], now: datetime) -> bool:
    """True when a call started now for `activities` could outlast their outbox lease, after
    which another pusher may take them: the call is not made, so they are written once."""
    ends = [activity.lease_until for activity in activities if activity.lease_until is not None]
    return bool(ends) and now + CALL_MARGIN >= min(ends)


def lease_expired(activities: list[Activity]) -> list[PushResult]:
    return [PushResult(a.id, ok=False, error="not tried: the outbox lease was running out", retry_after=0.0) for a in activities]


class Connector(ABC):
    name: ClassVar[str]
    batch_size: ClassVar[int] = 100

    def __init__(self, config: Config, settings: Settings, clock: Clock):
        self.config = config
        self.settings = settings
        self.clock = clock

    def verify(self, request: InboundRequest) -> None:
        """Raise WebhookRejected (401/403) unless the request is authentic."""

    def parse(self, request: InboundRequest) -> list[InboundEvent]:
        """Turn a verified request into events; raise WebhookRejected(400) for a malformed body."""
        raise WebhookRejected(404, f"{self.name} accepts no webhooks")

    async def contact_for(self, event: InboundEvent) -> ContactInfo:
        """The NPI (and own address) of the record behind `event`, fetched when the payload
        lacks it."""
        raise NotImplementedError

    @abstractmethod
    async def push_activities(self, batch: list[Activity]) -> list[PushResult]:
        """Write `batch` (at most `batch_size`) to the CRM; one result per activity."""

    async def aclose(self) -> None:
        """Release clients and caches."""


_REGISTRY: dict[str, type[Connector]] = {}


def register(cls: type[Connector]) -> type[Connector]:
    _REGISTRY[cls.name] = cls
    return cls


def connector_classes() -> dict[str, type[Connector]]:
    import connectors  # noqa: F401  (imports every sub-package, which registers itself)

    return dict(_REGISTRY)


def attach_connectors(rt: Runtime) -> None:
    """Give a runtime its connectors, once (the web app and the worker both need them)."""
    rt.extras.setdefault("connectors", build_connectors(rt.config, rt.settings, rt.clock))


def build_connectors(config: Config, settings: Settings, clock: Clock) -> dict[str, Connector]:
    """One connector instance per CRM configured under `crm:`."""
    built: dict[str, Connector] = {}
    for name, cls in connector_classes().items():
        if getattr(config.crm, name, None) is not None:
            built[name] = cls(config, settings, clock)
    return built
