"""Campaign authoring: campaign versions and live config loads, the version and A/B variant
of each message, A/B decisions, and the HCP's time zone for quiet hours.

Revision ID: 0008
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

from core.db import UTCDateTime

revision = "0008"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hcps") as batch:
        batch.add_column(sa.Column("timezone", sa.String(64)))
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("campaign_version", sa.String(16)))
        batch.add_column(sa.Column("variant", sa.Integer))
    op.create_table(
        "campaign_versions",
        sa.Column("campaign_id", sa.String(128), nullable=False),
        sa.Column("version", sa.String(16), nullable=False),
        sa.Column("took_effect_at", UTCDateTime, nullable=False),
        sa.Column("subject", sa.Text),
        sa.PrimaryKeyConstraint("campaign_id", "version", name="pk_campaign_versions"),
    )
    op.create_table(
        "config_loads",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("text_hash", sa.String(64), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("source", sa.String(500)),
        sa.Column("loaded_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_config_loads"),
    )
    op.create_table(
        "ab_decisions",
        sa.Column("campaign_id", sa.String(128), nullable=False),
        sa.Column("subjects_hash", sa.String(16), nullable=False),
        sa.Column("winner", sa.Integer, nullable=False),
        sa.Column("metric", sa.String(16), nullable=False),
        sa.Column("figures", sa.JSON, nullable=False),
        sa.Column("decided_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", name="pk_ab_decisions"),
    )


def downgrade() -> None:
    op.drop_table("ab_decisions")
    op.drop_table("config_loads")
    op.drop_table("campaign_versions")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("variant")
        batch.drop_column("campaign_version")
    with op.batch_alter_table("hcps") as batch:
        batch.drop_column("timezone")
