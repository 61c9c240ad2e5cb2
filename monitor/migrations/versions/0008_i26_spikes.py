"""Spike and silence alerts: daily story counts, each watchlist's alert state, and the
indexes that count a window's stories and find a watchlist's last match.

Revision ID: 0008_i26_spikes
Revises: 0001
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_i26_spikes"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "story_days",
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("watchlist", sa.Text, nullable=False),
        sa.Column("stories", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("day", "watchlist", name="pk_story_days"),
    )
    op.create_table(
        "spike_watchlists",
        sa.Column("watchlist", sa.Text, primary_key=True),
        sa.Column("first_match_at", sa.DateTime),
        sa.Column("spike_at", sa.DateTime),
        sa.Column("silence_at", sa.DateTime),
    )
    op.create_index("ix_matches_created", "matches", ["created_at", "watchlist", "item_id"])
    op.create_index("ix_matches_watchlist_created", "matches", ["watchlist", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_matches_watchlist_created", "matches")
    op.drop_index("ix_matches_created", "matches")
    op.drop_table("spike_watchlists")
    op.drop_table("story_days")
