"""Decision cost (the cooldown + frequency-cap lookup and the HCP lock) with 10k and with
1M message rows in the table: the lookups go through per-HCP indexes, so the ratio should
stay near 1 (target ≤ 1.2). SQLite by default; TEST_DATABASE_URL for PostgreSQL.

    python bench/bench_decisions.py [SMALL] [LARGE]
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

import common  # noqa: F401  (sys.path)
from common import backend, database_url

from sqlalchemy import text, update

from config import parse_config
from core.clock import Clock
from core.db import Database, hcps, messages, triggers
from core.decisions import contact_history
from core.npi import make_npi
from core.schema import upgrade
from tests.harness import reset_database

CONFIG = parse_config(
    'sender: {from: "A <a@pharma.example>"}\nlimits: {per_hcp: {max: 3, per: 7d}}\n'
    'campaigns: [{id: c0, subject: S, html: "<p>x</p>"}, {id: c1, subject: S, html: "<p>x</p>"}]\n',
    base=Path("."),
)
PER_HCP = 10


async def fill(db: Database, rows: int) -> list[str]:
    """`rows` messages, PER_HCP per HCP, spread over the last 60 days."""
    now = Clock().now()
    npis = [make_npi(str(200000000 + index)) for index in range(rows // PER_HCP)]
    rng = random.Random(1)
    async with db.begin() as connection:
        for start in range(0, len(npis), 5000):
            chunk = npis[start : start + 5000]
            await connection.execute(hcps.insert(), [
                {"npi": npi, "first_name": "A", "last_name": "B", "credential": "MD", "specialty": "Neurology",
                 "state": "TX", "send_seq": 0, "updated_at": now} for npi in chunk
            ])
            await connection.execute(triggers.insert(), [
                {"id": f"trg_{npi}", "npi": npi, "campaign_id": "c0", "data": {}, "source": "api", "status": "sent",
                 "created_at": now} for npi in chunk
            ])
            batch = []
            for npi in chunk:
                for index in range(PER_HCP):
                    moment = now - timedelta(minutes=rng.randrange(60 * 24 * 60))
                    batch.append({
                        "id": f"msg_{npi}_{index}", "trigger_id": f"trg_{npi}", "npi": npi, "campaign_id": f"c{index % 2}",
                        "kind": "initial", "seq": 0, "status": "sent", "attempts": 1, "created_at": moment, "sent_at": moment,
                    })
            await connection.execute(messages.insert(), batch)
    return npis


async def lookup_cost(db: Database, npis: list[str], samples: int = 2000) -> float:
    """Median seconds for one HCP lock + cooldown/cap lookup transaction."""
    rng = random.Random(2)
    now = Clock().now()
    timings = []
    for _ in range(samples):
        npi = rng.choice(npis)
        start = time.perf_counter()
        async with db.begin() as connection:
            await connection.execute(update(hcps).where(hcps.c.npi == npi).values(send_seq=hcps.c.send_seq + 1))
            await contact_history(connection, CONFIG, npi, "c0", now - timedelta(days=7))
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


async def measure(rows: int) -> float:
    url = database_url(f"decisions{rows}")
    await reset_database(url)
    db = Database(url)
    await upgrade(db)
    started = time.perf_counter()
    npis = await fill(db, rows)
    filled = time.perf_counter() - started
    if not db.is_sqlite:
        # What autovacuum does in production after a bulk load; without statistics the
        # planner guesses a sequential scan for a freshly filled table.
        async with db.engine.connect() as connection:
            await (await connection.execution_options(isolation_level="AUTOCOMMIT")).execute(text("ANALYZE"))
    await lookup_cost(db, npis, 200)  # warm caches
    cost = await lookup_cost(db, npis)
    await db.dispose()
    print(f"{rows:>9,} message rows (filled in {filled:.0f} s): {cost * 1000:.2f} ms per decision lookup")
    return cost


async def main(small: int, large: int) -> None:
    print(f"backend: {backend(database_url())}")
    low = await measure(small)
    high = await measure(large)
    print(f"ratio {large:,} / {small:,}: {high / low:.2f} (target ≤ 1.2)")


if __name__ == "__main__":
    args = [int(value) for value in sys.argv[1:3]]
    asyncio.run(main(*(args + [10_000, 1_000_000][len(args):])))
