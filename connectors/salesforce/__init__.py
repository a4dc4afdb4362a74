"""Salesforce: Outbound Messages (SOAP) and Flow / Apex JSON events in, completed email Tasks
out. Importing the package registers `SalesforceConnector` under the name `salesforce`."""

from connectors.salesforce.client import SalesforceCallFailed, SalesforceClient, SalesforceLoginFailed
from connectors.salesforce.connector import SalesforceConnector, request_kind
from connectors.salesforce.events import sign as sign_event
from connectors.salesforce.soap import SOAP_MEDIA_TYPE, is_soap, soap_ack, soap_fault

__all__ = [
    "SOAP_MEDIA_TYPE",
    "SalesforceCallFailed",
    "SalesforceClient",
    "SalesforceConnector",
    "SalesforceLoginFailed",
    "is_soap",
    "request_kind",
    "sign_event",
    "soap_ack",
    "soap_fault",
]
