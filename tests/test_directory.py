"""HCP directory import: bad rows reported by line and skipped, re-import is an upsert."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from typer.testing import CliRunner

from core.db import Database, hcp_emails, hcps
from core.directory import import_csv
from tests.harness import JANE, OMAR, Harness
from trigger_email.cli import app

HEADER = "npi,first_name,last_name,credential,specialty,state,email\n"


async def addresses(db: Database, npi: str) -> list[tuple[str, str]]:
    async with db.connect() as connection:
        rows = await connection.execute(
            select(hcp_emails.c.address, hcp_emails.c.status).where(hcp_emails.c.npi == npi).order_by(hcp_emails.c.rank)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


async def test_bad_rows_are_reported_with_line_numbers_and_the_rest_goes_in(harness: Harness, tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text(
        HEADER
        + "1679576731,Ann,Lee,MD,Dermatology,CA,ann@derm.example\n"  # bad check digit
        + "2000000002,Bo,Ng,MD,Dermatology,CA,not-an-address\n"
        + "1982736450,Cy,Oh,MD,Dermatology,CAL,cy@derm.example\n"
        + "1003000126,Di,Wu,NP,Dermatology,ca,di@derm.example\n"
    )
    report = await import_csv(harness.rt.db, path, now=harness.clock.now())
    assert [line for line, _ in report.skipped] == [2, 3, 4]
    assert "check digit" in report.skipped[0][1]
    assert "invalid email address" in report.skipped[1][1]
    assert "state" in report.skipped[2][1]
    assert report.hcps == 1
    assert await addresses(harness.rt.db, "1003000126") == [("di@derm.example", "ok")]


async def test_reimport_is_an_upsert_that_keeps_rank_order_and_bounce_status(harness: Harness, tmp_path: Path) -> None:
    from core.directory import mark_address

    assert await addresses(harness.rt.db, JANE) == [("jane.doe@clinic.example", "ok"), ("jdoe@health.example", "ok")]
    async with harness.rt.db.begin() as connection:
        await mark_address(connection, JANE, "jdoe@health.example", "hard_bounced", "550", harness.clock.now())
    path = tmp_path / "again.csv"
    path.write_text(
        HEADER
        + f"{JANE},Jane,Doe-Smith,MD,Pulmonary Disease,NJ,jdoe@health.example\n"
        + f"{JANE},Jane,Doe-Smith,MD,Pulmonary Disease,NJ,jane.doe@clinic.example\n"
    )
    report = await import_csv(harness.rt.db, path, now=harness.clock.now())
    assert report.skipped == []
    assert await addresses(harness.rt.db, JANE) == [("jdoe@health.example", "hard_bounced"), ("jane.doe@clinic.example", "ok")]
    async with harness.rt.db.connect() as connection:
        count = len((await connection.execute(select(hcps.c.npi))).all())
        last_name = (await connection.execute(select(hcps.c.last_name).where(hcps.c.npi == JANE))).scalar_one()
    assert count == 3 and last_name == "Doe-Smith"


async def test_import_streams_in_batches(harness: Harness, tmp_path: Path) -> None:
    from core.npi import make_npi

    path = tmp_path / "many.csv"
    with path.open("w") as handle:
        handle.write(HEADER)
        for index in range(2500):
            handle.write(f"{make_npi(str(300000000 + index))},A,B,MD,Neurology,TX,a{index}@neuro.example\n")
    seen: list[int] = []
    report = await import_csv(harness.rt.db, path, now=harness.clock.now(), batch_size=1000, progress=seen.append)
    assert report.hcps == 2500 and report.emails == 2500
    assert len(seen) >= 3 and seen[-1] == path.stat().st_size


def test_cli_import_reports_lines_and_missing_columns(tmp_path: Path, database_url: str) -> None:
    import asyncio

    from core.schema import upgrade

    db = Database(database_url)
    asyncio.run(upgrade(db))
    good = tmp_path / "ok.csv"
    good.write_text(HEADER + f"{OMAR},Omar,Haddad,MD,Cardiovascular Disease,CA,omar@heart.example\nbad,x,y,z,w,CA,q@w.example\n")
    runner = CliRunner()
    result = runner.invoke(app, ["directory", "import", str(good)], env={"DATABASE_URL": database_url})
    assert result.exit_code == 0, result.output
    assert "line 3: npi must be 10 digits" in result.output
    assert "Imported 1 HCP row(s)" in result.output
    bad = tmp_path / "bad.csv"
    bad.write_text("name,mail\nx,y\n")
    result = runner.invoke(app, ["directory", "import", str(bad)], env={"DATABASE_URL": database_url})
    assert result.exit_code == 1
    assert "lacks email, npi" in result.output
