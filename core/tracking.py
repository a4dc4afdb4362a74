"""Signed tokens for opens, clicks, unsubscribes and bounces, and the HTML rewrite that puts
them in an email.

A click token names a message and the index of a link *in that message*; the redirect looks
the URL up in the message's stored links, so a forged or altered token can never make the
service an open redirect.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any

from bs4 import BeautifulSoup
from itsdangerous import BadSignature, URLSafeSerializer

_UNTRACKED_SCHEMES = ("mailto:", "tel:", "sms:", "#", "javascript:")
_ARITY = {"o": 2, "c": 3, "u": 2}
_MESSAGE_ID = re.compile(r"[A-Za-z0-9_]{1,40}")


class Tokens:
    def __init__(self, secret_key: str):
        if not secret_key:
            raise ValueError("SECRET_KEY is empty; tracking and unsubscribe links need it")
        self._secret = secret_key.encode()
        self._serializer = URLSafeSerializer(secret_key, salt="trigger-email.tracking")

    def open(self, message_id: str) -> str:
        return self._serializer.dumps(["o", message_id])

    def click(self, message_id: str, link_index: int) -> str:
        return self._serializer.dumps(["c", message_id, link_index])

    def unsubscribe(self, message_id: str) -> str:
        return self._serializer.dumps(["u", message_id])

    def read(self, token: str, kind: str) -> list[Any] | None:
        """The token's payload when it is genuine and of `kind`, else None."""
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
        mac = hmac.new(self._secret, core.encode(), hashlib.sha256).hexdigest()[:12]
        return f"{core}.{mac}"

    def read_bounce(self, token: str) -> str | None:
        core, _, mac = token.lower().partition(".")
        expected = hmac.new(self._secret, core.encode(), hashlib.sha256).hexdigest()[:12]
        return f"msg_{core}" if mac and mac.isascii() and hmac.compare_digest(mac, expected) else None


@dataclass
class TrackedHtml:
    html: str
    links: list[str]


def track_html(
    html: str | BeautifulSoup, *, message_id: str, tokens: Tokens, public_url: str, opens: bool, clicks: bool
) -> TrackedHtml:
    """Rewrite every http(s) link to the click redirect and add the open pixel. Links marked
    `data-no-track`, and the unsubscribe link, stay as written. A parsed document is changed
    in place."""
    soup = BeautifulSoup(html, "html.parser") if isinstance(html, str) else html
    links: list[str] = []
    if clicks:
        for anchor in soup.find_all("a", href=True):
            href = str(anchor["href"]).strip()
            if anchor.has_attr("data-no-track") or anchor.has_attr("data-unsubscribe"):
                continue
            if href.lower().startswith(_UNTRACKED_SCHEMES) or not href.lower().startswith(("http://", "https://")):
                continue
            anchor["href"] = f"{public_url}/t/c/{tokens.click(message_id, len(links))}"
            links.append(href)
    if opens:
        pixel = soup.new_tag(
            "img", src=f"{public_url}/t/o/{tokens.open(message_id)}", width="1", height="1", alt="",
            style="display:block;width:1px;height:1px;border:0",
        )
        (soup.body or soup).append(pixel)
    return TrackedHtml(html=str(soup), links=links)
