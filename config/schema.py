"""The YAML config as pydantic models. Unknown keys are errors: a typo in a rule must not
silently widen an audience."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from config.durations import Duration, Size, parse_duration


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def check_address(value: str) -> str:
    from email.utils import parseaddr

    name, address = parseaddr(value)
    if "@" not in address:
        raise ValueError(f"expected an address like 'Medical Information <medinfo@pharma.example>', got {value!r}")
    return value


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
        return check_address(value)


class Tracking(Strict):
    engagement: Literal["open", "click"] = "open"
    opens: bool = True
    clicks: bool = True
    machine_open_window: Duration = timedelta(seconds=10)
    """An open this soon after delivery is a prefetcher, not a person."""


class PerHcpLimit(Strict):
    max: int = Field(ge=1)
    per: Duration


_CLOCK_TIME = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class QuietHours(Strict):
    """No marketing email inside this window of the HCP's local time: every day from `from` to
    `to` (may span midnight), and all day on `days`."""

    from_: str | None = Field(default=None, alias="from", pattern=_CLOCK_TIME)
    to: str | None = Field(default=None, pattern=_CLOCK_TIME)
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _both_ends(self) -> "QuietHours":
        if (self.from_ is None) != (self.to is None):
            raise ValueError("give both 'from' and 'to' (HH:MM), or neither")
        if self.from_ is None and not self.days:
            raise ValueError("give 'from' and 'to' (HH:MM), 'days', or both")
        return self


class Limits(Strict):
    per_hcp: PerHcpLimit | None = None
    quiet_hours: QuietHours | None = None
    attachment_max_size: Size = 10 * 1024 * 1024
    """The largest single attachment (`5MB`, `500KB`); checked at config time and when fetching."""
    attachments_max_total: Size = 20 * 1024 * 1024
    """All attachments of one email together."""
    attachment_fetch_timeout: Duration = timedelta(seconds=10)


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
    connections: int = Field(default=8, ge=1, le=100)
    """Kept-open SMTP connections per worker process (to `SMTP_URL`). Each connection waits,
    around its DATA, for two durable writes (the start of the transaction, the previous
    email's outcome): with 4 a worker idled a fifth of the time; 8 keep it busy. A worker
    killed outright leaves at most this many emails `unknown`."""
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


class CampaignSender(Strict):
    """Per-campaign sender: each key overrides the global `sender`'s."""

    from_: str | None = Field(default=None, alias="from")
    reply_to: str | None = None
    postal_address: str | None = None

    @field_validator("from_")
    @classmethod
    def _has_address(cls, value: str | None) -> str | None:
        return check_address(value) if value is not None else None


class AttachmentFile(Strict):
    path: str
    filename: str | None = None
    content_type: str | None = None


class SubjectVariant(Strict):
    text: str
    weight: float = Field(default=1.0, gt=0)


class AbTest(Strict):
    decide_after: str
    """`500 sends` or a duration (`3d`) after the first send of the test."""
    metric: Literal["click_rate", "open_rate"] = "click_rate"
    confidence: float = Field(default=0.95, gt=0.5, lt=1)

    @field_validator("decide_after")
    @classmethod
    def _sends_or_duration(cls, value: Any) -> str:
        text = str(value).strip()
        if re.fullmatch(r"\d+\s*sends?", text):
            return text
        try:
            parse_duration(text)
        except ValueError:
            raise ValueError(f"expected '500 sends' or a duration like 3d, got {value!r}") from None
        return text

    @property
    def sends(self) -> int | None:
        match = re.fullmatch(r"(\d+)\s*sends?", self.decide_after)
        return int(match.group(1)) if match else None

    @property
    def after(self) -> timedelta | None:
        return None if self.sends is not None else parse_duration(self.decide_after)


class Campaign(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    name: str | None = None
    extends: str | None = None
    """Copied from this campaign, then overridden by the keys given here (resolved by the loader)."""
    subject: str
    subjects: list[SubjectVariant] | None = Field(default=None, min_length=2)
    """A/B subject variants; `subject` defaults to the first one's text."""
    ab: AbTest | None = None
    sender: CampaignSender | None = None
    data_example: dict[str, Any] | None = None
    """What `data` looks like for this campaign; `config check` renders the templates with it."""
    attachments: list[str | AttachmentFile] = Field(default_factory=list)
    attachments_from: list[str] = Field(default_factory=list)
    """URL globs a trigger's `data.attachments` may be fetched from."""
    require_attachments: bool = False
    quiet_hours: QuietHours | bool | None = None
    """Overrides `limits.quiet_hours`; `false` turns it off, `true` applies the global one
    (transactional campaigns ignore quiet hours unless they say so)."""
    html: str | None = None
    template: str | None = None
    kind: Literal["marketing", "transactional"] = "marketing"
    resend: Resend | None = None
    cooldown: Duration = timedelta(days=30)
    audience: Audience = Field(default_factory=Audience)
    paused: bool = False
    """Initial state only; pausing at run time is stored in the database."""

    _version: str = PrivateAttr(default="")
    _files: list[Any] = PrivateAttr(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _subject_from_variants(cls, value: Any) -> Any:
        if isinstance(value, dict) and "subject" not in value and isinstance(value.get("subjects"), list):
            first = value["subjects"][0] if value["subjects"] else None
            if isinstance(first, dict) and isinstance(first.get("text"), str):
                value = {**value, "subject": first["text"]}
        return value

    @model_validator(mode="after")
    def _one_body(self) -> "Campaign":
        if (self.html is None) == (self.template is None):
            raise ValueError("give exactly one of 'html' (inline) or 'template' (a file)")
        if self.ab is not None and not self.subjects:
            raise ValueError("ab: needs 'subjects' (two or more variants)")
        return self

    @property
    def version(self) -> str:
        """A hash of the campaign's settings (set by the loader)."""
        return self._version

    @property
    def files(self) -> list[Any]:
        """The static attachments, read by the loader: `Attachment`s."""
        return self._files

    def quiet(self, default: QuietHours | None) -> QuietHours | None:
        """The quiet hours that apply: the campaign's own, else the global ones for marketing
        campaigns (transactional mail ignores them unless it says `quiet_hours: true`)."""
        if isinstance(self.quiet_hours, QuietHours):
            return self.quiet_hours
        if self.quiet_hours is False:
            return None
        if self.quiet_hours is True or self.kind == "marketing":
            return default
        return None

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
    _warnings: list[Any] = PrivateAttr(default_factory=list)
    _text_hash: str = PrivateAttr(default="")

    @property
    def warnings(self) -> list[Any]:
        """What `config check` shows but does not refuse (`ConfigProblem`s)."""
        return self._warnings

    @property
    def text_hash(self) -> str:
        """sha256 of the YAML text this config was parsed from."""
        return self._text_hash

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
