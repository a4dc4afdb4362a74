"""The YAML config as pydantic models. Unknown keys are errors: a typo in a rule must not
silently widen an audience."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from config.durations import Duration


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Dkim(Strict):
    """Sign outgoing mail yourself when sending straight to recipients (not via a relay that signs)."""

    domain: str
    selector: str
    private_key_file: str
    """PEM RSA key; relative paths are relative to the config file."""


class Sender(Strict):
    from_: str = Field(alias="from")
    postal_address: str | None = None
    reply_to: str | None = None
    bounce_domain: str | None = None
    """Domain of the VERP Return-Path (`bounce+{token}@bounce_domain`); off when unset."""
    unsubscribe_mailto: str | None = None
    dkim: Dkim | None = None

    @field_validator("from_")
    @classmethod
    def _has_address(cls, value: str) -> str:
        from email.utils import parseaddr

        name, address = parseaddr(value)
        if "@" not in address:
            raise ValueError(f"expected an address like 'Medical Information <medinfo@pharma.example>', got {value!r}")
        return value


class Tracking(Strict):
    engagement: Literal["open", "click"] = "open"
    opens: bool = True
    clicks: bool = True
    machine_open_window: Duration = timedelta(seconds=10)
    """An open this soon after delivery is a prefetcher, not a person."""


class PerHcpLimit(Strict):
    max: int = Field(ge=1)
    per: Duration


class Limits(Strict):
    per_hcp: PerHcpLimit | None = None


class Bounces(Strict):
    """What bounces do to addresses, emails and receiving domains (docs/deliverability.md)."""

    reroute_within: Duration = timedelta(days=3)
    """A hard bounce this soon after sending sends the same email to the HCP's next address."""
    soft_limit: int = Field(default=3, ge=1)
    soft_window: Duration = timedelta(days=7)
    """`soft_limit` soft bounces (of different emails) within `soft_window` make the address hard-bounced."""
    block_retries: int = Field(default=3, ge=0)
    """How often an email refused by a block is retried (with backoff) before it fails."""
    block_retry_after: Duration = timedelta(hours=1)
    """The first retry after a block; doubled for each further one."""
    block_throttle: Duration = timedelta(minutes=15)
    """How long a receiving domain is slowed after a block."""
    block_pause_threshold: int = Field(default=5, ge=1)
    block_window: Duration = timedelta(hours=1)
    """`block_pause_threshold` blocks from one domain within `block_window` pause sending to it."""
    block_pause: Duration = timedelta(hours=2)


class DomainLimit(Strict):
    concurrency: int = Field(default=4, ge=1)
    """SMTP transactions to this receiving domain at once, per worker."""
    rate: float = Field(default=20.0, gt=0)
    """Emails per second to this receiving domain, per worker."""


class Delivery(Strict):
    """How each worker sends: its pool of kept-open SMTP connections and its limits per
    receiving domain (grouped by mailbox provider: gmail, microsoft, yahoo, apple)."""

    per_domain: DomainLimit = Field(default_factory=DomainLimit)
    providers: dict[str, DomainLimit] = Field(default_factory=lambda: {
        "gmail": DomainLimit(concurrency=8, rate=40), "microsoft": DomainLimit(concurrency=4, rate=15),
        "yahoo": DomainLimit(concurrency=4, rate=15), "apple": DomainLimit(concurrency=4, rate=15),
    })
    """Limits of a provider group, or of one domain by name; any other domain gets `per_domain`."""
    slow_down: Duration = timedelta(minutes=10)
    """After a rate answer (421, 4.7.x) a domain's rate halves (down to 1 a minute) for this long."""
    connections: int = Field(default=4, ge=1, le=100)
    """Kept-open SMTP connections per worker process (to `SMTP_URL`)."""
    max_messages: int = Field(default=100, ge=1)
    """Messages per SMTP connection before it is closed and a new one opened."""
    idle_timeout: Duration = timedelta(seconds=60)
    """A pooled connection unused this long is closed rather than reused."""


class Unsubscribe(Strict):
    scope: Literal["all", "campaign"] = "all"


class HubSpotConfig(Strict):
    access_token: str | None = None
    client_secret: str | None = None
    npi_property: str = "npi"
    portal_id: int | None = None
    base_url: str = "https://api.hubapi.com"
    use_contact_email: bool = False
    contact_cache_ttl: Duration = timedelta(seconds=60)
    activity_id_property: str | None = None
    """A custom single-line text property created on HubSpot's email and note objects; each
    engagement written carries its activity reference there, and a retry finds it by it."""


