"""A generic outgoing webhook for engagement activities, signed with the Standard Webhooks
scheme (`webhook-id`, `webhook-timestamp`, `webhook-signature`)."""

from connectors.webhook.connector import WebhookConnector, sign

__all__ = ["WebhookConnector", "sign"]
