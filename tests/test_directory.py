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


def test_rows_the_database_cannot_hold_are_skipped_by_line_and_every_valid_row_goes_in(
    tmp_path: Path, database_url: str
) -> None:
    """On PostgreSQL one over-long name used to abort the whole COPY batch: its valid rows
    were lost. Now each bad row is reported with its line, on SQLite and PostgreSQL alike."""
    import asyncio

    from core.npi import make_npi
    from core.schema import upgrade

    async def migrate() -> None:
        db = Database(database_url)
        await upgrade(db)
        await db.dispose()

    asyncio.run(migrate())
    valid = [make_npi(str(400000000 + index)) for index in range(6)]
    rows = [
        f"{valid[0]},Ann,Lee,MD,Dermatology,CA,ann@derm.example",                       # line 2: ok
        f"{valid[1]},Bo,{'N' * 101},MD,Dermatology,CA,bo@derm.example",                 # 3: name too long
        f"{valid[2]},Cy,Oh,MD,Derm\x00atology,CA,cy@derm.example",                       # 4: NUL
        "١٢٣٤٥٦٧٨٩٣,Di,Wu,MD,Dermatology,CA,di@derm.example",                          # 5: Arabic-Indic digits
        "１２３４５６７８９３,Ed,Yu,MD,Dermatology,CA,ed@derm.example",                  # 6: fullwidth digits
        "123456789²,Fa,Xi,MD,Dermatology,CA,fa@derm.example",                            # 7: superscript two
        f"{valid[3]},Gu,Ra,MD,Dermatology,CA,not-an-address",                            # 8: bad email
        f"{valid[4]},=?utf-8?q?J=C3=BCrgen?=,=?UTF-8?B?TcO8bGxlcg==?=,MD,Dermatology,CA,jm@derm.example",  # 9: ok
        f"{valid[5]},Ha,Cr,{'C' * 51},Dermatology,CA,ha@derm.example",                  # 10: credential too long
    ]
    raw = (HEADER + "\n".join(rows) + "\n").encode()
    raw += f"{make_npi('400000009')},Iv,Bad\xff,MD,Dermatology,CA,iv@derm.example\n".encode().replace(b"\xc3\xbf", b"\xff")  # 11
    raw += f"{make_npi('400000010')},Jo,Ok,MD,Dermatology,CA,jo@derm.example\n".encode()  # 12: ok
    path = tmp_path / "hostile.csv"
    path.write_bytes(raw)

    result = CliRunner().invoke(app, ["directory", "import", str(path)], env={"DATABASE_URL": database_url})
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    for line, reason in ((3, "last_name is longer than 100 characters (101)"), (4, "specialty contains a control character"),
                         (5, "npi must be 10 digits"), (6, "npi must be 10 digits"), (7, "npi must be 10 digits"),
                         (8, "invalid email address"), (10, "credential is longer than 50 characters (51)"),
                         (11, "last_name is not valid UTF-8")):
        assert f"line {line}: {reason}" in output, (line, output)
    assert "line 2:" not in output and "line 9:" not in output and "line 12:" not in output
    assert "Imported 3 HCP row(s) and 3 address(es) from 11 row(s); skipped 8." in output

    async def stored() -> dict[str, tuple[str, str]]:
        db = Database(database_url)
        async with db.connect() as connection:
            found = (await connection.execute(select(hcps.c.npi, hcps.c.first_name, hcps.c.last_name))).all()
        await db.dispose()
        return {npi: (first, last) for npi, first, last in found}

    people = asyncio.run(stored())
    assert people == {valid[0]: ("Ann", "Lee"), valid[4]: ("Jürgen", "Müller"), make_npi("400000010"): ("Jo", "Ok")}


async def test_a_batch_the_database_refuses_is_written_row_by_row(harness: Harness) -> None:
    """Past validation, a row the database still refuses (PostgreSQL enforces widths; SQLite
    does not) costs only that row, never its batch."""
    from core.directory import ImportReport, _Row, _write_batch
    from core.npi import make_npi

    base = {"first_name": "A", "credential": "MD", "specialty": "Neurology", "state": "TX"}
    batch = [
        _Row(line=2, values={**base, "npi": make_npi("500000001"), "last_name": "Fine", "email": "a@n.example"}),
        _Row(line=3, values={**base, "npi": make_npi("500000002"), "last_name": "L" * 150, "email": "b@n.example"}),
        _Row(line=4, values={**base, "npi": make_npi("500000003"), "last_name": "Also", "email": "c@n.example"}),
    ]
    report = ImportReport()
    await _write_batch(harness.rt.db, batch, harness.clock.now(), report)
    async with harness.rt.db.connect() as connection:
        names = dict((await connection.execute(select(hcps.c.npi, hcps.c.last_name).where(hcps.c.first_name == "A"))).all())
    if harness.rt.db.is_sqlite:
        assert report.skipped == [] and len(names) == 3
    else:
        assert [line for line, _ in report.skipped] == [3] and "refused by the database" in report.skipped[0][1]
        assert names == {make_npi("500000001"): "Fine", make_npi("500000003"): "Also"}
        assert report.hcps == 2 and report.emails == 2
