"""Signed tokens for opens, clicks, unsubscribes and bounces, and the HTML rewrite that puts
them in an email.

A click token names a message and the index of a link *in that message*; the redirect looks
the URL up in the message's stored links, so a forged or altered token can never make the
service an open redirect.

Tokens are `KIND.MESSAGE_ID[.LINK].MAC`, the MAC a truncated HMAC-SHA256 (128 bits) under a
key derived from `SECRET_KEY`: four of them go into every email, and itsdangerous' JSON +
zlib + base64 + derived-key signing took a tenth of the worker's time per email. Tokens of
the earlier itsdangerous format, in emails already sent, are still read.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from html import escape
from typing import Any, Mapping

from itsdangerous import BadSignature, URLSafeSerializer

from core.markup import append_to_body, transform

_UNTRACKED_SCHEMES = ("mailto:", "tel:", "sms:", "#", "javascript:")
_ARITY = {"o": 2, "c": 3, "u": 2}
_MESSAGE_ID = re.compile(r"[A-Za-z0-9_]{1,40}")
_COMPACT = re.compile(r"([ocu])\.([A-Za-z0-9_]{1,40})(?:\.([0-9]{1,4}))?\.([A-Za-z0-9_-]{22})")


class Tokens:
    def __init__(self, secret_key: str):
        if not secret_key:
            raise ValueError("SECRET_KEY is empty; tracking and unsubscribe links need it")
        self._secret = secret_key.encode()
        self._key = hmac.new(self._secret, b"trigger-email.tracking.v2", hashlib.sha256).digest()
        self._serializer = URLSafeSerializer(secret_key, salt="trigger-email.tracking")

    def _signed(self, body: str) -> str:
        return f"{body}.{self._mac(body)}"

    def _mac(self, body: str) -> str:
        digest = hmac.digest(self._key, body.encode(), "sha256")[:16]  # one-shot: the C path, no HMAC object
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def open(self, message_id: str) -> str:
        return self._signed(f"o.{message_id}")

    def click(self, message_id: str, link_index: int) -> str:
        return self._signed(f"c.{message_id}.{link_index}")

    def unsubscribe(self, message_id: str) -> str:
        return self._signed(f"u.{message_id}")

    def read(self, token: str, kind: str) -> list[Any] | None:
        """The token's payload ([kind, message id] and, for a click, the link's index) when it
        is genuine and of `kind`, else None."""
        payload: Any
        compact = _COMPACT.fullmatch(token)
        if compact is not None:
            found, message_id, link, mac = compact.groups()
            if not hmac.compare_digest(mac, self._mac(token[: -len(mac) - 1])):
                return None
            payload = [found, message_id] + ([int(link)] if link is not None else [])
        else:
            try:
                payload = self._serializer.loads(token)
            except BadSignature:
                return None
        if not isinstance(payload, list) or len(payload) != _ARITY.get(kind, 0) or payload[0] != kind:
            return None
        # A token signed with our key but carrying another shape (an old format, a leaked key
        # used to probe) is unknown, never an error.
        if not isinstance(payload[1], str) or not _MESSAGE_ID.fullmatch(payload[1]):
            return None
        if kind == "c" and not (type(payload[2]) is int and 0 <= payload[2] < 10_000):
            return None
        return payload

    def bounce(self, message_id: str) -> str:
        """Short enough for a VERP local part (64 characters at most)."""
        core = message_id.removeprefix("msg_")
        mac = hmac.digest(self._secret, core.encode(), "sha256").hex()[:12]
        return f"{core}.{mac}"

    def read_bounce(self, token: str) -> str | None:
        core, _, mac = token.lower().partition(".")
        expected = hmac.new(self._secret, core.encode(), hashlib.sha256).hexdigest()[:12]
        return f"msg_{core}" if mac and mac.isascii() and hmac.compare_digest(mac, expected) else None


@dataclass
class TrackedHtml:
    html: str
    links: list[str]
    text: str
    """The text/plain part, read in the same pass (its links as written, not tracked)."""


_PIXEL_STYLE = "display:block;width:1px;height:1px;border:0"


def track_html(
    html: str, *, message_id: str, tokens: Tokens, public_url: str, opens: bool, clicks: bool
) -> TrackedHtml:
    """Rewrite every http(s) link to the click redirect and add the open pixel at the end of
    the body. Links marked `data-no-track`, and the unsubscribe link, stay as written."""
    links: list[str] = []

    def click(attributes: Mapping[str, str | None]) -> str | None:
        href = (attributes.get("href") or "").strip()
        if "data-no-track" in attributes or "data-unsubscribe" in attributes:
            return None
        lowered = href.lower()
        if lowered.startswith(_UNTRACKED_SCHEMES) or not lowered.startswith(("http://", "https://")):
            return None
        links.append(href)
        return f"{public_url}/t/c/{tokens.click(message_id, len(links) - 1)}"

    tracked, text = transform(html, click if clicks else None)
    if opens:
        pixel = (
            f'<img src="{escape(public_url)}/t/o/{tokens.open(message_id)}" width="1" height="1" alt="" '
            f'style="{_PIXEL_STYLE}"/>'
        )
        tracked = append_to_body(tracked, pixel)
    return TrackedHtml(html=tracked, links=links, text=text)
