"""Story growth: an outlet joining a story a recipient was already sent is news for them.

One row per (new member item, recipient), written when the item joins a story already
queued for that recipient, where no delivery of its own is queued. The first message to the
recipient that shows the item (the next digest's "now in 5 outlets (+1: SPIEGEL)" line, or
the story's own entry while that was still pending) claims it (`message_id`), as deliveries
are claimed: in the transaction that stores the message, so a crash or a second worker
shows it once. The rows go with their item (retention) or story.

Revision ID: 0008_i23_story_growth
Revises: 0003_stories
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_i23_story_growth"
down_revision = "0003_stories"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "story_growth",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "story_id",
            sa.Integer,
            sa.ForeignKey("stories.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column(
            "item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("recipient", sa.Text, nullable=False),
        sa.Column("watchlist", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("message_id", sa.Text),  # NULL: not shown yet
        sa.UniqueConstraint("item_id", "recipient", name="uq_story_growth_item_recipient"),
        sa.Index("ix_story_growth_recipient_message", "recipient", "message_id"),
    )


def downgrade() -> None:
    op.drop_table("story_growth")
