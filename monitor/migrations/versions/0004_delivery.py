"""Delivery: one row per (watchlist, recipient, schedule slot), and send leases on messages.

A digest_runs row is inserted in the transaction that claims the digest's deliveries, so
exactly one process (of several workers) composes each digest period. A message's send
lease keeps two workers from sending the same stored message at once.

Revision ID: 0004_delivery
Revises: 0001
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_delivery"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_table("schedule_state")  # replaced by digest_runs (per recipient, per slot)
    op.create_table(
        "digest_runs",
        sa.Column("watchlist", sa.Text, nullable=False),
        sa.Column("recipient", sa.Text, nullable=False),
        sa.Column("slot", sa.DateTime, nullable=False),
        sa.Column("message_id", sa.Text),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("watchlist", "recipient", "slot", name="pk_digest_runs"),
    )
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("lease_owner", sa.Text))
        batch.add_column(sa.Column("lease_until", sa.DateTime))
        batch.add_column(sa.Column("kind", sa.Text, nullable=False, server_default="digest"))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("kind")
        batch.drop_column("lease_until")
        batch.drop_column("lease_owner")
    op.drop_table("digest_runs")
    op.create_table(
        "schedule_state",
        sa.Column("watchlist", sa.Text, primary_key=True),
        sa.Column("last_slot", sa.DateTime, nullable=False),
    )
