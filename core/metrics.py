"""Prometheus metrics. Counters live in the process that does the work; gauges that reflect
database state are read at scrape time so every `serve` replica reports the same truth."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

TRIGGERS = Counter("trigger_email_triggers_total", "Triggers decided, by outcome", ["outcome"])
MESSAGES = Counter("trigger_email_messages_total", "Message delivery results", ["result"])
WEBHOOKS = Counter("trigger_email_webhook_events_total", "Inbound CRM events", ["source", "result"])
TRACKING = Counter("trigger_email_tracking_events_total", "Opens, clicks and unsubscribes", ["kind"])
OUTBOX = Counter("trigger_email_outbox_results_total", "CRM activity pushes", ["crm", "result"])
SEND_SECONDS = Histogram("trigger_email_smtp_send_seconds", "Time to hand one email to SMTP")
DOMAIN_BLOCKS = Counter(
    "trigger_email_domain_blocks_total", "Blocks (the receiver refused us) by receiving domain and reason", ["domain", "reason"]
)
DOMAIN_ALERTS = Counter("trigger_email_domain_alerts_total", "Receiving domains paused after repeated blocks", ["domain"])
BOUNCES = Counter("trigger_email_bounces_total", "Classified failures by kind and reason", ["kind", "reason"])
