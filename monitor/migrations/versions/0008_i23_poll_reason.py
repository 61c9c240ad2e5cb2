"""Why a feed's next poll is when it is, and the poll hint its server gave.

`monitor feeds` shows the reason ("every 15m (configured)", "every 4m (busy feed)",
"backing off after 3 failures"), written with each poll's outcome. The feed's RSS
<ttl>/sy:updatePeriod is kept, so that a poll answered 304 (nothing parsed) schedules the
next one as the last parsed document asked.

Revision ID: 0008_i23_poll_reason
Revises: 0006_claims
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_i23_poll_reason"
down_revision = "0006_claims"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("feeds", sa.Column("poll_reason", sa.Text))
    op.add_column("feeds", sa.Column("ttl", sa.Float))


def downgrade() -> None:
    op.drop_column("feeds", "ttl")
    op.drop_column("feeds", "poll_reason")
