"""The send path's transactions (`Database.lean`): on PostgreSQL the statements run with
asyncpg's own calls, and they must read, write and fail exactly as SQLAlchemy does."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import exc, func, insert, select, text, update

from core.db import Database, hcp_emails, hcps, member_of, messages, triggers
from core.decisions import _histories_statement
from core.schema import upgrade
from core.suppression import _CHECK_MANY

NOW = datetime(2026, 3, 2, 14, 30, 15, 250000, tzinfo=timezone.utc)


@pytest.fixture
async def db(database_url: str):  # type: ignore[no-untyped-def]
    database = Database(database_url)
    await upgrade(database)
    async with database.begin() as connection:
        await connection.execute(insert(hcps), [
            {"npi": npi, "first_name": "Jane", "last_name": f"Doe {npi}", "state": "NJ", "updated_at": NOW}
            for npi in ("1234567893", "1245319599")
        ])
        await connection.execute(insert(hcp_emails), [
            {"npi": "1234567893", "address": "jane@clinic.example", "status": "ok", "source": "directory", "rank": 0, "updated_at": NOW},
        ])
        await connection.execute(insert(triggers), [
            {"id": "trg_1", "npi": "1234567893", "campaign_id": "launch", "data": {"é": ["ü", 1]}, "status": "pending", "created_at": NOW},
        ])
    yield database
    await database.dispose()


def _message(number: int, **values: object) -> dict[str, object]:
    row = {
        "id": f"msg_{number}", "trigger_id": "trg_1", "npi": "1234567893", "campaign_id": "launch", "kind": "initial",
        "to_address": "jane@clinic.example", "subject": "Dear Dr. Doe", "status": "sent", "created_at": NOW,
        "sent_at": NOW + timedelta(minutes=number), "links": [{"url": "https://pharma.example/a", "n": number}],
    }
    row.update(values)
    return row


async def test_reads_and_writes_come_back_as_sqlalchemy_gives_them(db: Database) -> None:
    statements = [
        (select(messages).order_by(messages.c.id), None),
        (select(triggers), None),
        (select(hcps.c.npi, hcps.c.updated_at).where(member_of(hcps.c.npi, "npis")).order_by(hcps.c.npi), {"npis": ["1234567893", "1245319599", "0"]}),
        (select(hcps.c.npi).where(member_of(hcps.c.npi, "npis")), {"npis": []}),
        (_CHECK_MANY, {"npis": ["1234567893"]}),
        (_histories_statement(()), {"npis": ["1234567893"], "since": NOW}),
        (select(func.count()).select_from(messages), None),
    ]
    async with db.lean() as lean:
        inserted = (await lean.execute(insert(messages).returning(*messages.c), [_message(1), _message(2)])).mappings().all()
        lean_rows = [(await lean.execute(statement, parameters)).all() for statement, parameters in statements]
        lean_maps = [(await lean.execute(statement, parameters)).mappings().all() for statement, parameters in statements]
    async with db.begin() as connection:
        sa_rows = [(await connection.execute(statement, parameters)).all() for statement, parameters in statements]
        sa_maps = [(await connection.execute(statement, parameters)).mappings().all() for statement, parameters in statements]
    assert [[tuple(row) for row in rows] for rows in lean_rows] == [[tuple(row) for row in rows] for rows in sa_rows]
    # Unlabelled aggregates (the history's) are read by position, as the send path reads them.
    assert [[dict(row) for row in rows] for i, rows in enumerate(lean_maps) if i != 5] == [
        [dict(row) for row in rows] for i, rows in enumerate(sa_maps) if i != 5
    ]
    # What a user would see go wrong: times with their zone, JSON as written, the defaults.
    assert inserted[0]["sent_at"] == NOW + timedelta(minutes=1) and inserted[0]["sent_at"].tzinfo is not None
    assert inserted[1]["links"] == [{"url": "https://pharma.example/a", "n": 2}]
    assert (inserted[0]["open_count"], inserted[0]["attempts"], inserted[0]["claim_seq"]) == (0, 0, 0)
    assert sa_maps[1][0]["data"] == {"é": ["ü", 1]}
    assert sa_rows[5][0][2] == NOW + timedelta(minutes=2)


async def test_row_counts_and_executemany(db: Database) -> None:
    async with db.lean() as lean:
        await lean.execute(insert(messages), [_message(n, status="sending") for n in range(5)])
        done = await lean.execute(
            update(messages).where(member_of(messages.c.id, "ids"), messages.c.status == "sending").values(status="sent"),
            {"ids": ["msg_0", "msg_1", "msg_9"]},
        )
        assert done.rowcount == 2 and not done.returns_rows
        ids = (await lean.execute(select(messages.c.id).where(messages.c.status == "sending").order_by(messages.c.id))).scalars().all()
    assert ids == ["msg_2", "msg_3", "msg_4"]


async def test_an_error_is_sqlalchemys_and_leaves_nothing_behind(db: Database) -> None:
    with pytest.raises(exc.IntegrityError) as raised:
        async with db.lean() as lean:
            await lean.execute(insert(messages), [_message(7)])
            await lean.execute(insert(messages), [_message(7)])
    assert raised.value.orig is not None
    async with db.lean() as lean:  # the pool still serves, and the first insert was rolled back
        assert (await lean.execute(select(func.count()).select_from(messages))).scalar_one() == 0
    assert await db.write(update(messages).where(messages.c.id == "msg_7").values(status="failed").returning(messages.c.id), {}) == []


async def test_a_statement_cancelled_midway_rolls_back_and_spares_the_pool(db: Database) -> None:
    """A job cancelled (a worker stopping) while its statement runs on PostgreSQL; on SQLite,
    whose driver cannot interrupt a statement, while the transaction waits between two."""

    async def cut_short() -> None:
        async with db.lean() as lean:
            await lean.execute(insert(messages), [_message(8)])
            if db.is_sqlite:
                await asyncio.sleep(3)
            else:
                await lean.execute(text("SELECT pg_sleep(3)"))

    task = asyncio.create_task(cut_short())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with db.lean() as lean:
        assert (await lean.execute(select(func.count()).select_from(messages))).scalar_one() == 0
