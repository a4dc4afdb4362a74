"""`db upgrade` creates the schema with real migrations and upgrades an existing database
without losing rows; the migrations and the code's table definitions agree."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from typer.testing import CliRunner

from core.db import Database, metadata
from core.schema import current_revision, head_revision, upgrade
from trigger_email.cli import app


async def test_upgrade_from_the_first_revision_keeps_rows(database_url: str) -> None:
    db = Database(database_url)
    try:
        assert await upgrade(db, "0001") == (None, "0001")
        async with db.begin() as connection:
            await connection.execute(text(
                "INSERT INTO hcps (npi, first_name, last_name, credential, specialty, state, send_seq, updated_at) "
                "VALUES ('1234567893', 'Jane', 'Doe', 'MD', 'Pulmonary Disease', 'NJ', 0, '2026-01-05 09:00:00')"
            ))
            await connection.execute(text(
                "INSERT INTO triggers (id, npi, campaign_id, data, source, status, created_at) "
                "VALUES ('trg_1', '1234567893', 'asthma-launch', '{}', 'api', 'sent', '2026-01-05 09:00:00')"
            ))
            await connection.execute(text(
                "INSERT INTO messages (id, trigger_id, npi, campaign_id, kind, seq, status, attempts, created_at) "
                "VALUES ('msg_1', 'trg_1', '1234567893', 'asthma-launch', 'initial', 0, 'sent', 1, '2026-01-05 09:00:00')"
            ))
        assert await upgrade(db) == ("0001", head_revision())
        async with db.connect() as connection:
            row = (await connection.execute(text("SELECT id, status, open_count, opened_at FROM messages"))).one()
            hcp = (await connection.execute(text("SELECT last_name FROM hcps"))).scalar_one()
        assert tuple(row) == ("msg_1", "sent", 0, None)
        assert hcp == "Doe"
        assert await current_revision(db) == head_revision()
    finally:
        await db.dispose()


async def test_migrations_match_the_table_definitions(database_url: str) -> None:
    db = Database(database_url)
    try:
        await upgrade(db)
        async with db.connect() as connection:
            differences = await connection.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
            )
    finally:
        await db.dispose()
    assert differences == []


def test_db_upgrade_cli_is_repeatable(database_url: str) -> None:
    runner = CliRunner()
    first = runner.invoke(app, ["db", "upgrade"], env={"DATABASE_URL": database_url})
    assert first.exit_code == 0, first.output
    assert f"database at revision {head_revision()}" in first.output
    again = runner.invoke(app, ["db", "upgrade"], env={"DATABASE_URL": database_url})
    assert "already current" in again.output
