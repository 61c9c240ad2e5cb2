"""The tables, as the newest migration leaves them, and the column types they share."""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from typing_extensions import override

from monitor.models import Hit, Item


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend."""

    impl = sa.DateTime
    cache_ok = True

    @override
    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; pass an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    @override
    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


metadata = sa.MetaData()

feeds = sa.Table(
    "feeds",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("config_url", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default="new"),
    sa.Column("title", sa.Text),
    sa.Column("etag", sa.Text),
    sa.Column("last_modified", sa.Text),
    sa.Column("body_hash", sa.Text),
    sa.Column("next_poll_at", UTCDateTime),  # NULL: never again (410 Gone)
    sa.Column("last_polled_at", UTCDateTime),
    sa.Column("last_success_at", UTCDateTime),
    sa.Column("last_new_item_at", UTCDateTime),
    sa.Column("last_error", sa.Text),
    sa.Column("error_since", UTCDateTime),
    sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("items_total", sa.Integer, nullable=False, server_default="0"),
    # Polling engine (migration 0002_polling): leases, redirects, validators, rhythm.
    sa.Column("host", sa.Text, index=True),
    sa.Column("lease_owner", sa.Text),
    sa.Column("lease_expires_at", UTCDateTime),
    sa.Column("redirect_url", sa.Text),
    sa.Column("redirect_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("ignore_validators", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("unchanged_streak", sa.Integer, nullable=False, server_default="0"),
    sa.Column("item_gap", sa.Float),
    sa.Column("interval", sa.Float),
    sa.Column("last_error_at", UTCDateTime),
    # Claims (migration 0006_claims): which feeds the configuration polls, and the cycle
    # that last claimed each, so a claim reads only due feeds (ix_feeds_due) and no list.
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("poll_cycle", sa.Text),
    # Migration 0008_i23_poll_reason: why the next poll is when it is; the feed's own ttl.
    sa.Column("poll_reason", sa.Text),
    sa.Column("ttl", sa.Float),
    # Only the polled feeds: one removed from the configuration keeps its old next poll,
    # and would otherwise stay at the front of the index for every claim to step over.
    sa.Index(
        "ix_feeds_due",
        "next_poll_at",
        "id",
        postgresql_where=sa.text("active"),
        sqlite_where=sa.text("active = 1"),
    ),
)

# Shared per-host politeness: one worker at a time leases a host, so the per-host connection
# limit and minimum gap hold across worker processes; blocked_until is a host-wide Retry-After.
hosts = sa.Table(
    "hosts",
    metadata,
    sa.Column("host", sa.Text, primary_key=True),
    sa.Column("lease_owner", sa.Text),
    sa.Column("lease_expires_at", UTCDateTime),
    sa.Column("last_request_at", UTCDateTime),
    sa.Column("blocked_until", UTCDateTime),
)

items = sa.Table(
    "items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("key", sa.Text, nullable=False, unique=True),
    sa.Column("feed", sa.Text, nullable=False, index=True),
    sa.Column("guid", sa.Text, nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("summary", sa.Text, nullable=False),
    sa.Column("language", sa.Text, nullable=False),
    sa.Column("published_at", UTCDateTime, nullable=False),
    sa.Column("first_seen_at", UTCDateTime, nullable=False, index=True),
)

matches = sa.Table(
    "matches",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="CASCADE"), nullable=False),
    sa.Column("watchlist", sa.Text, nullable=False),
    sa.Column("hits", sa.Text, nullable=False),  # JSON list of [term, field, start, end]
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("item_id", "watchlist", name="uq_matches_item_watchlist"),
    # Spikes (migration 0008_i26_spikes): the window's stories of every watchlist, read
    # from the index alone, and a watchlist's last match (silence).
    sa.Index("ix_matches_created", "created_at", "watchlist", "item_id"),
    sa.Index("ix_matches_watchlist_created", "watchlist", "created_at"),
)

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("message_id", sa.Text, primary_key=True),
    sa.Column("recipient", sa.Text, nullable=False),
    sa.Column("mime", sa.LargeBinary, nullable=False),
    sa.Column("status", sa.Text, nullable=False),  # ready | sent | dead
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text),
    sa.Column("next_attempt_at", UTCDateTime, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("sent_at", UTCDateTime),
    sa.Column("kind", sa.Text, nullable=False, server_default="digest"),  # digest | alert
    sa.Column("lease_owner", sa.Text),  # the worker sending it right now, if any
    sa.Column("lease_until", UTCDateTime),
    # When a server first left the end of this message unanswered: it may have it. One more
    # copy is allowed, never a third (delivery.send_ready).
    sa.Column("unconfirmed_at", UTCDateTime),
    sa.Index("ix_messages_status_next", "status", "next_attempt_at"),
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "match_id", sa.Integer, sa.ForeignKey("matches.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("watchlist", sa.Text, nullable=False),
    sa.Column("recipient", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),  # pending | claimed | sent | dead
    # Indexed (migration 0007): marking a message sent updates the deliveries it carries.
    sa.Column("message_id", sa.Text, sa.ForeignKey("messages.message_id"), index=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("sent_at", UTCDateTime),
    sa.UniqueConstraint("match_id", "recipient", name="uq_deliveries_match_recipient"),
    sa.Index("ix_deliveries_status_watchlist", "status", "watchlist"),
)

digest_runs = sa.Table(
    "digest_runs",
    metadata,
    sa.Column("watchlist", sa.Text, nullable=False),
    sa.Column("recipient", sa.Text, nullable=False),
    sa.Column("slot", UTCDateTime, nullable=False),
    sa.Column("message_id", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.PrimaryKeyConstraint("watchlist", "recipient", "slot", name="pk_digest_runs"),
)

workers = sa.Table(
    "workers",
    metadata,
    sa.Column("worker_id", sa.Text, primary_key=True),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("config_hash", sa.Text, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("heartbeat_at", UTCDateTime, nullable=False),
)

meta = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

# Stories (migration 0003_stories). item_keys outlive items as tombstones; see retention.py.
_HASH = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite: the rowid itself

item_keys = sa.Table(
    "item_keys",
    metadata,
    sa.Column("hash", _HASH, primary_key=True, autoincrement=False),  # stories.dedupe_keys
    sa.Column("item_id", sa.Integer),  # NULL once the item was pruned
    sa.Column("last_seen_at", UTCDateTime, nullable=False),
)

item_sources = sa.Table(
    "item_sources",
    metadata,
    sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="CASCADE")),
    sa.Column("feed", sa.Text, nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("seen_at", UTCDateTime, nullable=False),
    sa.PrimaryKeyConstraint("item_id", "feed", name="pk_item_sources"),
    sqlite_with_rowid=False,
)

stories = sa.Table(
    "stories",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),  # its first item
    sa.Column("created_at", UTCDateTime, nullable=False),
)

story_members = sa.Table(
    "story_members",
    metadata,
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
    sa.Column("revision_of", sa.Integer),  # a re-alerted update of that item
)

story_bands = sa.Table(
    "story_bands",
    metadata,
    sa.Column("band", sa.BigInteger, nullable=False),
    sa.Column("item_id", sa.Integer, nullable=False),
    sa.PrimaryKeyConstraint("band", "item_id", name="pk_story_bands"),
    sqlite_with_rowid=False,
)

# Story growth (migration 0008_i23_story_growth): a member that joined a story already
# queued for a recipient, until a message to that recipient shows it (message_id).
story_growth = sa.Table(
    "story_growth",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "story_id",
        sa.Integer,
        sa.ForeignKey("stories.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="CASCADE"), nullable=False),
    sa.Column("recipient", sa.Text, nullable=False),
    sa.Column("watchlist", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("message_id", sa.Text),  # NULL: not shown to the recipient yet
    sa.UniqueConstraint("item_id", "recipient", name="uq_story_growth_item_recipient"),
    sa.Index("ix_story_growth_recipient_message", "recipient", "message_id"),
)


# Full text (migrations 0008_i22_item_texts, 0010_i22_page_queue): one row per item whose
# page is queued (waiting), claimed, fetched or given up; deleted with its item at retention.
class PageStatus(enum.StrEnum):
    WAITING = "waiting"  # queued when its item was stored (a full-text feed's new item)
    CLAIMED = "claimed"  # a worker is fetching it
    TEXT = "text"  # extracted, at least fulltext.min_words words
    SHORT = "short"  # too little text: a consent or bot wall, a paywall, a video page
    FAILED = "failed"  # HTTP error, too large, not HTML, too slow, extraction failed
    REFUSED = "refused"  # robots.txt disallows it
    OLD = "old"  # the item is backlog (older than `backlog` when first seen): not fetched


item_texts = sa.Table(
    "item_texts",
    metadata,
    sa.Column(
        "item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("feed", sa.Text, nullable=False, index=True),
    sa.Column("status", sa.Text, nullable=False, index=True),  # PageStatus
    sa.Column("claimed_until", UTCDateTime),  # while claimed: another worker waits till then
    sa.Column("fetched_at", UTCDateTime),
    sa.Column("words", sa.Integer, nullable=False, server_default="0"),
    sa.Column("body", sa.Text),  # the extracted main text, for matching and `test` only
    sa.Column("error", sa.Text),  # why there is no text
)

# The item whose page an item has (with story_members outer-joined): a revision's is its
# original's, fetched once for both.
PAGE_ITEM = sa.func.coalesce(story_members.c.revision_of, items.c.id)

# Full text (migration 0009_i22_page_sites): each site's page politeness, shared by workers.
page_sites = sa.Table(
    "page_sites",
    metadata,
    sa.Column("site", sa.Text, primary_key=True),  # scheme://host[:port]
    sa.Column("next_at", UTCDateTime),  # no page request to the site starts before this
    sa.Column("blocked_until", UTCDateTime),  # it answered 403/429/503: left alone till then
    sa.Column("blocked_why", sa.Text, nullable=False, server_default=""),
    sa.Column("strikes", sa.Integer, nullable=False, server_default="0"),  # such answers in a row
    sa.Column("robots", sa.Text),  # its robots.txt as read (NULL: not read yet)
    sa.Column("robots_at", UTCDateTime),
)


def hits_json(hits: Sequence[Hit]) -> str:
    return json.dumps([[h.term, h.field, h.start, h.end] for h in hits], ensure_ascii=False)


def hits_from(text: str) -> tuple[Hit, ...]:
    return tuple(Hit(term, field, start, end) for term, field, start, end in json.loads(text))


def item_from(row: Any) -> Item:
    return Item(
        key=row.key,
        feed=row.feed,
        guid=row.guid,
        url=row.url,
        title=row.title,
        summary=row.summary,
        published=row.published_at,
        language=row.language,
    )


ITEM_COLUMNS = (
    "key",
    "feed",
    "guid",
    "url",
    "title",
    "summary",
    "language",
    "published_at",
    "first_seen_at",
)


def item_values(item: Item, published: Any, first_seen: Any) -> tuple[Any, ...]:
    """The items-table values, in ITEM_COLUMNS order, of an item first seen at `first_seen`."""
    return (
        item.key,
        item.feed,
        item.guid,
        item.url,
        item.title,
        item.summary,
        item.language,
        published,
        first_seen,
    )


def item_row(item: Item, now: datetime) -> dict[str, Any]:
    """The items-table row of an item first seen at `now`."""
    return dict(zip(ITEM_COLUMNS, item_values(item, item.published, now), strict=True))


@dataclass(frozen=True, slots=True)
class Recorded:
    """A match stored by the first ingest transaction, to be queued by `_settle`."""

    match_id: int
    item_id: int
    watchlist: str
    item: Item


# Spikes (migration 0008_i26_spikes): each watchlist's distinct stories per complete UTC day,
# counted once from matches (they outlive retention: `monitor trends` reads them), and each
# watchlist's spike/silence state. Keyed by day first: a cycle reads the recent days of all.
story_days = sa.Table(
    "story_days",
    metadata,
    sa.Column("day", sa.Date, nullable=False),
    sa.Column("watchlist", sa.Text, nullable=False),
    sa.Column("stories", sa.Integer, nullable=False),
    sa.PrimaryKeyConstraint("day", "watchlist", name="pk_story_days"),
)

spike_watchlists = sa.Table(
    "spike_watchlists",
    metadata,
    sa.Column("watchlist", sa.Text, primary_key=True),
    sa.Column("first_match_at", UTCDateTime),  # the start of its history (warm-up)
    sa.Column("spike_at", UTCDateTime),  # the last spike alert (cool-down)
    sa.Column("silence_at", UTCDateTime),  # the last silence alert (once per silence)
)
