"""A/B subject tests: a variant per (HCP, campaign), chosen the same way every time; figures
per variant; and, with `ab:`, a winner by a two-proportion z-test that then takes all
later traffic. The decision, its figures and its time are stored in `ab_decisions`."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from datetime import datetime
from statistics import NormalDist
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from config import Campaign
from core.db import ab_decisions, messages, upsert

log = logging.getLogger(__name__)

WINNER_CACHE_SECONDS = 5.0
"""How long a process trusts its copy of the decisions: a winner decided by one worker takes
the others' traffic within this time, without a query per trigger."""


def subjects_hash(campaign: Campaign) -> str:
    texts = [[variant.text, variant.weight] for variant in campaign.subjects or []]
    return hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:16]


def pick_variant(campaign: Campaign, npi: str, winner: int | None = None) -> int | None:
    """The variant this HCP gets: the winner once there is one, else a weighted draw seeded by
    (campaign, NPI), so a re-trigger or a resend shows the same subject."""
    variants = campaign.subjects
    if not variants:
        return None
    if winner is not None and 0 <= winner < len(variants):
        return winner
    digest = hashlib.sha256(f"{campaign.id}\0{npi}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * sum(variant.weight for variant in variants)
    for index, variant in enumerate(variants):
        point -= variant.weight
        if point < 0:
            return index
    return len(variants) - 1


class Winners:
    """A per-process cache of decided winners: {campaign_id: (subjects_hash, winner)}."""

    def __init__(self) -> None:
        self.known: dict[str, tuple[str, int]] = {}
        self.loaded_at = -math.inf

    async def winner(self, connection: AsyncConnection, campaign: Campaign) -> int | None:
        if campaign.ab is None:
            return None
        if time.monotonic() - self.loaded_at > WINNER_CACHE_SECONDS:
            rows = await connection.execute(select(ab_decisions.c.campaign_id, ab_decisions.c.subjects_hash, ab_decisions.c.winner))
            self.known = {campaign_id: (digest, winner) for campaign_id, digest, winner in rows}
            self.loaded_at = time.monotonic()
        found = self.known.get(campaign.id)
        return found[1] if found and found[0] == subjects_hash(campaign) else None


def winners_of(rt: Any) -> Winners:
    cache = rt.extras.get("ab_winners")
    if cache is None:
        cache = rt.extras["ab_winners"] = Winners()
    return cache


async def variant_figures(connection: AsyncConnection, campaign: Campaign) -> list[dict[str, Any]]:
    """Per variant: sent, human opens, clicks and their rates (initial emails; resends keep
    their variant but are not counted twice)."""
    sent = messages.c.status == "sent"
    rows = await connection.execute(
        select(
            messages.c.variant,
            func.count(case((sent, 1))),
            func.count(case((and_(sent, messages.c.opened_at.is_not(None)), 1))),
            func.count(case((and_(sent, messages.c.clicked_at.is_not(None)), 1))),
            func.min(messages.c.sent_at),
        )
        .where(messages.c.campaign_id == campaign.id, messages.c.kind == "initial", messages.c.variant.is_not(None))
        .group_by(messages.c.variant)
    )
    counts = {row[0]: row[1:] for row in rows}
    figures = []
    for index, variant in enumerate(campaign.subjects or []):
        sent_count, opened, clicked, first = counts.get(index, (0, 0, 0, None))
        figures.append({
            "variant": index, "subject": variant.text, "weight": variant.weight, "sent": sent_count,
            "opened": opened, "clicked": clicked,
            "open_rate": round(opened / sent_count, 4) if sent_count else 0.0,
            "click_rate": round(clicked / sent_count, 4) if sent_count else 0.0,
            "first_sent_at": first,
        })
    return figures


def z_test(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """Two-proportion z-test (pooled): z and the two-sided p-value."""
    if not n1 or not n2:
        return 0.0, 1.0
    pooled = (x1 + x2) / (n1 + n2)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if spread == 0:
        return 0.0, 1.0
    z = (x1 / n1 - x2 / n2) / spread
    return z, 2 * (1 - NormalDist().cdf(abs(z)))


async def decision_of(connection: AsyncConnection, campaign: Campaign) -> dict[str, Any] | None:
    row = (await connection.execute(select(ab_decisions).where(ab_decisions.c.campaign_id == campaign.id))).mappings().first()
    if row is None or row["subjects_hash"] != subjects_hash(campaign):
        return None
    return dict(row)


async def evaluate(rt: Any, campaign: Campaign, now: datetime) -> dict[str, Any] | None:
    """Decide the test when it is due and one variant leads with the stated confidence;
    returns the stored decision (existing or new), or None while the test goes on."""
    ab = campaign.ab
    if ab is None or not campaign.subjects:
        return None
    async with rt.db.begin() as connection:
        existing = await decision_of(connection, campaign)
        if existing is not None:
            return existing
        figures = await variant_figures(connection, campaign)
        total = sum(item["sent"] for item in figures)
        firsts = [item["first_sent_at"] for item in figures if item["first_sent_at"] is not None]
        if ab.sends is not None:
            if total < ab.sends:
                return None
        elif not firsts or now < min(firsts) + ab.after:  # type: ignore[operator]
            return None
        counted = "clicked" if ab.metric == "click_rate" else "opened"
        ranked = sorted(figures, key=lambda item: item[ab.metric], reverse=True)
        best = ranked[0]
        critical = NormalDist().inv_cdf(1 - (1 - ab.confidence) / 2)
        tests = []
        for other in ranked[1:]:
            z, p_value = z_test(best[counted], best["sent"], other[counted], other["sent"])
            tests.append({"against": other["variant"], "z": round(z, 3), "p_value": round(p_value, 5)})
            if z < critical:
                return None
        decided = {
            "metric": ab.metric, "confidence": ab.confidence, "critical_z": round(critical, 3), "sent": total,
            "variants": [{k: v for k, v in item.items() if k != "first_sent_at"} for item in figures], "tests": tests,
        }
        values = {
            "campaign_id": campaign.id, "subjects_hash": subjects_hash(campaign), "winner": best["variant"],
            "metric": ab.metric, "figures": decided, "decided_at": now,
        }
        await connection.execute(
            upsert(connection, ab_decisions, conflict=["campaign_id"], update=["subjects_hash", "winner", "metric", "figures", "decided_at"]),
            [values],
        )
    winners_of(rt).known[campaign.id] = (values["subjects_hash"], best["variant"])
    log.info("A/B test of %s decided: variant %s (%r) wins on %s", campaign.id, best["variant"], best["subject"], ab.metric)
    return values


async def ab_step(rt: Any) -> int:
    """Sweep step: evaluate the running tests, at most every 30 s of clock time."""
    now = rt.clock.now()
    last = rt.extras.get("ab_evaluated_at")
    if last is not None and (now - last).total_seconds() < 30:
        return 0
    rt.extras["ab_evaluated_at"] = now
    decided = 0
    for campaign in rt.config.campaigns:
        if campaign.ab is not None and await evaluate(rt, campaign, now) is not None:
            decided += 1
    return decided


async def ab_view(rt: Any, campaign: Campaign | None) -> dict[str, Any]:
    """`variants` and `ab` for the campaign stats: figures per subject and the decision."""
    from core.clock import iso

    if campaign is None or not campaign.subjects:
        return {}
    async with rt.db.connect() as connection:
        figures = await variant_figures(connection, campaign)
        decision = await decision_of(connection, campaign)
    view: dict[str, Any] = {
        "variants": [{**item, "first_sent_at": iso(item["first_sent_at"])} for item in figures],
    }
    if campaign.ab is not None:
        view["ab"] = {
            "decide_after": campaign.ab.decide_after, "metric": campaign.ab.metric, "confidence": campaign.ab.confidence,
            "decision": None if decision is None else {
                "winner": decision["winner"], "subject": campaign.subjects[decision["winner"]].text,
                "decided_at": iso(decision["decided_at"]), "figures": decision["figures"],
            },
        }
    return view
