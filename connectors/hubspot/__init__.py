"""HubSpot: signed Webhooks API and workflow webhooks in, email engagements and notes out.

Importing this package registers `HubSpotConnector` under the name "hubspot".
"""

from connectors.hubspot.client import HubSpotApiError
from connectors.hubspot.connector import HubSpotConnector

__all__ = ["HubSpotApiError", "HubSpotConnector"]
