"""Crash-safe sending: a lease on a message's claim, the moment its SMTP transaction started,
a claim counter; attempts and a due time on triggers whose decision raised.

Revision ID: 0004
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

from core.db import UTCDateTime

revision = "0004"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("claimed_until", UTCDateTime))
        batch.add_column(sa.Column("smtp_started_at", UTCDateTime))
        batch.add_column(sa.Column("claim_seq", sa.Integer, nullable=False, server_default="0"))
    with op.batch_alter_table("triggers") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("due_at", UTCDateTime))


def downgrade() -> None:
    with op.batch_alter_table("triggers") as batch:
        batch.drop_column("due_at")
        batch.drop_column("attempts")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("claim_seq")
        batch.drop_column("smtp_started_at")
        batch.drop_column("claimed_until")
