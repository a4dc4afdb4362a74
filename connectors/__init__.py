"""CRM connectors: one sub-package per CRM, each registering a `connectors.base.Connector`."""

from connectors import hubspot, salesforce, webhook  # noqa: F401  (registration)
