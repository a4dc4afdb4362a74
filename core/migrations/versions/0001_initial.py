"""Initial schema: directory, API keys, campaigns, triggers, messages, suppressions, inbound events.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from core.db import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hcps",
        sa.Column("npi", sa.String(10), primary_key=True),
        sa.Column("first_name", sa.String(100), nullable=False),
        sa.Column("last_name", sa.String(100), nullable=False),
        sa.Column("credential", sa.String(50), nullable=False),
        sa.Column("specialty", sa.String(200), nullable=False),
        sa.Column("state", sa.String(2), nullable=False),
        sa.Column("send_seq", sa.Integer, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("npi", name="pk_hcps"),
    )
    op.create_table(
        "hcp_emails",
        sa.Column("id", sa.Integer, autoincrement=True),
        sa.Column("npi", sa.String(10), nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_reason", sa.Text),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_hcp_emails"),
        sa.ForeignKeyConstraint(["npi"], ["hcps.npi"], name="fk_hcp_emails_npi_hcps", ondelete="CASCADE"),
        sa.UniqueConstraint("npi", "address", name="uq_hcp_emails_npi_address"),
    )
    op.create_index("ix_hcp_emails_address", "hcp_emails", ["address"])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("last_used_at", UTCDateTime),
        sa.Column("revoked_at", UTCDateTime),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )
    op.create_table(
        "campaign_states",
        sa.Column("campaign_id", sa.String(128)),
        sa.Column("paused", sa.Boolean, nullable=False),
        sa.Column("changed_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", name="pk_campaign_states"),
    )
    op.create_table(
        "triggers",
        sa.Column("id", sa.String(40)),
        sa.Column("npi", sa.String(64), nullable=False),
        sa.Column("campaign_id", sa.String(128), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("source_ref", sa.JSON),
        sa.Column("idempotency_key", sa.String(255)),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("decided_at", UTCDateTime),
        sa.PrimaryKeyConstraint("id", name="pk_triggers"),
        sa.UniqueConstraint("idempotency_key", name="uq_triggers_idempotency_key"),
    )
    op.create_index("ix_triggers_status_created_at", "triggers", ["status", "created_at"])
    op.create_table(
        "messages",
        sa.Column("id", sa.String(40)),
        sa.Column("trigger_id", sa.String(40), nullable=False),
        sa.Column("npi", sa.String(10), nullable=False),
        sa.Column("campaign_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("to_address", sa.String(320)),
        sa.Column("subject", sa.Text),
        sa.Column("html", sa.Text),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("due_at", UTCDateTime),
        sa.Column("claimed_at", UTCDateTime),
        sa.Column("sent_at", UTCDateTime),
        sa.Column("message_id", sa.String(255)),
        sa.Column("error", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
        sa.ForeignKeyConstraint(["trigger_id"], ["triggers.id"], name="fk_messages_trigger_id_triggers", ondelete="CASCADE"),
    )
    op.create_index("ix_messages_trigger_id", "messages", ["trigger_id"])
    op.create_index("ix_messages_npi_campaign_id", "messages", ["npi", "campaign_id"])
    op.create_index("ix_messages_npi_created_at", "messages", ["npi", "created_at"])
    op.create_index("ix_messages_status_due_at", "messages", ["status", "due_at"])
    op.create_table(
        "suppressions",
        sa.Column("id", sa.Integer, autoincrement=True),
        sa.Column("npi", sa.String(10)),
        sa.Column("address", sa.String(320)),
        sa.Column("campaign_id", sa.String(128)),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_suppressions"),
    )
    op.create_index("ix_suppressions_npi", "suppressions", ["npi"])
    op.create_index("ix_suppressions_address", "suppressions", ["address"])
    op.create_table(
        "inbound_events",
        sa.Column("id", sa.Integer, autoincrement=True),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("event_key", sa.String(255), nullable=False),
        sa.Column("event", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("result", sa.Text),
        sa.Column("received_at", UTCDateTime, nullable=False),
        sa.Column("processed_at", UTCDateTime),
        sa.PrimaryKeyConstraint("id", name="pk_inbound_events"),
        sa.UniqueConstraint("source", "event_key", name="uq_inbound_events_source_event_key"),
    )
    op.create_index("ix_inbound_events_status_received_at", "inbound_events", ["status", "received_at"])


def downgrade() -> None:
    for table in ("inbound_events", "suppressions", "messages", "triggers", "campaign_states", "api_keys", "hcp_emails", "hcps"):
        op.drop_table(table)
