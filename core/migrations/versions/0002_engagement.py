"""Engagement: per-message open/click/bounce/unsubscribe columns, engagement events, the CRM
activity outbox, and email-rule firings.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from core.db import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("opened_at", UTCDateTime))
        batch.add_column(sa.Column("open_count", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("machine_opens", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("clicked_at", UTCDateTime))
        batch.add_column(sa.Column("click_count", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("bounced_at", UTCDateTime))
        batch.add_column(sa.Column("bounce_reason", sa.Text))
        batch.add_column(sa.Column("unsubscribed_at", UTCDateTime))
        batch.add_column(sa.Column("links", sa.JSON))
    op.create_table(
        "engagement_events",
        sa.Column("id", sa.Integer, autoincrement=True),
        sa.Column("message_id", sa.String(40)),
        sa.Column("npi", sa.String(10)),
        sa.Column("address", sa.String(320)),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("link_index", sa.Integer),
        sa.Column("url", sa.Text),
        sa.Column("user_agent", sa.Text),
        sa.Column("detail", sa.Text),
        sa.Column("occurred_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_engagement_events"),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name="fk_engagement_events_message_id_messages", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_engagement_events_message_id", "engagement_events", ["message_id"])
    op.create_index("ix_engagement_events_address_kind", "engagement_events", ["address", "kind"])
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer, autoincrement=True),
        sa.Column("crm", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("dedupe_key", sa.String(255), nullable=False),
        sa.Column("npi", sa.String(10), nullable=False),
        sa.Column("campaign_id", sa.String(128), nullable=False),
        sa.Column("message_id", sa.String(40), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("object_type", sa.String(64)),
        sa.Column("object_id", sa.String(64)),
        sa.Column("details", sa.JSON, nullable=False),
        sa.Column("occurred_at", UTCDateTime, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", UTCDateTime, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("pushed_at", UTCDateTime),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.UniqueConstraint("dedupe_key", name="uq_outbox_dedupe_key"),
    )
    op.create_index("ix_outbox_status_next_attempt_at", "outbox", ["status", "next_attempt_at"])
    op.create_table(
        "rule_firings",
        sa.Column("rule_key", sa.String(255)),
        sa.Column("trigger_id", sa.String(40)),
        sa.Column("fired_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("rule_key", name="pk_rule_firings"),
    )


def downgrade() -> None:
    op.drop_table("rule_firings")
    op.drop_table("outbox")
    op.drop_table("engagement_events")
    with op.batch_alter_table("messages") as batch:
        for column in ("links", "unsubscribed_at", "bounce_reason", "bounced_at", "click_count", "clicked_at",
                       "machine_opens", "open_count", "opened_at"):
            batch.drop_column(column)
