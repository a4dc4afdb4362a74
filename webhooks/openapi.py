"""The OpenAPI document: each route's docstring (its summary and specific answers), completed
here with what every route shares, so a client generator or a fuzzer reaches every operation:
the path parameters, the bearer security scheme with 401/403, the JSON error schema on every
4xx/5xx answer, 400 for a malformed URL and 503 (with Retry-After) while a dependency is down.
"""

from __future__ import annotations

import copy
import re
from typing import Any

ERROR = {"$ref": "#/components/schemas/Error"}
JSON_ERROR = {"application/json": {"schema": ERROR}}
SOAP = {"text/xml": {"schema": {"type": "string"}}}
NPI = {"type": "string", "pattern": "^[0-9]{10}$"}
EMAIL = {"type": "string", "format": "email", "maxLength": 254}
HEALTH = {"application/json": {"schema": {
    "type": "object", "required": ["status"],
    "properties": {"status": {"type": "string", "enum": ["ok", "degraded"]}},
    "additionalProperties": {"type": "string", "enum": ["ok", "unavailable"]},
}}}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "string"}}}

COMPONENTS: dict[str, Any] = {
    "securitySchemes": {
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "An API key from `trigger-email apikey create NAME [--scope ...]`"},
    },
    "schemas": {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {"type": "string", "description": "What was wrong, for a person to read"},
                "field": {"type": "string", "description": "The field, header or URL part at fault"},
            },
        },
    },
}

PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "trigger_id": {"type": "string", "minLength": 1, "description": "A trigger id (trg_…)"},
    "campaign_id": {"type": "string", "minLength": 1, "description": "A campaign id from the config"},
    "token": {"type": "string", "minLength": 1, "description": "The signed token from the email"},
}

EXTRA: dict[tuple[str, str], dict[str, Any]] = {
    ("/v1/suppressions", "get"): {"parameters": [
        {"in": "query", "name": "npi", "required": False, "schema": NPI},
        {"in": "query", "name": "email", "required": False, "schema": EMAIL},
    ]},
    ("/v1/suppressions", "post"): {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object",
        "description": "Exactly one of npi and email",
        "properties": {
            "npi": {**NPI, "nullable": True}, "email": {**EMAIL, "nullable": True},
            "reason": {"type": "string", "maxLength": 32, "nullable": True},
            "campaign_id": {"type": "string", "maxLength": 128, "nullable": True},
            "detail": {"type": "string", "maxLength": 1000, "nullable": True},
        },
    }}}}},
    ("/v1/suppressions", "delete"): {"parameters": [
        {"in": "query", "name": "npi", "required": False, "schema": NPI},
        {"in": "query", "name": "email", "required": False, "schema": EMAIL},
    ]},
    ("/v1/outbox", "get"): {"parameters": [
        {"in": "query", "name": "status", "required": False,
         "schema": {"type": "string", "enum": ["pending", "pushed", "dead"]}},
        {"in": "query", "name": "limit", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
    ]},
    ("/v1/outbox/retry", "post"): {"requestBody": {"required": False, "content": {"application/json": {"schema": {
        "type": "object", "properties": {"ids": {"type": "array", "maxItems": 1000,
                                                 "items": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}}},
    }}}}},
    ("/webhooks/hubspot", "post"): {
        "parameters": [
            {"in": "header", "name": "X-HubSpot-Signature-v3", "required": False, "schema": {"type": "string"}},
            {"in": "header", "name": "X-HubSpot-Request-Timestamp", "required": False, "schema": {"type": "string"}},
        ],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "description": "A Webhooks API batch (array of events) or a workflow webhook (one object)",
            "oneOf": [{"type": "array", "items": {"type": "object"}}, {"type": "object"}],
        }}}},
    },
    ("/webhooks/salesforce/events", "post"): {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"description": "One event or a batch", "oneOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}]},
    }}}},
    ("/webhooks/salesforce/outbound", "post"): {"requestBody": {"required": True, "content": {
        "text/xml": {"schema": {"type": "string", "description": "A SOAP notifications envelope"}},
    }}},
    ("/u/{token}", "post"): {"requestBody": {"required": False, "content": {"application/x-www-form-urlencoded": {"schema": {
        "type": "object", "properties": {"List-Unsubscribe": {"type": "string", "enum": ["One-Click"]}},
    }}}}},
}

_SOAP_PATHS = {"/webhooks/salesforce/outbound"}
_BODY_METHODS = {"post", "put", "patch", "delete"}


def complete(document: dict[str, Any]) -> dict[str, Any]:
    """`document` (from the docstrings) with the shared parts filled in."""
    document = copy.deepcopy(document)
    document.setdefault("components", {})
    for key, value in COMPONENTS.items():
        document["components"].setdefault(key, {}).update(copy.deepcopy(value))
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            _complete_operation(path, method, operation)
    return document


def _complete_operation(path: str, method: str, operation: dict[str, Any]) -> None:
    extra = EXTRA.get((path, method), {})
    parameters = operation.setdefault("parameters", [])
    known = {(p.get("in"), p.get("name")) for p in parameters}
    for name in re.findall(r"\{([^}:]+)(?::[^}]*)?\}", path):
        if ("path", name) not in known:
            parameters.append({"in": "path", "name": name, "required": True,
                               "schema": PATH_PARAMETERS.get(name, {"type": "string", "minLength": 1})})
    for parameter in extra.get("parameters", []):
        if (parameter["in"], parameter["name"]) not in known:
            parameters.append(copy.deepcopy(parameter))
    if not parameters:
        del operation["parameters"]
    if "requestBody" in extra and "requestBody" not in operation:
        operation["requestBody"] = copy.deepcopy(extra["requestBody"])

    responses = operation.setdefault("responses", {})
    protected = path.startswith(("/v1/", "/dev/"))
    errors = SOAP if path in _SOAP_PATHS else JSON_ERROR
    shared = {"400": "Malformed request (control characters in the URL, hostile JSON)",
              "503": "A dependency (database, Redis) does not answer; retry after Retry-After"}
    if protected:
        operation["security"] = [{"bearer": []}]
        shared["401"] = "Missing, unknown or revoked API key"
        shared["403"] = "The API key lacks the scope this operation needs"
    if protected and (method in _BODY_METHODS or operation.get("parameters")):
        shared["422"] = "Invalid field: {error, field}"
    if method in _BODY_METHODS and "requestBody" in operation:
        shared["413"] = "Body too large"
    for code, description in shared.items():
        responses.setdefault(code, {"description": description})
    for code, response in responses.items():
        if str(code)[0] in "45" and "content" not in response:
            response["content"] = copy.deepcopy(HEALTH if path == "/health" and str(code) == "503" else errors)
        if str(code) == "503":
            response.setdefault("headers", copy.deepcopy(RETRY_AFTER))
