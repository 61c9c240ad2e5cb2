"""Deliveries found by their message.

Marking a message sent, dead-lettered or (on PostgreSQL) deleting one updates the
deliveries it carries, found by `message_id`. Without an index each of those read the whole
deliveries table: bench_workers' 120 alert messages spent 250 ms of PostgreSQL's time in
that one UPDATE over 9,000 deliveries, and the cost grows with every delivery ever made.

Revision ID: 0007_deliveries_by_message
Revises: 0004_delivery
Create Date: 2026-12-03
"""

from alembic import op

revision = "0007_deliveries_by_message"
down_revision = "0004_delivery"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_deliveries_message_id", "deliveries", ["message_id"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_message_id", "deliveries")
