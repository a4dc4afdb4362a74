"""SQLAlchemy Core statements run with asyncpg's own calls: the send path on PostgreSQL.

On the send path a statement costs more in SQLAlchemy's execution machinery than in the
database: about 170 µs of Python per statement and 300 µs per transaction (greenlet switches,
the execution context, result metadata), against 80 µs and 130 µs for asyncpg alone. A
`LeanConnection` keeps what SQLAlchemy is good at, the statement and its compiled SQL, bind
processors and result types, and runs the compiled SQL on the pooled connection's asyncpg
driver. It answers the part of `AsyncConnection`'s interface the send path uses, so the same
code runs on it and, on SQLite, on SQLAlchemy's own connection (`Database.lean`).

Statements are compiled once per statement object: build them once (module constants, or
cached), as the send path does anyway. Errors come out as SQLAlchemy's (`IntegrityError`,
`OperationalError` …), translated the way its asyncpg dialect translates them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterator, Sequence

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.dml import Insert

CACHE_SIZE = 256


class Row(tuple):  # type: ignore[type-arg]
    """A result row as SQLAlchemy's `Row` is used: a tuple, `row.name`, `row._mapping`."""

    _keys: tuple[str, ...] = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[self._keys.index(name)]
        except ValueError:
            raise AttributeError(name) from None

    @property
    def _mapping(self) -> dict[str, Any]:
        return dict(zip(self._keys, self))


class _Listed:
    def __init__(self, items: list[Any]):
        self._items = items

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def all(self) -> list[Any]:
        return list(self._items)

    def first(self) -> Any:
        return self._items[0] if self._items else None

    def one(self) -> Any:
        if len(self._items) != 1:
            raise sa_exc.NoResultFound("no row") if not self._items else sa_exc.MultipleResultsFound("several rows")
        return self._items[0]

    def one_or_none(self) -> Any:
        if len(self._items) > 1:
            raise sa_exc.MultipleResultsFound("several rows")
        return self._items[0] if self._items else None


class LeanResult(_Listed):
    """The rows (already fetched) and the row count of one statement."""

    def __init__(self, rows: list[Row], rowcount: int, returns_rows: bool):
        super().__init__(rows)
        self.rowcount = rowcount
        self.returns_rows = returns_rows

    def mappings(self) -> _Listed:
        return _Listed([row._mapping for row in self._items])

    def scalars(self) -> _Listed:
        return _Listed([row[0] for row in self._items])

    def fetchall(self) -> list[Row]:
        return self.all()

    def scalar(self) -> Any:
        return self._items[0][0] if self._items else None

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalar_one_or_none(self) -> Any:
        row = self.one_or_none()
        return None if row is None else row[0]


class _Compiled:
    """One statement compiled for PostgreSQL, with what running it needs."""

    __slots__ = ("statement", "compiled", "defaults", "processors", "results", "row_type", "fetches", "sql", "plan")

    def __init__(self, statement: Any, dialect: Dialect, keys: Sequence[str] | None):
        self.statement = statement  # held, so the cache key (its id) is never reused meanwhile
        self.compiled = statement.compile(dialect=dialect, column_keys=list(keys) if keys is not None else None)
        if getattr(self.compiled, "update_prefetch", None):
            raise TypeError("statements with Python-side onupdate defaults do not run on the lean path")
        self.defaults: dict[str, Any] = {}
        for column in getattr(self.compiled, "insert_prefetch", ()):
            if column.default is None or not column.default.is_scalar:
                raise TypeError(f"column {column.key}: only constant defaults run on the lean path; pass a value")
            self.defaults[column.key] = column.default.arg
        self.processors = {
            name: processor for name, bind in self.compiled.binds.items()
            if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }
        columns = list(statement.exported_columns) if hasattr(statement, "exported_columns") else []
        self.results = [column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns]
        self.row_type: type[Row] | None = None
        self.sql = self.compiled.string
        self.plan = self._plan()
        self.fetches = bool(self.results) or not getattr(statement, "is_dml", False)
        """A query, or DML with RETURNING: rows come back. Else only the command tag's count."""

    def _plan(self) -> list[tuple[str, str, bool, Any, Any]] | None:
        """Where each positional argument comes from: (key, name, required, value, processor),
        or None when the SQL itself depends on the values (an expanding IN)."""
        compiled = self.compiled
        if compiled.post_compile_params or compiled.literal_execute_params:
            return None
        binds = {name: bind for bind, name in compiled.bind_names.items()}
        plan = []
        for name in compiled.positiontup or ():
            bind = binds[name]
            if bind.callable is not None:
                return None
            plan.append((bind.key, name, bind.required, bind.value, self.processors.get(name)))
        return plan

    def arguments(self, parameters: dict[str, Any] | None) -> tuple[str, list[Any]]:
        """The SQL to send and its arguments, as SQLAlchemy's `construct_params` and its
        bind processors would make them."""
        if self.defaults:
            parameters = {**self.defaults, **(parameters or {})}
        if self.plan is not None:
            given = parameters or {}
            arguments = []
            for key, name, required, value, processor in self.plan:
                if key in given:
                    value = given[key]
                elif name in given:
                    value = given[name]
                elif required:
                    raise sa_exc.InvalidRequestError(f"A value is required for bind parameter {key!r}")
                arguments.append(value if processor is None else processor(value))
            return self.sql, arguments
        state = self.compiled.construct_expanded_state(parameters, escape_names=False)
        processors = {**self.processors, **state.processors} if state.processors else self.processors
        values = state.parameters
        arguments = []
        for name in state.positiontup or ():
            value = values[name]
            processor = processors.get(name)
            arguments.append(value if processor is None else processor(value))
        return state.statement, arguments

    def rows(self, records: list[Any]) -> list[Row]:
        if not records:
            return []
        if self.row_type is None:
            self.row_type = type("Row", (Row,), {"_keys": tuple(records[0].keys()), "__slots__": ()})
        row_type, processors = self.row_type, self.results
        if len(processors) != len(records[0]):
            processors = [None] * len(records[0])
        return [
            row_type(value if processor is None or value is None else processor(value)
                     for processor, value in zip(processors, record))
            for record in records
        ]


