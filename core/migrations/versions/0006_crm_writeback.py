"""CRM write-back: a per-CRM pause honoured by every pusher, and claim counts on outbox rows
so a push that may already have reached the CRM is looked up before it is re-created.

Revision ID: 0006
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from core.db import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "crm_pauses",
        sa.Column("crm", sa.String(32), nullable=False),
        sa.Column("until", UTCDateTime, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("crm", name="pk_crm_pauses"),
    )
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("claims", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("clean_claims", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("clean_claims")
        batch.drop_column("claims")
    op.drop_table("crm_pauses")
