"""How an unexpected error is recorded as an item's reason: short, printable, storable."""

from __future__ import annotations

REASON_LIMIT = 500


def describe_error(exc: BaseException) -> str:
    """`Type: message`, without the SQL and parameters SQLAlchemy appends (they can hold the
    very value the database refused), with anything unstorable (NUL, lone surrogates)
    escaped, cut to a readable length."""
    from sqlalchemy.exc import StatementError

    if isinstance(exc, StatementError) and exc.orig is not None:
        exc = exc.orig
    text = f"{type(exc).__name__}: {exc}".strip()
    text = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return text if len(text) <= REASON_LIMIT else text[: REASON_LIMIT - 1] + "…"
