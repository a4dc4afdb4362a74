"""Inbound events whose CRM lookup failed for a while are retried at a due time.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from core.db import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inbound_events") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("due_at", UTCDateTime))
    op.create_index("ix_inbound_events_status_due_at", "inbound_events", ["status", "due_at"])


def downgrade() -> None:
    op.drop_index("ix_inbound_events_status_due_at", "inbound_events")
    with op.batch_alter_table("inbound_events") as batch:
        batch.drop_column("due_at")
        batch.drop_column("attempts")
