"""Campaign rendering: subject and HTML through the config's Jinja2 sandbox, plus the plain
text part derived from the HTML (mail clients and spam filters both expect one)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from bs4 import BeautifulSoup, Comment, Doctype, NavigableString, Tag

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


_BLOCKS = {"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "blockquote", "hr"}


_HIDDEN = {"script", "style", "head", "title", "img"}


def parse_html(html: str) -> BeautifulSoup:
    return BeautifulSoup(html, "html.parser")


def html_to_text(html: str | BeautifulSoup) -> str:
    """Readable text for the text/plain part: paragraphs kept, links as `text (url)`.
    Reads a parsed document without changing it, so the caller can parse once."""
    soup = parse_html(html) if isinstance(html, str) else html
    parts: list[str] = []

    def walk(node: Tag) -> None:
        for child in node.children:
            if isinstance(child, (Comment, Doctype)):
                continue
            if isinstance(child, Tag) and child.name in _HIDDEN:
                continue
            if isinstance(child, NavigableString):
                parts.append(re.sub(r"\s+", " ", str(child)))
            elif isinstance(child, Tag):
                if child.name in _BLOCKS:
                    parts.append("\n\n" if child.name not in ("br", "li", "tr") else "\n")
                if child.name == "li":
                    parts.append("- ")
                walk(child)
                href = child.get("href") if child.name == "a" else None
                if isinstance(href, str) and href.startswith(("http://", "https://")):
                    label = child.get_text(" ", strip=True)
                    if label != href:
                        parts.append(f" ({href})")
                if child.name in _BLOCKS and child.name != "br":
                    parts.append("\n")

    walk(soup)
    text = "".join(parts)
    lines = [line.strip() for line in text.splitlines()]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
