"""The admin console: each trigger's decision trail, dashboard users, and the indexes behind
the trigger log and the campaign figures over time.

Revision ID: 0009
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

from core.db import UTCDateTime

revision = "0009"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("triggers") as batch:
        batch.add_column(sa.Column("trail", sa.JSON))
    op.create_index("ix_triggers_npi_created_at", "triggers", ["npi", "created_at"])
    op.create_index("ix_triggers_campaign_id_created_at", "triggers", ["campaign_id", "created_at"])
    op.create_index("ix_triggers_created_at", "triggers", ["created_at"])
    op.create_index("ix_messages_campaign_id_sent_at", "messages", ["campaign_id", "sent_at"])
    op.create_index("ix_inbound_events_source_id", "inbound_events", ["source", "id"])
    with op.batch_alter_table("inbound_events") as batch:
        batch.add_column(sa.Column("duplicates", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("last_duplicate_at", UTCDateTime))
    op.create_table(
        "dashboard_users",
        sa.Column("id", sa.Integer, autoincrement=True),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("last_login_at", UTCDateTime),
        sa.PrimaryKeyConstraint("id", name="pk_dashboard_users"),
        sa.UniqueConstraint("email", name="uq_dashboard_users_email"),
    )


def downgrade() -> None:
    op.drop_table("dashboard_users")
    with op.batch_alter_table("inbound_events") as batch:
        batch.drop_column("last_duplicate_at")
        batch.drop_column("duplicates")
    op.drop_index("ix_inbound_events_source_id", "inbound_events")
    op.drop_index("ix_messages_campaign_id_sent_at", "messages")
    op.drop_index("ix_triggers_created_at", "triggers")
    op.drop_index("ix_triggers_campaign_id_created_at", "triggers")
    op.drop_index("ix_triggers_npi_created_at", "triggers")
    with op.batch_alter_table("triggers") as batch:
        batch.drop_column("trail")
