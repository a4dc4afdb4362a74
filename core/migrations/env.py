"""Alembic environment: runs on the connection `core.schema.upgrade` hands it."""

from __future__ import annotations

from alembic import context

from core.db import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=False)
with context.begin_transaction():
    context.run_migrations()
