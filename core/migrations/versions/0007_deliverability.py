"""Deliverability: per receiving domain, the recent blocks and the throttle or pause they
caused.

Revision ID: 0007
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from core.db import UTCDateTime

revision = "0007"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "receiving_domains",
        sa.Column("domain", sa.String(255), primary_key=True),
        sa.Column("blocks", sa.Integer, nullable=False, server_default="0"),
        sa.Column("window_started_at", UTCDateTime),
        sa.Column("throttled_until", UTCDateTime),
        sa.Column("paused_until", UTCDateTime),
        sa.Column("reason", sa.Text),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("receiving_domains")
