"""From a message row to the MIME message that goes on the wire: footer, unsubscribe
headers (RFC 8058), VERP Return-Path, tracking, text part."""

from __future__ import annotations

from email.message import Message
from html import escape
from typing import Any

from config import Campaign
from core.mailer import OutgoingEmail, address_of
from core.markup import append_to_body
from core.runtime import Runtime
from core.tracking import Tokens, track_html


def tokens_for(rt: Runtime) -> Tokens:
    tokens = rt.extras.get("tokens")
    if tokens is None:
        tokens = rt.extras["tokens"] = Tokens(rt.settings.secret_key)
    return tokens


def _footer(rt: Runtime, unsubscribe_url: str | None, campaign: Campaign | None = None) -> str:
    sender = rt.config.sender
    own = campaign.sender if campaign is not None else None
    postal_address = (own.postal_address if own else None) or sender.postal_address
    lines = []
    if postal_address:
        lines.append(escape(postal_address))
    if unsubscribe_url:
        lines.append(
            f'<a href="{escape(unsubscribe_url)}" data-unsubscribe="1">Unsubscribe</a> from these emails.'
        )
    if not lines:
        return ""
    return (
        '<div style="margin-top:24px;font-size:12px;color:#666">' + "<br>".join(lines) + "</div>"
    )


def compose(
    rt: Runtime, message: dict[str, Any], campaign: Campaign, attachments: list[tuple[str, str, bytes]] | None = None
) -> tuple[OutgoingEmail, Message]:
    config = rt.config
    tokens = tokens_for(rt)
    public_url = config.public_url
    own = campaign.sender
    sender_from = (own.from_ if own else None) or config.sender.from_
    reply_to = (own.reply_to if own else None) or config.sender.reply_to
    sender_address = address_of(sender_from)
    sender_domain = sender_address.rpartition("@")[2]
    bounce_token = tokens.bounce(message["id"])
    headers: dict[str, str] = {"X-Trigger-Email-Token": bounce_token}
    unsubscribe_url = None
    if campaign.kind == "marketing":
        unsubscribe_token = tokens.unsubscribe(message["id"])
        unsubscribe_url = f"{public_url}/u/{unsubscribe_token}"
        mailto = config.sender.unsubscribe_mailto or f"unsubscribe@{config.sender.bounce_domain or sender_domain}"
        headers["List-Unsubscribe"] = f"<{unsubscribe_url}>, <mailto:{mailto}?subject=unsubscribe-{bounce_token}>"
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    tracked = track_html(
        append_to_body(message["html"] or "", _footer(rt, unsubscribe_url, campaign)),
        message_id=message["id"], tokens=tokens, public_url=public_url, opens=config.tracking.opens, clicks=config.tracking.clicks,
    )
    message["links"] = tracked.links
    envelope_from = (
        f"bounce+{bounce_token}@{config.sender.bounce_domain}" if config.sender.bounce_domain else sender_address
    )
    email = OutgoingEmail(
        sender=sender_from,
        to=message["to_address"],
        subject=message["subject"],
        html=tracked.html,
        text=tracked.text,
        date=rt.clock.now(),
        envelope_from=envelope_from,
        reply_to=reply_to,
        headers=headers,
        attachments=attachments or [],
    )
    return email, email.to_mime()
