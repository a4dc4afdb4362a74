"""Who must not be mailed: unsubscribes, complaints and manual blocks, by NPI or by address."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from config import Campaign
from core.db import hcp_emails, member_of, suppressions

MARKETING_ONLY = {"unsubscribed"}
"""Reasons that stop marketing mail but not transactional mail (an unsubscribe from
newsletters does not cancel a requested sample confirmation)."""


_COLUMNS = (suppressions.c.reason, suppressions.c.address, suppressions.c.campaign_id, suppressions.c.created_at)
_CHECK_MANY = union_all(
    select(*_COLUMNS, suppressions.c.npi.label("for_npi")).where(member_of(suppressions.c.npi, "npis")),
    select(*_COLUMNS, hcp_emails.c.npi.label("for_npi"))
    .select_from(suppressions.join(hcp_emails, suppressions.c.address == hcp_emails.c.address))
    .where(member_of(hcp_emails.c.npi, "npis")),
)


async def suppression_rows(connection: AsyncConnection, npis: list[str]) -> list[tuple[Any, ...]]:
    """The suppressions of several HCPs (by NPI or by one of their addresses), of every
    campaign scope, oldest first: (reason, address, campaign_id, created_at, npi). `judge`
    reads one HCP's rows for one campaign, as `suppression_check` does."""
    rows = [tuple(row) for row in await connection.execute(_CHECK_MANY, {"npis": npis})]
    return sorted(rows, key=lambda row: row[3])


def judge(rows: Any, campaign: Campaign) -> tuple[str | None, set[str]]:
    """Why an HCP is suppressed for `campaign` (or None), and which of their addresses are
    blocked on their own, from their suppression rows (oldest first)."""
    reason: str | None = None
    blocked: set[str] = set()
    for why, address, campaign_id, created_at in rows:
        if campaign_id is not None and campaign_id != campaign.id:
            continue
        if campaign.kind == "transactional" and why in MARKETING_ONLY:
            continue
        if address is not None:
            blocked.add(address)
        elif reason is None:
            scope = f" from {campaign_id}" if campaign_id else ""
            reason = f"{why}{scope} since {created_at:%Y-%m-%d %H:%M} UTC"
    return reason, blocked


async def suppression_check(connection: AsyncConnection, npi: str, campaign: Campaign) -> tuple[str | None, set[str]]:
    """One query: why the HCP is suppressed for `campaign` (or None), and which of their
    addresses are blocked on their own."""
    return judge([row[:-1] for row in await suppression_rows(connection, [npi])], campaign)


async def suppression_reason(connection: AsyncConnection, npi: str, campaign: Campaign) -> str | None:
    return (await suppression_check(connection, npi, campaign))[0]


async def add_suppression(
    connection: AsyncConnection,
    *,
    reason: str,
    now: datetime,
    npi: str | None = None,
    address: str | None = None,
    campaign_id: str | None = None,
    detail: str | None = None,
) -> int:
    existing = (
        await connection.execute(
            select(suppressions.c.id).where(
                suppressions.c.npi.is_(None) if npi is None else suppressions.c.npi == npi,
                suppressions.c.address.is_(None) if address is None else suppressions.c.address == address.lower(),
                suppressions.c.campaign_id.is_(None) if campaign_id is None else suppressions.c.campaign_id == campaign_id,
                suppressions.c.reason == reason,
            )
        )
    ).scalar_one_or_none()
    if existing is not None:
        return existing
    result = await connection.execute(
        suppressions.insert().values(
            npi=npi, address=address.lower() if address else None, campaign_id=campaign_id,
            reason=reason, detail=detail, created_at=now,
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


async def remove_suppressions(connection: AsyncConnection, *, npi: str | None = None, address: str | None = None) -> int:
    conditions = []
    if npi:
        conditions.append(suppressions.c.npi == npi)
    if address:
        conditions.append(suppressions.c.address == address.lower())
    if not conditions:
        return 0
    result = await connection.execute(delete(suppressions).where(and_(*conditions)))
    return result.rowcount or 0


async def list_suppressions(
    connection: AsyncConnection, *, npi: str | None = None, address: str | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    query = select(suppressions).order_by(suppressions.c.created_at.desc(), suppressions.c.id.desc()).limit(limit)
    if npi:
        query = query.where(suppressions.c.npi == npi)
    if address:
        query = query.where(suppressions.c.address == address.lower())
    rows = await connection.execute(query)
    return [dict(row) for row in rows.mappings()]
