"""Attachments: the campaign's files (read with the config) and per-trigger files by URL
(`data.attachments`), fetched only from the campaign's `attachments_from` allow-list, with a
size cap and a timeout, and cached for a while."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
from sqlalchemy import bindparam, select

from config import Campaign
from config.checks import Attachment, guess_type, url_allowed
from config.durations import format_size
from core.db import triggers

log = logging.getLogger(__name__)

CACHE_SECONDS = 600.0
CACHE_BYTES = 200 * 1024 * 1024
_TRIGGER_DATA = select(triggers.c.data).where(triggers.c.id == bindparam("trigger_id"))


class AttachmentCache:
    """Fetched files by URL, least recently used out first, bounded in bytes and age."""

    def __init__(self) -> None:
        self.items: OrderedDict[str, tuple[float, Attachment]] = OrderedDict()
        self.size = 0

    def get(self, url: str) -> Attachment | None:
        found = self.items.get(url)
        if found is None or time.monotonic() - found[0] > CACHE_SECONDS:
            return None
        self.items.move_to_end(url)
        return found[1]

    def put(self, url: str, item: Attachment) -> None:
        old = self.items.pop(url, None)
        if old is not None:
            self.size -= len(old[1].data)
        self.items[url] = (time.monotonic(), item)
        self.size += len(item.data)
        while self.size > CACHE_BYTES and self.items:
            _url, (_at, dropped) = self.items.popitem(last=False)
            self.size -= len(dropped.data)


def _state(rt: Any) -> tuple[AttachmentCache, httpx.AsyncClient]:
    if "attachment_cache" not in rt.extras:
        rt.extras["attachment_cache"] = AttachmentCache()
        rt.extras["attachment_http"] = httpx.AsyncClient(follow_redirects=False)
    return rt.extras["attachment_cache"], rt.extras["attachment_http"]


async def fetch(rt: Any, url: str, filename: str | None = None) -> Attachment:
    """GET `url` within the size cap and the timeout; raises ValueError with the reason."""
    cache, client = _state(rt)
    cached = cache.get(url)
    if cached is not None:
        return cached if filename is None else Attachment(filename, cached.content_type, cached.data)
    limits = rt.config.limits
    cap = limits.attachment_max_size
    try:
        async with client.stream("GET", url, timeout=limits.attachment_fetch_timeout.total_seconds()) as response:
            if response.status_code != 200:
                raise ValueError(f"{url} answered HTTP {response.status_code}")
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > cap:
                raise ValueError(f"{url} is {format_size(int(declared))}, over limits.attachment_max_size ({format_size(cap)})")
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > cap:
                    raise ValueError(f"{url} is over limits.attachment_max_size ({format_size(cap)})")
                chunks.append(chunk)
            content_type = response.headers.get("content-type", "").split(";")[0].strip()
    except httpx.HTTPError as exc:
        raise ValueError(f"{url} could not be fetched: {type(exc).__name__}: {exc}") from None
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1]) or "attachment"
    item = Attachment(name, content_type or guess_type(name), b"".join(chunks))
    cache.put(url, item)
    return item if filename is None else Attachment(filename, item.content_type, item.data)


async def gather(rt: Any, message: dict[str, Any], campaign: Campaign) -> tuple[list[tuple[str, str, bytes]], list[str]]:
    """The email's attachments, and what could not be attached (and why)."""
    if not (campaign.files or campaign.attachments_from or campaign.require_attachments):
        return [], []
    files: list[Attachment] = list(campaign.files)
    problems: list[str] = []
    if campaign.attachments_from or campaign.require_attachments:
        async with rt.db.connect() as connection:
            data = (await connection.execute(_TRIGGER_DATA, {"trigger_id": message["trigger_id"]})).scalar() or {}
        wanted = data.get("attachments") or []
        if not isinstance(wanted, list):
            wanted = [wanted]
        for item in wanted:
            url = item.get("url") if isinstance(item, dict) else item
            filename = item.get("filename") if isinstance(item, dict) else None
            if not isinstance(url, str):
                problems.append(f"data.attachments: expected a URL, got {url!r}")
                continue
            if not url_allowed(url, campaign.attachments_from):
                problems.append(f"{url} is not in the campaign's attachments_from")
                continue
            try:
                files.append(await fetch(rt, url, filename))
            except ValueError as exc:
                problems.append(str(exc))
    total = sum(len(item.data) for item in files)
    if total > rt.config.limits.attachments_max_total:
        problems.append(
            f"attachments total {format_size(total)}, over limits.attachments_max_total "
            f"({format_size(rt.config.limits.attachments_max_total)})"
        )
        files = []
    if campaign.require_attachments and not files and not problems:
        problems.append("no attachment to send")
    return [(item.filename, item.content_type, item.data) for item in files], problems


async def close(rt: Any) -> None:
    client = rt.extras.pop("attachment_http", None)
    if client is not None:
        await client.aclose()
