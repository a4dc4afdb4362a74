"""Campaign rendering: subject and HTML through the config's Jinja2 sandbox. The plain text
part is derived from the HTML when the email is composed (core.markup)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from config import Campaign
from config.templating import render
from core.names import decode_encoded_words


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str


def render_campaign(
    campaign: Campaign, hcp: Mapping[str, Any], data: Mapping[str, Any], *, resend: bool = False,
    variant: int | None = None,
) -> Rendered:
    """`variant` picks an A/B subject from `subjects`."""
    people = {key: decode_encoded_words(value) if isinstance(value, str) and "=?" in value else value
              for key, value in hcp.items()}
    context = {"hcp": people, "data": dict(data), "campaign": campaign.model_dump(by_alias=True)}
    source = campaign.subject
    if variant is not None and campaign.subjects and 0 <= variant < len(campaign.subjects):
        source = campaign.subjects[variant].text
    subject = _one_line(render(source, html=False, **context))
    if resend and campaign.resend and campaign.resend.subject:
        subject = _one_line(render(campaign.resend.subject, html=False, subject=subject, **context))
    html = render(campaign.body, html=True, subject=subject, **context)
    return Rendered(subject=subject, html=html)


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()
