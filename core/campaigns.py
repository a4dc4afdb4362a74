"""Campaign run state. The config says what a campaign is; the database says whether it is
paused right now, so a pause survives restarts and reaches every worker at once."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from config import Campaign, Config, format_duration
from core.db import campaign_states, upsert


async def paused_ids(connection: AsyncConnection, config: Config) -> set[str]:
    rows = await connection.execute(select(campaign_states.c.campaign_id, campaign_states.c.paused))
    stored = {campaign_id: paused for campaign_id, paused in rows}
    return {c.id for c in config.campaigns if stored.get(c.id, c.paused)}


_PAUSED = select(campaign_states.c.paused).where(campaign_states.c.campaign_id == bindparam("campaign_id"))


async def is_paused(connection: AsyncConnection, campaign: Campaign) -> bool:
    row = await connection.execute(_PAUSED, {"campaign_id": campaign.id})
    return paused_as_stored(campaign, row.scalar_one_or_none())


def stored_pause(campaign_id: Any) -> Any:
    """The stored pause of the campaign `campaign_id` (a column), as a subquery: the decision
    reads it with the trigger it claims, in the same statement."""
    return select(campaign_states.c.paused).where(campaign_states.c.campaign_id == campaign_id).scalar_subquery()


def paused_as_stored(campaign: Campaign, stored: bool | None) -> bool:
    """The database's word when there is one, else the config's `paused`."""
    return campaign.paused if stored is None else bool(stored)


async def set_paused(connection: AsyncConnection, campaign_id: str, paused: bool, now: datetime) -> None:
    await connection.execute(
        upsert(connection, campaign_states, conflict=["campaign_id"], update=["paused", "changed_at"]),
        [{"campaign_id": campaign_id, "paused": paused, "changed_at": now}],
    )


def describe(campaign: Campaign, paused: bool) -> dict[str, Any]:
    return {
        "id": campaign.id,
        "name": campaign.name or campaign.id,
        "kind": campaign.kind,
        "status": "paused" if paused else "live",
        "subject": campaign.subject,
        "cooldown": format_duration(campaign.cooldown),
        "resend": (
            {"after": format_duration(campaign.resend.after), "max": campaign.resend.max, "subject": campaign.resend.subject}
            if campaign.resend else None
        ),
        "audience": campaign.audience.model_dump(exclude_none=True),
        **({"subjects": [{"text": v.text, "weight": v.weight} for v in campaign.subjects]} if campaign.subjects else {}),
    }
