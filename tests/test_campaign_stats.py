"""`GET /v1/campaigns/{id}/stats` against the truth: generated messages, counted once by the
endpoint (SQL GROUP BY on a time bucket) and once here, row by row, and by plain SQL."""

from __future__ import annotations

import random
from collections import Counter
from datetime import datetime, timedelta, timezone

from sqlalchemy import text

from core.db import engagement_events, messages, triggers
from tests.harness import Harness

START = datetime(2026, 1, 1, tzinfo=timezone.utc)


async def generate(harness: Harness, count: int = 600) -> list[dict]:
    """Messages of two campaigns over ten days; some opened by people, some only by machines,
    clicked, hard- or soft-bounced, unsubscribed, complained about."""
    chance = random.Random(7)
    rows, trigger_rows, events = [], [], []
    for n in range(count):
        campaign = "asthma-launch" if n % 5 else "cardio-webinar"
        created = START + timedelta(minutes=chance.randrange(0, 10 * 24 * 60))
        status = chance.choice(["sent"] * 8 + ["failed", "scheduled"])
        sent = created + timedelta(seconds=30) if status == "sent" else None
        row = {
            "id": f"msg_{n:06d}", "trigger_id": f"trg_{n:06d}", "npi": "1234567893", "campaign_id": campaign,
            "kind": "initial", "seq": 0, "status": status, "attempts": 1, "created_at": created, "sent_at": sent,
            "to_address": f"hcp{n}@example.org", "open_count": 0, "machine_opens": 0, "click_count": 0,
        }
        if sent:
            if chance.random() < 0.4:
                row["opened_at"] = sent + timedelta(hours=chance.randrange(1, 72))
                row["open_count"] = chance.randrange(1, 4)
            if chance.random() < 0.2:
                row["machine_opens"] = 1
            if row.get("opened_at") and chance.random() < 0.5:
                row["clicked_at"] = row["opened_at"] + timedelta(minutes=3)
                row["click_count"] = chance.randrange(1, 3)
            if chance.random() < 0.05:
                row["bounced_at"] = sent + timedelta(minutes=chance.randrange(1, 600))
            elif chance.random() < 0.05:
                events.append({"message_id": row["id"], "kind": "soft_bounce", "occurred_at": sent + timedelta(minutes=5)})
            if chance.random() < 0.03:
                row["unsubscribed_at"] = sent + timedelta(hours=2)
            if chance.random() < 0.02:
                events.append({"message_id": row["id"], "kind": "complaint", "occurred_at": sent + timedelta(hours=3)})
        trigger_rows.append({
            "id": row["trigger_id"], "npi": "1234567893", "campaign_id": campaign, "data": {}, "source": "api",
            "status": {"sent": "sent", "failed": "failed", "scheduled": "sent"}[status], "created_at": created,
        })
        rows.append(row)
    columns = {column.name for column in messages.c}
    async with harness.rt.db.begin() as connection:
        await connection.execute(triggers.insert(), trigger_rows)
        await connection.execute(messages.insert(), [{k: row.get(k) for k in columns if k in row or k.endswith("_at")} for row in rows])
        await connection.execute(engagement_events.insert(), events)
    for row in rows:
        row["events"] = [event["kind"] for event in events if event["message_id"] == row["id"]]
    return rows


def floor(moment: datetime, interval: str) -> datetime:
    moment = moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if interval == "day" else moment


def stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def test_stats_equal_the_truth_by_day_and_by_hour_and_in_a_range(harness: Harness) -> None:
    rows = await generate(harness)
    harness.clock.set(START + timedelta(days=12))
    mine = [row for row in rows if row["campaign_id"] == "asthma-launch"]
    for params, low, high in (
        ({"interval": "day", "from": "2026-01-01", "to": "2026-01-13"}, START, START + timedelta(days=12)),
        ({"interval": "hour", "from": "2026-01-03T00:00:00Z", "to": "2026-01-05T06:00:00Z"},
         START + timedelta(days=2), START + timedelta(days=4, hours=6)),
    ):
        response = await harness.client.get("/v1/campaigns/asthma-launch/stats", params=params, headers=harness.auth)
        assert response.status_code == 200, response.text
        stats = response.json()

        def inside(moment: datetime | None) -> bool:
            return moment is not None and low <= moment < high

        sent = [row for row in mine if inside(row["sent_at"])]
        assert stats["sent"] == len(sent) > 0
        assert stats["delivered"] == sum(1 for row in sent if not row.get("bounced_at"))
        assert stats["hard_bounced"] == sum(1 for row in mine if inside(row.get("bounced_at")))
        assert stats["opened"] == sum(1 for row in mine if inside(row.get("opened_at")))
        assert stats["machine_opened"] == sum(1 for row in sent if row["machine_opens"])
        assert stats["clicked"] == sum(1 for row in mine if inside(row.get("clicked_at")))
        assert stats["unsubscribed"] == sum(1 for row in mine if inside(row.get("unsubscribed_at")))
        assert stats["soft_bounced"] == sum(1 for row in mine if "soft_bounce" in row["events"] and inside(row["sent_at"] + timedelta(minutes=5)))
        assert stats["complaints"] == sum(1 for row in mine if "complaint" in row["events"] and inside(row["sent_at"] + timedelta(hours=3)))
        assert stats["rates"]["opened"] == round(stats["opened"] / stats["sent"], 4)
        assert stats["outcomes"] == dict(Counter(
            {"sent": "sent", "failed": "failed", "scheduled": "sent"}[row["status"]] for row in mine if inside(row["created_at"])
        ))
        interval = params["interval"]
        expected: dict[str, Counter] = {line: Counter() for line in ("sent", "opened", "clicked", "bounced")}
        for row in mine:
            for line, column in (("sent", "sent_at"), ("opened", "opened_at"), ("clicked", "clicked_at"), ("bounced", "bounced_at")):
                if inside(row.get(column)):
                    expected[line][stamp(floor(row[column], interval))] += 1
        points = stats["series"]["points"]
        step = timedelta(days=1) if interval == "day" else timedelta(hours=1)
        assert [point["at"] for point in points] == [stamp(low + step * i) for i in range(int((high - low) / step))]
        for line in expected:
            assert {p["at"]: p[line] for p in points if p[line]} == dict(expected[line]), line

    # and the same day series by plain SQL, written out by hand for each database
    stats = (await harness.client.get("/v1/campaigns/asthma-launch/stats", params={"interval": "day", "from": "2026-01-01", "to": "2026-01-13"}, headers=harness.auth)).json()
    async with harness.rt.db.connect() as connection:
        day = "date_trunc('day', sent_at)" if connection.dialect.name == "postgresql" else "substr(sent_at, 1, 10)"
        truth = (await connection.execute(text(
            f"SELECT {day}, count(*) FROM messages WHERE campaign_id = 'asthma-launch' AND sent_at IS NOT NULL GROUP BY 1"
        ))).all()
    by_day = {str(slot)[:10]: count for slot, count in truth}
    assert {p["at"][:10]: p["sent"] for p in stats["series"]["points"] if p["sent"]} == by_day


async def test_stats_refuse_a_bad_range_or_interval_naming_the_field(harness: Harness) -> None:
    for params, field in (({"interval": "week"}, "interval"), ({"from": "soon"}, "from"),
                          ({"from": "2026-02-01", "to": "2026-01-01"}, "from"),
                          ({"interval": "hour", "from": "2020-01-01", "to": "2026-01-01"}, "interval")):
        response = await harness.client.get("/v1/campaigns/asthma-launch/stats", params=params, headers=harness.auth)
        assert response.status_code == 422 and response.json()["field"] == field, (params, response.text)
    assert (await harness.client.get("/v1/campaigns/nope/stats", headers=harness.auth)).status_code == 404


async def test_default_series_is_the_last_thirty_days(harness: Harness) -> None:
    await harness.send()
    stats = (await harness.client.get("/v1/campaigns/asthma-launch/stats", headers=harness.auth)).json()
    assert stats["interval"] == "day" and len(stats["series"]["points"]) == 30
    assert stats["series"]["points"][-1] == {"at": "2026-01-05T00:00:00Z", "sent": 1, "opened": 0, "clicked": 0, "bounced": 0}
    assert stats["sent"] == stats["delivered"] == 1 and stats["outcomes"] == {"sent": 1}
