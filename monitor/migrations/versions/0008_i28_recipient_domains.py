"""Recipient addresses with their domain in lower case.

`a@example.org` and `a@EXAMPLE.org` are one mailbox (RFC 5321 2.4), and the config now
writes every address's domain in lower case. Rows stored under another spelling would
otherwise belong to no configured recipient: pending deliveries never sent, a digest
period handled again. Where both spellings hold a row for the same match (the one person
who got two copies), the pending one of the old spelling goes: its twin carries the match.

Revision ID: 0008_i28_recipient_domains
Revises: 0004_delivery
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_i28_recipient_domains"
down_revision = "0004_delivery"
branch_labels = None
depends_on = None

_TWIN_DELIVERY = "SELECT t.match_id FROM deliveries t WHERE t.recipient = :new"
_STATEMENTS = (
    "DELETE FROM deliveries WHERE recipient = :old AND status = 'pending' "
    f"AND match_id IN ({_TWIN_DELIVERY})",
    "UPDATE deliveries SET recipient = :new WHERE recipient = :old "
    f"AND match_id NOT IN ({_TWIN_DELIVERY})",
    "DELETE FROM digest_runs WHERE recipient = :old AND EXISTS (SELECT 1 FROM digest_runs t "
    "WHERE t.recipient = :new AND t.watchlist = digest_runs.watchlist "
    "AND t.slot = digest_runs.slot)",
    "UPDATE digest_runs SET recipient = :new WHERE recipient = :old",
    "UPDATE messages SET recipient = :new WHERE recipient = :old",
)


def upgrade() -> None:
    bind = op.get_bind()
    spellings: set[str] = set()
    for table in ("deliveries", "digest_runs", "messages"):
        spellings |= set(bind.execute(sa.text(f"SELECT DISTINCT recipient FROM {table}")).scalars())
    for old in sorted(spellings):
        local, at, domain = old.rpartition("@")
        new = f"{local}{at}{domain.lower()}"
        if new != old:
            for statement in _STATEMENTS:
                bind.execute(sa.text(statement), {"old": old, "new": new})


def downgrade() -> None:
    pass  # the lower-case spelling is as valid for the older code
