"""HubSpot request signatures (v1, v2, v3), checked against our one clock.

The hash itself comes from the SDK's `Signature.get_signature`; only the freshness check of
v3 is done here, because `Signature.is_valid` reads the wall clock and tests move a
`ManualClock` instead.
"""

from __future__ import annotations

import hmac
from datetime import datetime, timedelta, timezone

from hubspot.utils.signature import Signature

from connectors.base import InboundRequest, WebhookRejected

MAX_AGE = timedelta(seconds=Signature.MAX_ALLOWED_TIMESTAMP)
"""HubSpot: reject a v3 request whose timestamp is older than 5 minutes."""

# HubSpot signs v3 URIs with these characters decoded; a proxy may hand us either form.
_V3_DECODED = {
    "%3A": ":", "%2F": "/", "%3F": "?", "%40": "@", "%21": "!", "%24": "$",
    "%27": "'", "%28": "(", "%29": ")", "%2A": "*", "%2C": ",", "%3B": ";",
}


def verify_signature(request: InboundRequest, client_secret: str | None, now: datetime) -> None:
    """Raise `WebhookRejected(401)` unless `request` carries a valid HubSpot signature.

    v3 is preferred when present (it binds method, URI, body and a timestamp); otherwise the
    version named by `x-hubspot-signature-version` (v1 or v2) is checked.
    """
    if not client_secret:
        raise WebhookRejected(401, "crm.hubspot.client_secret is not configured; cannot verify signatures")
    headers = request.headers
    try:
        body = request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookRejected(401, "request body is not UTF-8, so its signature cannot match") from None
    method = request.method.upper()

    signature_v3 = headers.get("x-hubspot-signature-v3")
    if signature_v3:
        timestamp = headers.get("x-hubspot-request-timestamp")
        _check_fresh(timestamp, now)
        for uri in _uri_variants(request.public_url):
            expected = Signature.get_signature(client_secret, body, "v3", uri, method, timestamp)
            if hmac.compare_digest(expected.encode(), signature_v3.encode()):
                return
        raise WebhookRejected(401, "x-hubspot-signature-v3 does not match")

    signature = headers.get("x-hubspot-signature")
    if not signature:
        raise WebhookRejected(401, "missing x-hubspot-signature-v3 / x-hubspot-signature header")
    version = (headers.get("x-hubspot-signature-version") or "v1").lower()
    if version not in ("v1", "v2"):
        raise WebhookRejected(401, f"unsupported x-hubspot-signature-version {version!r}")
    expected = Signature.get_signature(client_secret, body, version, request.public_url, method)
    if not hmac.compare_digest(expected.encode(), signature.strip().lower().encode()):
        raise WebhookRejected(401, f"x-hubspot-signature ({version}) does not match")


def _check_fresh(timestamp: str | None, now: datetime) -> None:
    if not timestamp:
        raise WebhookRejected(401, "missing x-hubspot-request-timestamp header")
    try:
        sent = datetime.fromtimestamp(int(timestamp) / 1000, tz=timezone.utc)
    except (ValueError, OverflowError, OSError):
        raise WebhookRejected(401, f"x-hubspot-request-timestamp is not epoch milliseconds: {timestamp!r}") from None
    if now - sent > MAX_AGE:
        raise WebhookRejected(401, "x-hubspot-request-timestamp is older than 5 minutes")
    if sent - now > MAX_AGE:
        raise WebhookRejected(401, "x-hubspot-request-timestamp is more than 5 minutes in the future")


def _uri_variants(uri: str) -> list[str]:
    decoded = uri
    for encoded, char in _V3_DECODED.items():
        decoded = decoded.replace(encoded, char).replace(encoded.lower(), char)
    return [uri] if decoded == uri else [uri, decoded]
