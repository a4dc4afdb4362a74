"""Shapes of Salesforce names and Ids. Both end up in REST paths (`sobjects/{type}/{id}`), so
anything from a payload is checked against them first."""

from __future__ import annotations

import re

_OBJECT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,79}$")
_RECORD_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
_NOT_OBJECTS = frozenset({"bulk", "bulk2"})
"""Attribute names simple-salesforce reserves for its Bulk API handlers."""


def is_object_name(value: object) -> bool:
    """An sObject API name: `Contact`, `Lead`, `HCP_Profile__c`."""
    return isinstance(value, str) and bool(_OBJECT_NAME.match(value)) and value not in _NOT_OBJECTS


def is_record_id(value: object) -> bool:
    """A 15-character (case-sensitive) or 18-character (case-safe) Id."""
    return isinstance(value, str) and bool(_RECORD_ID.match(value))
