"""Stories: dedupe keys (kept as tombstones), the outlets that carried each item, clusters.

item_keys outlive items: retention deletes old items but keeps their URL and GUID hashes,
so an old item that reappears in a feed is still recognised and never alerts again.
Existing items get their keys here (the same hashes as monitor.stories.dedupe_keys).

Revision ID: 0003_stories
Revises: 0001
Create Date: 2026-11-29
"""

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0003_stories"
down_revision = "0001"
branch_labels = None
depends_on = None

# A 64-bit primary key that is SQLite's rowid (no second index) and BIGINT on PostgreSQL.
_HASH = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "item_keys",
        sa.Column("hash", _HASH, primary_key=True, autoincrement=False),
        sa.Column("item_id", sa.Integer),  # NULL once the item itself was pruned
        sa.Column("last_seen_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "item_sources",
        sa.Column(
            "item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("feed", sa.Text, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("seen_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("item_id", "feed", name="pk_item_sources"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "stories",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),  # its first item
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "story_members",
        sa.Column(
            "item_id",
            sa.Integer,
            sa.ForeignKey("items.id", ondelete="CASCADE"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column(
            "story_id",
            sa.Integer,
            sa.ForeignKey("stories.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("similarity", sa.Float, nullable=False),
        sa.Column("revision_of", sa.Integer),  # set on a re-alerted update of that item
    )
    op.create_table(
        "story_bands",
        sa.Column("band", sa.BigInteger, nullable=False),
        sa.Column("item_id", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("band", "item_id", name="pk_story_bands"),
        sqlite_with_rowid=False,
    )
    _backfill_keys()
    op.execute(
        "INSERT INTO item_sources (item_id, feed, url, seen_at) "
        "SELECT id, feed, url, first_seen_at FROM items"
    )


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def _backfill_keys() -> None:
    connection = op.get_bind()
    rows = connection.execute(sa.text("SELECT id, key, feed, guid, first_seen_at FROM items")).all()
    keys: dict[int, dict[str, object]] = {}
    for item_id, key, feed, guid, seen in rows:
        hashes = [_stable_hash(f"g:{feed}\0{guid}")]
        if key.startswith("u:"):
            hashes.append(_stable_hash(key))
        for value in hashes:
            keys.setdefault(value, {"hash": value, "item_id": item_id, "last_seen_at": seen})
    if keys:
        table = sa.table(
            "item_keys", sa.column("hash"), sa.column("item_id"), sa.column("last_seen_at")
        )
        connection.execute(table.insert(), list(keys.values()))


def downgrade() -> None:
    for table in ("story_bands", "story_members", "stories", "item_sources", "item_keys"):
        op.drop_table(table)
