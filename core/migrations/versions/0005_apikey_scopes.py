"""API key scopes; the request hash that makes a reused Idempotency-Key with another body a 422.

Revision ID: 0005
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None

ALL_SCOPES = "triggers:write read admin"


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("scopes", sa.String(200), nullable=False, server_default=ALL_SCOPES))
    with op.batch_alter_table("triggers") as batch:
        batch.add_column(sa.Column("request_hash", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("triggers") as batch:
        batch.drop_column("request_hash")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("scopes")