class SalesforceConfig(Strict):
    instance_url: str | None = None
    organization_id: str | None = None
    npi_fields: dict[str, str] = Field(default_factory=lambda: {"Contact": "NPI__c", "Lead": "NPI__c"})
    events_secret: str | None = None
    access_token: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    username: str | None = None
    private_key_file: str | None = None
    login_url: str = "https://login.salesforce.com"
    api_version: str = "59.0"
    use_record_email: bool = False
    record_cache_ttl: Duration = timedelta(seconds=60)
    activity_id_field: str | None = None
    """A custom External ID + Unique text field on Task (e.g. `Trigger_Email_Activity__c`);
    Tasks are then upserted on it, so a retried push updates instead of creating a second."""


class WebhookConnectorConfig(Strict):
    """A generic outgoing webhook for engagement activities (Standard Webhooks signatures)."""

    url: str
    secret: str | None = None
    batch_size: int = Field(default=100, ge=1, le=1000)


class CRMConfig(Strict):
    hubspot: HubSpotConfig | None = None
    salesforce: SalesforceConfig | None = None
    webhook: WebhookConnectorConfig | None = None
    writeback: str | None = None
    """Where activities of API-made triggers go (`hubspot`, `salesforce`, `webhook`); none when unset."""


class Resend(Strict):
    after: Duration
    max: int = Field(default=1, ge=1, le=10)
    subject: str | None = None


class Audience(Strict):
    specialties: list[str] | None = None
    states: list[str] | None = None

    @field_validator("states")
    @classmethod
    def _upper(cls, value: list[str] | None) -> list[str] | None:
        return [state.upper() for state in value] if value is not None else None


class Campaign(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    name: str | None = None
    subject: str
    html: str | None = None
    template: str | None = None
    kind: Literal["marketing", "transactional"] = "marketing"
    resend: Resend | None = None
    cooldown: Duration = timedelta(days=30)
    audience: Audience = Field(default_factory=Audience)
    paused: bool = False
    """Initial state only; pausing at run time is stored in the database."""

    @model_validator(mode="after")
    def _one_body(self) -> "Campaign":
        if (self.html is None) == (self.template is None):
            raise ValueError("give exactly one of 'html' (inline) or 'template' (a file)")
        return self

    @property
    def body(self) -> str:
        assert self.html is not None, "the loader reads template files into html"
        return self.html


TriggerSource = Literal["hubspot", "salesforce", "email", "api"]


class TriggerRule(Strict):
    from_: TriggerSource = Field(alias="from")
    on: str
    where: dict[str, Any] = Field(default_factory=dict)
    send: str
    data: dict[str, Any] = Field(default_factory=dict)
    """Extra template data merged over what the event carries."""

    @model_validator(mode="after")
    def _known_event(self) -> "TriggerRule":
        allowed = {
            "hubspot": {"form_submission", "page_view", "record_change", "created"},
            "salesforce": {"form_submission", "page_view", "record_change", "created"},
            "email": {"opened", "clicked", "no_engagement"},
            "api": set(),
        }[self.from_]
        if self.on not in allowed:
            raise ValueError(f"on: expected one of {', '.join(sorted(allowed))} for from: {self.from_}, got {self.on!r}")
        return self


class Config(Strict):
    public_url: str = "http://127.0.0.1:8000"
    sender: Sender
    tracking: Tracking = Field(default_factory=Tracking)
    limits: Limits = Field(default_factory=Limits)
    unsubscribe: Unsubscribe = Field(default_factory=Unsubscribe)
    bounces: Bounces = Field(default_factory=Bounces)
    delivery: Delivery = Field(default_factory=Delivery)
    crm: CRMConfig = Field(default_factory=CRMConfig)
    campaigns: list[Campaign] = Field(default_factory=list)
    triggers: list[TriggerRule] = Field(default_factory=list)
    _by_id: dict[str, Campaign] | None = PrivateAttr(default=None)

    @field_validator("public_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        return value.rstrip("/")

    def campaign(self, campaign_id: str) -> Campaign | None:
        return self._campaigns_by_id().get(campaign_id)

    def _campaigns_by_id(self) -> dict[str, Campaign]:
        if self._by_id is None:
            self._by_id = {campaign.id: campaign for campaign in self.campaigns}
        return self._by_id
