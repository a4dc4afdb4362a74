"""The HCP directory: who the HCPs are and at which addresses they can be reached.

Import streams the CSV in batches and upserts, so a re-import is safe and a million rows
never sit in memory at once. An address that bounced keeps its status across re-imports.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from core.db import Database, hcp_emails, hcps, upsert
from core.names import decode_encoded_words
from core.npi import npi_problem

COLUMNS = ["npi", "first_name", "last_name", "credential", "specialty", "state", "email"]
"""Plus an optional `timezone` column (IANA name) used for quiet hours."""
REQUIRED = {"npi", "email"}
_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
SOURCE_PRIORITY = {"directory": 0}
"""Lower is more trusted; any other source (a CRM's own field) ranks after the directory."""


def email_problem(address: str) -> str | None:
    if len(address) > 254 or not _EMAIL.match(address):
        return f"invalid email address {address!r}"
    return None


@dataclass
class ImportReport:
    rows: int = 0
    hcps: int = 0
    emails: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)


class DirectoryFileError(Exception):
    """The file as a whole is unusable (no header, missing columns)."""


@dataclass
class _Row:
    line: int
    values: dict[str, str]


def _read_rows(handle: io.TextIOBase, report: ImportReport) -> Iterator[_Row]:
    reader = csv.DictReader(handle)
    header = [name.strip().lower() for name in (reader.fieldnames or [])]
    if not header:
        raise DirectoryFileError("the file is empty; expected a header row: " + ",".join(COLUMNS))
    missing = REQUIRED - set(header)
    if missing:
        raise DirectoryFileError(
            f"the header row lacks {', '.join(sorted(missing))}; expected columns: {','.join(COLUMNS)}"
        )
    reader.fieldnames = header
    for values in reader:
        report.rows += 1
        yield _Row(line=reader.line_num, values={key: (value or "").strip() for key, value in values.items() if key})


NAME_FIELDS = ("first_name", "last_name", "credential", "specialty")
WIDTHS = {name: hcps.c[name].type.length for name in NAME_FIELDS}
"""What the columns hold: a longer value is reported, never cut and never sent to the
database (PostgreSQL would refuse the whole batch)."""
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _validate(row: _Row) -> str | None:
    for name, value in row.values.items():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{name} is not valid UTF-8"
        if _CONTROL.search(value):
            return f"{name} contains a control character (such as NUL)"
    for name in NAME_FIELDS:
        value = row.values.get(name, "")
        if "=?" in value:
            value = row.values[name] = decode_encoded_words(value)
            if _CONTROL.search(value):
                return f"{name} contains a control character (such as NUL)"
        if len(value) > WIDTHS[name]:
            return f"{name} is longer than {WIDTHS[name]} characters ({len(value)})"
    problem = npi_problem(row.values.get("npi", ""))
    if problem:
        return problem
    address = row.values.get("email", "")
    if address:
        problem = email_problem(address)
        if problem:
            return problem
    state = row.values.get("state", "")
    if state and not re.fullmatch(r"[A-Za-z]{2}", state):
        return f"state must be a 2-letter code, got {state!r}"
    zone = row.values.get("timezone", "")
    if zone and not known_zone(zone):
        return f"timezone must be an IANA zone like America/New_York, got {zone!r}"
    return None


def known_zone(name: str) -> bool:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


