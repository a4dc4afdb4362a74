"""Salesforce Outbound Messages: the SOAP `notifications()` call a workflow rule or flow sends.

The envelope carries OrganizationId, ActionId, an optional SessionId, the enterprise and
partner API URLs and 1–100 `Notification`s, each a notification `Id` plus an `sObject` whose
`xsi:type` names the object (`sf:Contact`) and whose children are the fields the admin chose.

Salesforce keeps re-sending a message until it receives `notificationsResponse/Ack = true`,
so the route answers `soap_ack()` only after the events are stored; a refusal is answered
with `soap_fault()`, which Salesforce shows in the outbound message queue.

The body is untrusted XML from the internet: it is parsed with defusedxml and any DTD is
refused, which rules out entity expansion (billion laughs) and external entities (XXE).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

import defusedxml
import defusedxml.ElementTree as SafeET

from connectors.base import WebhookRejected
from connectors.salesforce.ids import is_object_name, is_record_id

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
OUTBOUND_NS = "http://soap.sforce.com/2005/09/outbound"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
MAX_NOTIFICATIONS = 100
"""The outbound messaging WSDL declares `Notification maxOccurs="100"`."""

SOAP_MEDIA_TYPE = "text/xml"


def soap_ack() -> str:
    """The acknowledgement Salesforce waits for before it drops a message from its queue."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<soapenv:Envelope xmlns:soapenv="{SOAP_ENV}">'
        "<soapenv:Body>"
        f'<notificationsResponse xmlns="{OUTBOUND_NS}"><Ack>true</Ack></notificationsResponse>'
        "</soapenv:Body>"
        "</soapenv:Envelope>"
    )


def soap_fault(message: str, *, code: str = "Client") -> str:
    """A SOAP 1.1 fault. `Client` blames the message (it will not succeed on retry);
    `Server` says the receiver failed (Salesforce retries)."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<soapenv:Envelope xmlns:soapenv="{SOAP_ENV}">'
        "<soapenv:Body><soapenv:Fault>"
        f"<faultcode>soapenv:{escape(code)}</faultcode>"
        f"<faultstring>{escape(message)}</faultstring>"
        "</soapenv:Fault></soapenv:Body>"
        "</soapenv:Envelope>"
    )


def rejected(status: int, reason: str) -> WebhookRejected:
    """A refusal Salesforce can read: the reason travels as a SOAP fault."""
    return WebhookRejected(status, reason, body=soap_fault(reason), media_type=SOAP_MEDIA_TYPE)


def is_soap(body: bytes) -> bool:
    """True when the body is XML (an outbound message), False for JSON events."""
    return body.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"<"


@dataclass
class OutboundNotification:
    id: str
    object_type: str
    object_id: str
    fields: dict[str, Any]


@dataclass
class OutboundMessage:
    organization_id: str
    action_id: str | None
    enterprise_url: str | None
    partner_url: str | None
    notifications: list[OutboundNotification] = field(default_factory=list)
    """SessionId is deliberately not kept: it is a live API session of the sending user and
    must not end up in the event store."""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _text(element: ET.Element | None) -> str | None:
    if element is None or element.get(f"{{{XSI_NS}}}nil") == "true":
        return None
    return (element.text or "").strip()


def _child(parent: ET.Element, name: str, namespace: str | None = OUTBOUND_NS) -> ET.Element | None:
    for child in parent:
        if _local(child.tag) == name and (namespace is None or child.tag == f"{{{namespace}}}{name}"):
            return child
    return None


def parse_outbound(body: bytes) -> OutboundMessage:
    """Parse an outbound message or raise WebhookRejected(400) with a SOAP fault."""
    try:
        root = SafeET.fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException:
        raise rejected(400, "DTDs and entity declarations are not accepted") from None
    except (ET.ParseError, ValueError) as exc:
        raise rejected(400, f"malformed XML: {exc}") from None
    if root.tag != f"{{{SOAP_ENV}}}Envelope":
        raise rejected(400, "expected a SOAP 1.1 Envelope")
    envelope_body = _child(root, "Body", SOAP_ENV)
    notifications = _child(envelope_body, "notifications") if envelope_body is not None else None
    if notifications is None:
        raise rejected(400, f"expected Envelope/Body/notifications in namespace {OUTBOUND_NS}")
    organization_id = _text(_child(notifications, "OrganizationId"))
    if not is_record_id(organization_id):
        raise rejected(400, "notifications/OrganizationId: expected a 15- or 18-character Salesforce Id")
    items = [child for child in notifications if child.tag == f"{{{OUTBOUND_NS}}}Notification"]
    if not items:
        raise rejected(400, "notifications: expected at least one Notification")
    if len(items) > MAX_NOTIFICATIONS:
        raise rejected(400, f"notifications: {len(items)} Notification elements, at most {MAX_NOTIFICATIONS} allowed")
    message = OutboundMessage(
        organization_id=organization_id,
        action_id=_text(_child(notifications, "ActionId")),
        enterprise_url=_text(_child(notifications, "EnterpriseUrl")),
        partner_url=_text(_child(notifications, "PartnerUrl")),
    )
    for index, item in enumerate(items):
        message.notifications.append(_notification(item, f"Notification[{index}]"))
    return message


def _notification(item: ET.Element, where: str) -> OutboundNotification:
    notification_id = _text(_child(item, "Id"))
    if not notification_id:
        raise rejected(400, f"{where}/Id: missing")
    sobject = _child(item, "sObject")
    if sobject is None:
        raise rejected(400, f"{where}/sObject: missing")
    declared = sobject.get(f"{{{XSI_NS}}}type") or ""
    object_type = declared.rsplit(":", 1)[-1]
    if not is_object_name(object_type):
        raise rejected(400, f"{where}/sObject: xsi:type {declared!r} does not name an object")
    fields: dict[str, Any] = {}
    for element in sobject:
        fields[_local(element.tag)] = _text(element)
    object_id = fields.get("Id")
    if not is_record_id(object_id):
        raise rejected(400, f"{where}/sObject/Id: expected a 15- or 18-character Salesforce Id")
    return OutboundNotification(id=notification_id, object_type=object_type, object_id=object_id, fields=fields)


def same_org(given: str, configured: str) -> bool:
    """15- and 18-character Ids name the same org: the 3 extra characters only encode the
    case of the first 15, which are compared case-sensitively."""
    return len(given) in (15, 18) and len(configured) in (15, 18) and given[:15] == configured[:15]
