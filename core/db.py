"""Schema and engine. SQLite for the embedded default, PostgreSQL in production; the same
SQLAlchemy Core statements run on both."""

from __future__ import annotations

import secrets
from collections import OrderedDict
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Iterable

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    any_,
    bindparam,
    event,
    literal,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from core.lean import LeanConnection


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on SQLite (which has no time zones) too."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use the clock")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

hcps = Table(
    "hcps",
    metadata,
    Column("npi", String(10), primary_key=True),
    Column("first_name", String(100), nullable=False, default=""),
    Column("last_name", String(100), nullable=False, default=""),
    Column("credential", String(50), nullable=False, default=""),
    Column("specialty", String(200), nullable=False, default=""),
    Column("state", String(2), nullable=False, default=""),
    Column("send_seq", Integer, nullable=False, default=0),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("timezone", String(64)),  # IANA zone for quiet hours; else from the state (revision 0008)
)

hcp_emails = Table(
    "hcp_emails",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("npi", String(10), ForeignKey("hcps.npi", ondelete="CASCADE"), nullable=False),
    Column("address", String(320), nullable=False),
    Column("rank", Integer, nullable=False, default=0),
    Column("source", String(32), nullable=False, default="directory"),
    Column("status", String(16), nullable=False, default="ok"),
    Column("status_reason", Text),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("npi", "address"),
    Index("ix_hcp_emails_address", "address"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_used_at", UTCDateTime),
    Column("revoked_at", UTCDateTime),
    # space-separated scopes: triggers:write, read, admin (revision 0005)
    Column("scopes", String(200), nullable=False, server_default="triggers:write read admin"),
)

campaign_states = Table(
    "campaign_states",
    metadata,
    Column("campaign_id", String(128), primary_key=True),
    Column("paused", Boolean, nullable=False),
    Column("changed_at", UTCDateTime, nullable=False),
)

triggers = Table(
    "triggers",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("npi", String(64), nullable=False),
    Column("campaign_id", String(128), nullable=False),
    Column("data", JSON, nullable=False),
    Column("source", String(32), nullable=False, default="api"),
    Column("source_ref", JSON),
    Column("idempotency_key", String(255), unique=True),
    # SHA-256 of the request an Idempotency-Key came with (revision 0005)
    Column("request_hash", String(64)),
    Column("status", String(32), nullable=False),
    Column("reason", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("decided_at", UTCDateTime),
    # bounded retries of a decision that raised (revision 0004)
    Column("attempts", Integer, nullable=False, default=0, server_default="0"),
    Column("due_at", UTCDateTime),
    Index("ix_triggers_status_created_at", "status", "created_at"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("trigger_id", String(40), ForeignKey("triggers.id", ondelete="CASCADE"), nullable=False),
    Column("npi", String(10), nullable=False),
    Column("campaign_id", String(128), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("seq", Integer, nullable=False, default=0),
    Column("to_address", String(320)),
    Column("subject", Text),
    Column("html", Text),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("due_at", UTCDateTime),
    Column("claimed_at", UTCDateTime),
    Column("sent_at", UTCDateTime),
    Column("message_id", String(255)),
    Column("error", Text),
    Column("created_at", UTCDateTime, nullable=False),
    # engagement (revision 0002)
    Column("opened_at", UTCDateTime),
    Column("open_count", Integer, nullable=False, default=0, server_default="0"),
    Column("machine_opens", Integer, nullable=False, default=0, server_default="0"),
    Column("clicked_at", UTCDateTime),
    Column("click_count", Integer, nullable=False, default=0, server_default="0"),
    Column("bounced_at", UTCDateTime),
    Column("bounce_reason", Text),
    Column("unsubscribed_at", UTCDateTime),
    Column("links", JSON),
    # crash-safe sending (revision 0004): the claim's lease, renewed by the worker that holds
    # it; when the SMTP transaction reached the point where the server may take the message;
    # how many times the message was claimed (a fresh arq job id after each release)
    Column("claimed_until", UTCDateTime),
    Column("smtp_started_at", UTCDateTime),
    Column("claim_seq", Integer, nullable=False, default=0, server_default="0"),
    # campaign authoring (revision 0008): the campaign version and A/B subject variant sent
    Column("campaign_version", String(16)),
    Column("variant", Integer),
    Index("ix_messages_trigger_id", "trigger_id"),
    Index("ix_messages_npi_campaign_id", "npi", "campaign_id"),
    Index("ix_messages_npi_created_at", "npi", "created_at"),
    Index("ix_messages_status_due_at", "status", "due_at"),
)

suppressions = Table(
    "suppressions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("npi", String(10)),
    Column("address", String(320)),
    # campaign_id null: every marketing campaign; set: that campaign only (unsubscribe.scope: campaign)
    Column("campaign_id", String(128)),
    Column("reason", String(32), nullable=False),
    Column("detail", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_suppressions_npi", "npi"),
    Index("ix_suppressions_address", "address"),
)

inbound_events = Table(
    "inbound_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(32), nullable=False),
    Column("event_key", String(255), nullable=False),
    Column("event", JSON, nullable=False),
    Column("status", String(16), nullable=False, default="pending"),
    Column("result", Text),
    Column("received_at", UTCDateTime, nullable=False),
    Column("processed_at", UTCDateTime),
    # retries of events whose CRM lookup failed for a while (revision 0003)
    Column("attempts", Integer, nullable=False, default=0, server_default="0"),
    Column("due_at", UTCDateTime),
    UniqueConstraint("source", "event_key"),
    Index("ix_inbound_events_status_received_at", "status", "received_at"),
    Index("ix_inbound_events_status_due_at", "status", "due_at"),
)

engagement_events = Table(
    "engagement_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(40), ForeignKey("messages.id", ondelete="CASCADE")),
    Column("npi", String(10)),
    Column("address", String(320)),
    Column("kind", String(24), nullable=False),
    Column("link_index", Integer),
    Column("url", Text),
    Column("user_agent", Text),
    Column("detail", Text),
    Column("occurred_at", UTCDateTime, nullable=False),
    Index("ix_engagement_events_message_id", "message_id"),
    Index("ix_engagement_events_address_kind", "address", "kind"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("crm", String(32), nullable=False),
    Column("kind", String(24), nullable=False),
    Column("dedupe_key", String(255), nullable=False, unique=True),
    Column("npi", String(10), nullable=False),
    Column("campaign_id", String(128), nullable=False),
    Column("message_id", String(40), nullable=False),
    Column("subject", Text, nullable=False, default=""),
    Column("object_type", String(64)),
    Column("object_id", String(64)),
    Column("details", JSON, nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("status", String(16), nullable=False, default="pending"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("last_error", Text),
    Column("pushed_at", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    Column("claims", Integer, nullable=False, default=0, server_default="0"),
    # How many times a pusher took the row for a CRM call. `clean_claims` counts those known
    # to have written nothing (refused, rate-limited); a row with fewer clean claims than
    # earlier claims may already be on the CRM timeline, and is looked up before re-creating.
    Column("clean_claims", Integer, nullable=False, default=0, server_default="0"),
    Index("ix_outbox_status_next_attempt_at", "status", "next_attempt_at"),
)

crm_pauses = Table(
    "crm_pauses",
    metadata,
    # A CRM that answered 429 / Retry-After: no pusher of any worker calls it before `until`.
    Column("crm", String(32), primary_key=True),
    Column("until", UTCDateTime, nullable=False),
    Column("reason", Text),
    Column("updated_at", UTCDateTime, nullable=False),
)

rule_firings = Table(
    "rule_firings",
    metadata,
    Column("rule_key", String(255), primary_key=True),
    Column("trigger_id", String(40)),
    Column("fired_at", UTCDateTime, nullable=False),
)


# The admin console (revision 0009): the decision trail stored with each trigger, dashboard
# users, and the indexes behind the trigger log (by NPI, by campaign, newest first) and the
# campaign figures over time.
triggers.append_column(Column("trail", JSON))
Index("ix_triggers_npi_created_at", triggers.c.npi, triggers.c.created_at)
Index("ix_triggers_campaign_id_created_at", triggers.c.campaign_id, triggers.c.created_at)
Index("ix_triggers_created_at", triggers.c.created_at)
Index("ix_messages_campaign_id_sent_at", messages.c.campaign_id, messages.c.sent_at)
Index("ix_inbound_events_source_id", inbound_events.c.source, inbound_events.c.id)
inbound_events.append_column(Column("duplicates", Integer, nullable=False, default=0, server_default="0"))
inbound_events.append_column(Column("last_duplicate_at", UTCDateTime))

dashboard_users = Table(
    "dashboard_users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_login_at", UTCDateTime),
)

receiving_domains = Table(
    "receiving_domains",
    metadata,
    Column("domain", String(255), primary_key=True),
    Column("blocks", Integer, nullable=False, default=0, server_default="0"),
    Column("window_started_at", UTCDateTime),
    Column("throttled_until", UTCDateTime),
    Column("paused_until", UTCDateTime),
    Column("reason", Text),
    Column("updated_at", UTCDateTime, nullable=False),
)
"""Per receiving domain (grouped by mail provider): the blocks it answered lately and the
throttle or pause they caused. The deliverability view and the send path read it."""

campaign_versions = Table(
    "campaign_versions",
    metadata,
    Column("campaign_id", String(128), primary_key=True),
    Column("version", String(16), primary_key=True),
    Column("took_effect_at", UTCDateTime, nullable=False),
    Column("subject", Text),
)

config_loads = Table(
    "config_loads",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("text_hash", String(64), nullable=False),
    Column("text", Text, nullable=False),
    Column("source", String(500)),
    Column("loaded_at", UTCDateTime, nullable=False),
)

ab_decisions = Table(
    "ab_decisions",
    metadata,
    Column("campaign_id", String(128), primary_key=True),
    Column("subjects_hash", String(16), nullable=False),
    Column("winner", Integer, nullable=False),
    Column("metric", String(16), nullable=False),
    Column("figures", JSON, nullable=False),
    Column("decided_at", UTCDateTime, nullable=False),
)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def async_url(url: str) -> str:
    """Accept the URLs people write (`postgres://`, `sqlite:///file.db`) and pick async drivers."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgresql+psycopg", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    return parsed.render_as_string(hide_password=False)


def pgbouncer_options() -> dict[str, Any]:
    """What asyncpg needs behind PgBouncer in transaction mode, where consecutive transactions
    of one client may run on different server connections: no prepared-statement cache
    (asyncpg's nor SQLAlchemy's), and a unique name for any statement asyncpg still prepares,
    so two clients sharing a server connection never collide on `__asyncpg_stmt_1__`."""
    import uuid

    return {
        "connect_args": {
            "statement_cache_size": 0,
            "prepared_statement_cache_size": 0,
            "prepared_statement_name_func": lambda: f"__asyncpg_{uuid.uuid4().hex}__",
        },
    }


class Database:
    """An async engine plus the dialect quirks that matter to correctness.

    On SQLite every transaction starts with `BEGIN IMMEDIATE`: writers queue on the database
    lock (busy_timeout) instead of failing with a deadlock when a reader upgrades to a writer.
    """

    def __init__(self, url: str, *, pool_size: int = 10, pgbouncer: bool = False):
        self.url = async_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            self.engine: AsyncEngine = create_async_engine(self.url, pool_size=pool_size, max_overflow=pool_size)
            _sqlite_pragmas(self.engine)
        else:
            # No pre-ping: it costs a round trip per transaction. A connection broken by a
            # server restart fails one job, which arq and the sweep retry.
            self.engine = create_async_engine(
                self.url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800,
                **(pgbouncer_options() if pgbouncer else {}),
            )
        # Autocommit for single statements, except behind PgBouncer in transaction mode: outside
        # a transaction asyncpg's prepare and execute may reach different server connections.
        self._autocommit = not (self.is_sqlite or pgbouncer)
        self._compiled: OrderedDict[Any, Any] = OrderedDict()

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as connection:
            yield connection

    @asynccontextmanager
    async def lean(self, *, autocommit: bool = False) -> AsyncIterator[Any]:
        """A transaction for the send path: on PostgreSQL a `core.lean.LeanConnection` (the
        statements run with asyncpg's own calls), on SQLite SQLAlchemy's connection. Both
        take the same Core statements and answer the same way.

        `autocommit` runs each statement on its own on PostgreSQL: one round trip instead of
        three (BEGIN, the statement, COMMIT). Not behind PgBouncer in transaction mode, where
        outside a transaction asyncpg's prepare and execute may reach different server
        connections, nor on SQLite: there it is a transaction like any other."""
        if self.is_sqlite:
            async with self.begin() as connection:
                yield connection
            return
        async with self.engine.connect() as connection:
            pooled = await connection.get_raw_connection()
            driver = pooled.driver_connection
            lean = LeanConnection(driver, pooled.dbapi_connection, self.engine.dialect, self._compiled)
            try:
                if autocommit and self._autocommit:
                    yield lean
                else:
                    async with driver.transaction():
                        yield lean
            except BaseException as error:
                # A connection cut, or a statement cancelled midway, leaves it in no known
                # state: closed rather than handed to the next job.
                if (
                    not isinstance(error, Exception) or driver.is_closed() or driver.is_in_transaction()
                    or (isinstance(error, DBAPIError) and error.connection_invalidated)
                ):
                    await connection.invalidate()
                raise

    async def write(self, statement: Any, parameters: dict[str, Any]) -> list[Any]:
        """One statement committed on its own (autocommit where that is safe); the rows it
        returns (with RETURNING), as mappings."""
        async with self.lean(autocommit=True) as connection:
            result = await connection.execute(statement, parameters)
            return list(result.mappings()) if result.returns_rows else []

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """For reads: on SQLite a deferred transaction, so readers never queue for the write lock."""
        async with self.engine.connect() as connection:
            if self.is_sqlite:
                await connection.execution_options(sqlite_read=True)
            yield connection

    async def ping(self) -> None:
        from sqlalchemy import text

        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()


def _sqlite_pragmas(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        read_only = connection.get_execution_options().get("sqlite_read", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


class member_of(ColumnElement[bool]):  # noqa: N801 - used like a SQL function
    """`column IN :name`, for a list given when the statement runs (`{name: [...]}`).

    On PostgreSQL it is `column = ANY($n)` with one array parameter: one SQL text and one
    prepared statement whatever the list's length. An expanding IN would be rendered again
    for every length, and prepared again whenever a new length pushed an old one out of the
    driver's statement cache. Elsewhere it is SQLAlchemy's expanding IN."""

    inherit_cache = True
    type = Boolean()
    _is_implicitly_boolean = True  # a comparison already: no `= 1` on SQLite
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement), ("name", InternalTraversal.dp_string)]

    def __init__(self, column: Any, name: str):
        self.column = column
        self.name = name


@compiles(member_of)
def _member_of(element: member_of, compiler: Any, **options: Any) -> str:
    return compiler.process(element.column.in_(bindparam(element.name, expanding=True)), **options)


@compiles(member_of, "postgresql")
def _member_of_postgresql(element: member_of, compiler: Any, **options: Any) -> str:
    from sqlalchemy.dialects.postgresql import ARRAY

    return compiler.process(element.column == any_(bindparam(element.name, type_=ARRAY(element.column.type))), **options)


async def each_returning(connection: Any, statement: Any, rows: list[dict[str, Any]]) -> list[Any]:
    """An UPDATE … RETURNING run for each of `rows`; the rows it returned. On the lean path
    (PostgreSQL) one round trip for all, with asyncpg's `fetchmany`; SQLAlchemy runs an UPDATE
    with RETURNING for one parameter set at a time."""
    if isinstance(connection, LeanConnection):
        return (await connection.execute(statement, rows)).all()
    return [row for one in rows for row in (await connection.execute(statement, one)).all()]


def one_of(column: Any, values: Iterable[Any], *, negate: bool = False) -> Any:
    """`column IN (…)` over constants known when the statement is built, as ordinary bound
    parameters. A plain `in_()` takes an "expanding" parameter that SQLAlchemy renders again
    on every execution; on the send path that cost more than the query."""
    items = [literal(value, column.type) for value in values]
    return column.not_in(items) if negate else column.in_(items)


def insert_ignore(connection: AsyncConnection, table: Table, *, conflict: list[str]) -> Any:
    """An INSERT that skips rows whose `conflict` key exists (dedupe without a race)."""
    return _dialect_insert(connection, table).on_conflict_do_nothing(index_elements=conflict)


def upsert(connection: AsyncConnection, table: Table, *, conflict: list[str], update: list[str]) -> Any:
    """An INSERT … ON CONFLICT DO UPDATE of the `update` columns, on SQLite and PostgreSQL."""
    statement = _dialect_insert(connection, table)
    return statement.on_conflict_do_update(
        index_elements=conflict, set_={name: getattr(statement.excluded, name) for name in update}
    )


def _dialect_insert(connection: AsyncConnection, table: Table) -> Any:
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)
