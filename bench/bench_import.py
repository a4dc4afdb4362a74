"""Directory import of generated rows (default 1,000,000): wall time and peak RSS.
SQLite by default; TEST_DATABASE_URL=postgresql://… for PostgreSQL. Target ≤ 60 s.

    python bench/bench_import.py [ROWS]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (sys.path)
from common import backend, database_url, peak_rss_mib

from core.clock import Clock
from core.db import Database
from core.demo import write_demo_csv
from core.directory import import_csv
from core.schema import upgrade
from tests.harness import reset_database


async def main(rows: int) -> None:
    path = Path(tempfile.mkdtemp()) / "directory.csv"
    write_demo_csv(path, rows)
    before = peak_rss_mib()
    url = database_url("import")
    await reset_database(url)
    db = Database(url)
    await upgrade(db)
    start = time.perf_counter()
    report = await import_csv(db, path, now=Clock().now())
    elapsed = time.perf_counter() - start
    from sqlalchemy import func, select

    from core.db import hcp_emails, hcps

    async with db.connect() as connection:
        stored = (await connection.execute(select(func.count()).select_from(hcps))).scalar_one()
        addresses = (await connection.execute(select(func.count()).select_from(hcp_emails))).scalar_one()
    await db.dispose()
    assert stored == report.hcps and addresses == report.emails, (stored, addresses, report)
    print(f"backend: {backend(url)}")
    print(f"rows: {report.rows:,} ({path.stat().st_size / 2**20:.0f} MiB CSV); in the database: {stored:,} HCPs, {addresses:,} addresses")
    print(f"import: {elapsed:.1f} s ({report.rows / elapsed:,.0f} rows/s; target ≤ 60 s for 1M)")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB (before import: {before:.0f} MiB)")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000))
