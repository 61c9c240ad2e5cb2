"""Claims that cost the same at 600 feeds as at 60,000.

A claim used to send the names of every feed the worker still had to poll this cycle
(its configured feeds, less those polled), and PostgreSQL compared them with every feed:
at 10,000 feeds over 2,000 hosts a claim took 20-45 ms, and once psycopg prepared the
statement, its generic plan took 2.4-4.5 s per claim. Now sync_feeds marks which feeds
the configuration polls (`active`), and a claim marks each feed it takes with its cycle
(`poll_cycle`), so one cycle takes each feed at most once; the claim reads the due feeds
in order from the (next_poll_at, id) index of the polled feeds and stops at its limit.

Revision ID: 0006_claims
Revises: 0002_polling
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_claims"
down_revision = "0002_polling"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "feeds", sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true())
    )
    op.add_column("feeds", sa.Column("poll_cycle", sa.Text))
    op.drop_index("ix_feeds_next_poll_at", "feeds")
    op.create_index(
        "ix_feeds_due",
        "feeds",
        ["next_poll_at", "id"],
        postgresql_where=sa.text("active"),
        sqlite_where=sa.text("active = 1"),
    )


def downgrade() -> None:
    op.drop_index("ix_feeds_due", "feeds")
    op.create_index("ix_feeds_next_poll_at", "feeds", ["next_poll_at"])
    op.drop_column("feeds", "poll_cycle")
    op.drop_column("feeds", "active")
