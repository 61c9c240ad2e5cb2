"""Messages a server may have accepted without saying so.

A server that does not answer the end of a message may still deliver it (RFC 1047).
`unconfirmed_at` records the first time that happened to a message: it is sent once more,
and a second unanswered end dead-letters it instead of sending a third copy.

Revision ID: 0008_i28_unconfirmed
Revises: 0004_delivery
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_i28_unconfirmed"
down_revision = "0004_delivery"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("unconfirmed_at", sa.DateTime))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("unconfirmed_at")
