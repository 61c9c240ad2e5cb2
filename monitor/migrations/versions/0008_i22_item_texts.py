"""Item texts: the main text of each item's article page, for full-text feeds.

One row per item whose page was claimed by a worker, fetched, or given up (with the reason),
so each page is fetched once even with several workers; deleted with its item.

Revision ID: 0008_i22_item_texts
Revises: 0001
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_i22_item_texts"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "item_texts",
        sa.Column(
            "item_id",
            sa.Integer,
            sa.ForeignKey("items.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("feed", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("claimed_until", sa.DateTime),
        sa.Column("fetched_at", sa.DateTime),
        sa.Column("words", sa.Integer, nullable=False, server_default="0"),
        sa.Column("body", sa.Text),
        sa.Column("error", sa.Text),
    )
    op.create_index("ix_item_texts_feed", "item_texts", ["feed"])


def downgrade() -> None:
    op.drop_table("item_texts")
