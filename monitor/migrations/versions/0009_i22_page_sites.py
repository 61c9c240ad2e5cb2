"""Page sites: the politeness state of each site whose article pages monitor fetches,
shared by every worker: when the next page request may start, a back-off (until when, why,
and how many back-off answers in a row), and the site's robots.txt as read and when.

Revision ID: 0009_i22_page_sites
Revises: 0008_i22_item_texts
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_i22_page_sites"
down_revision = "0008_i22_item_texts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "page_sites",
        sa.Column("site", sa.Text, primary_key=True),
        sa.Column("next_at", sa.DateTime),
        sa.Column("blocked_until", sa.DateTime),
        sa.Column("blocked_why", sa.Text, nullable=False, server_default=""),
        sa.Column("strikes", sa.Integer, nullable=False, server_default="0"),
        sa.Column("robots", sa.Text),
        sa.Column("robots_at", sa.DateTime),
    )


def downgrade() -> None:
    op.drop_table("page_sites")
