"""Initial schema: feeds, items, matches, the outbox (messages, deliveries), schedules.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feeds",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("config_url", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="new"),
        sa.Column("title", sa.Text),
        sa.Column("etag", sa.Text),
        sa.Column("last_modified", sa.Text),
        sa.Column("body_hash", sa.Text),
        sa.Column("next_poll_at", sa.DateTime, index=True),
        sa.Column("last_polled_at", sa.DateTime),
        sa.Column("last_success_at", sa.DateTime),
        sa.Column("last_new_item_at", sa.DateTime),
        sa.Column("last_error", sa.Text),
        sa.Column("error_since", sa.DateTime),
        sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("items_total", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_table(
        "items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.Text, nullable=False, unique=True),
        sa.Column("feed", sa.Text, nullable=False, index=True),
        sa.Column("guid", sa.Text, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("language", sa.Text, nullable=False),
        sa.Column("published_at", sa.DateTime, nullable=False),
        sa.Column("first_seen_at", sa.DateTime, nullable=False, index=True),
    )
    op.create_table(
        "matches",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("watchlist", sa.Text, nullable=False),
        sa.Column("hits", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("item_id", "watchlist", name="uq_matches_item_watchlist"),
    )
    op.create_table(
        "messages",
        sa.Column("message_id", sa.Text, primary_key=True),
        sa.Column("recipient", sa.Text, nullable=False),
        sa.Column("mime", sa.LargeBinary, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("next_attempt_at", sa.DateTime, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("sent_at", sa.DateTime),
        sa.Index("ix_messages_status_next", "status", "next_attempt_at"),
    )
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "match_id", sa.Integer, sa.ForeignKey("matches.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("watchlist", sa.Text, nullable=False),
        sa.Column("recipient", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("message_id", sa.Text, sa.ForeignKey("messages.message_id")),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("sent_at", sa.DateTime),
        sa.UniqueConstraint("match_id", "recipient", name="uq_deliveries_match_recipient"),
        sa.Index("ix_deliveries_status_watchlist", "status", "watchlist"),
    )
    op.create_table(
        "schedule_state",
        sa.Column("watchlist", sa.Text, primary_key=True),
        sa.Column("last_slot", sa.DateTime, nullable=False),
    )
    op.create_table(
        "meta",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for table in ("meta", "schedule_state", "deliveries", "messages", "matches", "items", "feeds"):
        op.drop_table(table)
