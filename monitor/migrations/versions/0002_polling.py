"""Polling engine: feed leases, health and rhythm columns, shared per-host state.

Revision ID: 0002_polling
Revises: 0001
Create Date: 2026-11-29
"""

from urllib.parse import urlsplit

import sqlalchemy as sa
from alembic import op

revision = "0002_polling"
down_revision = "0001"
branch_labels = None
depends_on = None

_FEED_COLUMNS = (
    sa.Column("host", sa.Text),
    sa.Column("lease_owner", sa.Text),
    sa.Column("lease_expires_at", sa.DateTime),
    sa.Column("redirect_url", sa.Text),
    sa.Column("redirect_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("ignore_validators", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("unchanged_streak", sa.Integer, nullable=False, server_default="0"),
    sa.Column("item_gap", sa.Float),
    sa.Column("interval", sa.Float),
    sa.Column("last_error_at", sa.DateTime),
)


def upgrade() -> None:
    for column in _FEED_COLUMNS:
        op.add_column("feeds", column)
    op.create_index("ix_feeds_host", "feeds", ["host"])
    op.create_table(
        "hosts",
        sa.Column("host", sa.Text, primary_key=True),
        sa.Column("lease_owner", sa.Text),
        sa.Column("lease_expires_at", sa.DateTime),
        sa.Column("last_request_at", sa.DateTime),
        sa.Column("blocked_until", sa.DateTime),
    )
    connection = op.get_bind()
    feeds = sa.table("feeds", sa.column("id"), sa.column("url"), sa.column("host"))
    hosts = sa.table("hosts", sa.column("host"))
    known: set[str] = set()
    for row in connection.execute(sa.select(feeds.c.id, feeds.c.url)).all():
        host = (urlsplit(row.url).hostname or "").lower()
        connection.execute(feeds.update().where(feeds.c.id == row.id).values(host=host))
        known.add(host)
    if known:
        connection.execute(hosts.insert(), [{"host": host} for host in sorted(known)])


def downgrade() -> None:
    op.drop_table("hosts")
    op.drop_index("ix_feeds_host", "feeds")
    for column in reversed(_FEED_COLUMNS):
        op.drop_column("feeds", column.name)