class LeanConnection:
    """An asyncpg connection inside a transaction (or in autocommit), spoken to with
    SQLAlchemy Core statements. `dialect` is SQLAlchemy's, for code that builds a statement
    per dialect (`insert_ignore`)."""

    def __init__(self, driver: Any, adapter: Any, dialect: Dialect, cache: OrderedDict[Any, _Compiled]):
        self.driver = driver
        self.adapter = adapter
        self.dialect = dialect
        self._cache = cache

    def _compiled(self, statement: Any, parameters: dict[str, Any] | None) -> _Compiled:
        keys = tuple(sorted(parameters)) if isinstance(statement, Insert) and parameters else None
        key = (id(statement), keys)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = _Compiled(statement, self.dialect, keys)
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return found

    async def execute(self, statement: Any, parameters: dict[str, Any] | list[dict[str, Any]] | None = None) -> LeanResult:
        if isinstance(parameters, list):
            return await self._execute_many(statement, parameters)
        compiled = self._compiled(statement, parameters)
        sql, arguments = compiled.arguments(parameters)
        try:
            if compiled.fetches:
                records = await self.driver.fetch(sql, *arguments)
                return LeanResult(compiled.rows(records), len(records), True)
            status = await self.driver.execute(sql, *arguments)
        except Exception as error:  # noqa: BLE001 - re-raised as SQLAlchemy's error
            raise self._translated(error, sql, arguments) from error
        return LeanResult([], _count(status), False)

    async def _execute_many(self, statement: Any, parameters: list[dict[str, Any]]) -> LeanResult:
        if not parameters:
            return LeanResult([], 0, False)
        compiled = self._compiled(statement, parameters[0])
        statements = [compiled.arguments(one) for one in parameters]
        sql = statements[0][0]
        if any(other != sql for other, _ in statements):
            raise TypeError("an executemany whose rows render different SQL (an expanding IN) does not run on the lean path")
        arguments = [one for _, one in statements]
        try:
            if compiled.results:
                records = await self.driver.fetchmany(sql, arguments)
                return LeanResult(compiled.rows(records), len(records), True)
            await self.driver.executemany(sql, arguments)
        except Exception as error:  # noqa: BLE001 - re-raised as SQLAlchemy's error
            raise self._translated(error, sql, arguments) from error
        return LeanResult([], -1, False)

    def _translated(self, error: Exception, sql: str, arguments: Any) -> Exception:
        """asyncpg's error as SQLAlchemy raises it on its own path (its dialect's DBAPI
        error, wrapped in `sqlalchemy.exc`), so callers and reasons read the same."""
        try:
            self.adapter._handle_exception(error)
        except Exception as translated:  # noqa: BLE001 - the dialect raises its translation
            dbapi_error = self.dialect.loaded_dbapi.Error
            if isinstance(translated, dbapi_error):
                return sa_exc.DBAPIError.instance(
                    sql, arguments, translated, dbapi_error, connection_invalidated=self.driver.is_closed()
                )
            return translated
        return error


def _count(status: str) -> int:
    """The row count from a command tag (`UPDATE 3`, `INSERT 0 1`)."""
    last = status.rsplit(" ", 1)[-1] if status else ""
    return int(last) if last.isdigit() else -1
