"""Workers: each running process registers itself, its host and the hash of its config.

Several workers on one PostgreSQL database must read the same YAML; a worker whose config
hash differs from the others' warns. The heartbeat also tells `monitor status` who is alive.

Revision ID: 0005_workers
Revises: 0001
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_workers"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("worker_id", sa.Text, primary_key=True),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("config_hash", sa.Text, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("heartbeat_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("workers")