async def import_csv(
    db: Database,
    path: str | Path,
    *,
    now: datetime,
    batch_size: int = 5000,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Upsert the CSV at `path`; `progress(bytes_read)` is called once a batch."""
    report = ImportReport()
    # Undecodable bytes become surrogates, so one bad row is reported by its line, not a
    # UnicodeDecodeError that ends the import.
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        batch: list[_Row] = []
        for row in _read_rows(handle, report):
            problem = _validate(row)
            if problem:
                report.skipped.append((row.line, problem))
                continue
            batch.append(row)
            if len(batch) >= batch_size:
                await _write_batch(db, batch, now, report)
                batch = []
                if progress:
                    progress(handle.buffer.tell() if hasattr(handle, "buffer") else 0)
        if batch:
            await _write_batch(db, batch, now, report)
        if progress:
            progress(Path(path).stat().st_size)
    return report


async def _write_batch(db: Database, batch: list[_Row], now: datetime, report: ImportReport) -> None:
    """Write a batch in one transaction; if the database refuses it, write its rows one by
    one, so every row it accepts goes in and each it refuses is reported by its line."""
    try:
        await _write_rows(db, batch, now, report)
    except _REFUSED as exc:
        if len(batch) == 1 or _connection_lost(exc):
            raise
        for row in batch:
            try:
                await _write_rows(db, [row], now, report)
            except _REFUSED as row_exc:
                if _connection_lost(row_exc):
                    raise
                report.skipped.append((row.line, f"refused by the database: {_short(row_exc)}"))
        report.skipped.sort()


def _refused_types() -> tuple[type[Exception], ...]:
    try:
        from asyncpg.exceptions import DataError, IntegrityConstraintViolationError
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        return (DBAPIError,)
    # COPY runs on the driver connection: its errors arrive unwrapped.
    return (DBAPIError, DataError, IntegrityConstraintViolationError)


_REFUSED = _refused_types()


def _connection_lost(exc: Exception) -> bool:
    from sqlalchemy.exc import InterfaceError, OperationalError

    return isinstance(exc, (OperationalError, InterfaceError)) or bool(getattr(exc, "connection_invalidated", False))


def _short(exc: Exception) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc)
    return text.splitlines()[0][:200] if text else type(exc).__name__


async def _write_rows(db: Database, batch: list[_Row], now: datetime, report: ImportReport) -> None:
    people: dict[str, dict[str, Any]] = {}
    addresses: dict[tuple[str, str], dict[str, Any]] = {}
    for row in batch:
        values = row.values
        npi = values["npi"]
        people[npi] = {
            "npi": npi,
            "first_name": values.get("first_name", ""),
            "last_name": values.get("last_name", ""),
            "credential": values.get("credential", ""),
            "specialty": values.get("specialty", ""),
            "state": values.get("state", "").upper(),
            "timezone": values.get("timezone") or None,
            "send_seq": 0,
            "updated_at": now,
        }
        address = values.get("email", "").lower()
        if address and (npi, address) not in addresses:
            # Row order is rank order: the line number keeps it across batches for free.
            addresses[(npi, address)] = {
                "npi": npi, "address": address, "rank": row.line, "source": "directory", "status": "ok", "updated_at": now,
            }
    async with db.begin() as connection:
        if connection.dialect.name == "postgresql":
            await _copy_upsert(connection, list(people.values()), list(addresses.values()))
            report.hcps += len(people)
            report.emails += len(addresses)
            return
        await connection.execute(
            upsert(connection, hcps, conflict=["npi"],
                   update=["first_name", "last_name", "credential", "specialty", "state", "timezone", "updated_at"]),
            list(people.values()),
        )
        if addresses:
            await connection.execute(
                upsert(connection, hcp_emails, conflict=["npi", "address"], update=["rank", "source", "updated_at"]),
                list(addresses.values()),
            )
    report.hcps += len(people)
    report.emails += len(addresses)


async def _copy_upsert(connection: AsyncConnection, people: list[dict[str, Any]], addresses: list[dict[str, Any]]) -> None:
    """PostgreSQL: COPY the batch into session-temporary tables, then one INSERT … ON CONFLICT
    each. Several times faster than a multi-row INSERT for a million-row directory."""
    # SQLAlchemy opens the transaction lazily, on its first statement: issue one, so the
    # COPY and INSERTs below run inside it (and the ON COMMIT temp tables keep their rows).
    await connection.execute(select(1))
    raw = await connection.get_raw_connection()
    pg = raw.driver_connection
    assert pg is not None
    await pg.execute(
        "CREATE TEMP TABLE IF NOT EXISTS import_hcps (LIKE hcps INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;"
        "CREATE TEMP TABLE IF NOT EXISTS import_emails (npi varchar(10), address varchar(320), rank integer,"
        " updated_at timestamp) ON COMMIT DELETE ROWS"
    )
    stamp = people[0]["updated_at"].astimezone(timezone.utc).replace(tzinfo=None) if people else None
    await pg.copy_records_to_table(
        "import_hcps",
        records=[
            (p["npi"], p["first_name"], p["last_name"], p["credential"], p["specialty"], p["state"], 0, stamp, p["timezone"])
            for p in people
        ],
        columns=["npi", "first_name", "last_name", "credential", "specialty", "state", "send_seq", "updated_at", "timezone"],
    )
    await pg.execute(
        "INSERT INTO hcps SELECT * FROM import_hcps ON CONFLICT (npi) DO UPDATE SET first_name = EXCLUDED.first_name,"
        " last_name = EXCLUDED.last_name, credential = EXCLUDED.credential, specialty = EXCLUDED.specialty,"
        " state = EXCLUDED.state, updated_at = EXCLUDED.updated_at, timezone = EXCLUDED.timezone"
    )
    if addresses:
        await pg.copy_records_to_table(
            "import_emails", records=[(a["npi"], a["address"], a["rank"], stamp) for a in addresses],
            columns=["npi", "address", "rank", "updated_at"],
        )
        await pg.execute(
            "INSERT INTO hcp_emails (npi, address, rank, source, status, updated_at)"
            " SELECT npi, address, rank, 'directory', 'ok', updated_at FROM import_emails"
            " ON CONFLICT (npi, address) DO UPDATE SET rank = EXCLUDED.rank, source = EXCLUDED.source,"
            " updated_at = EXCLUDED.updated_at"
        )


async def get_hcp(connection: AsyncConnection, npi: str) -> dict[str, Any] | None:
    row = (await connection.execute(select(hcps).where(hcps.c.npi == npi))).mappings().first()
    return dict(row) if row else None


async def mark_address(
    connection: AsyncConnection, npi: str, address: str, status: str, reason: str, now: datetime
) -> None:
    await connection.execute(
        update(hcp_emails)
        .where(hcp_emails.c.npi == npi, hcp_emails.c.address == address.lower())
        .values(status=status, status_reason=reason, updated_at=now)
    )


async def add_address(
    connection: AsyncConnection, npi: str, address: str, *, source: str, now: datetime, rank: int = 1_000_000_000
) -> None:
    """Add an address from another source (a CRM record) after the directory's ones; an
    existing row keeps its status."""
    if email_problem(address):
        return
    await connection.execute(
        upsert(connection, hcp_emails, conflict=["npi", "address"], update=["updated_at"]),
        [{"npi": npi, "address": address.lower(), "rank": rank, "source": source, "status": "ok", "updated_at": now}],
    )
