"""Everything monitor keeps between runs, in SQLite (default) or PostgreSQL. Owns SQLAlchemy.

Each public method is one transaction. The outbox invariant lives here: a match and its
pending deliveries are written in the transaction that stores the item; a message's bytes
are stored in the transaction that claims its deliveries, before anything is sent.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from monitor.models import DigestEntry, FeedState, FeedStatus, Hit, Item, Match, OutgoingMessage


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; pass an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


_MIGRATION_LOCK = 0x6D6F6E69746F72  # "monitor": the advisory lock id for migrations

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
    sa.Column("next_poll_at", UTCDateTime, index=True),
    sa.Column("last_polled_at", UTCDateTime),
    sa.Column("last_success_at", UTCDateTime),
    sa.Column("last_new_item_at", UTCDateTime),
    sa.Column("last_error", sa.Text),
    sa.Column("error_since", UTCDateTime),
    sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("items_total", sa.Integer, nullable=False, server_default="0"),
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
    sa.Column("message_id", sa.Text, sa.ForeignKey("messages.message_id")),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("sent_at", UTCDateTime),
    sa.UniqueConstraint("match_id", "recipient", name="uq_deliveries_match_recipient"),
    sa.Index("ix_deliveries_status_watchlist", "status", "watchlist"),
)

schedule_state = sa.Table(
    "schedule_state",
    metadata,
    sa.Column("watchlist", sa.Text, primary_key=True),
    sa.Column("last_slot", UTCDateTime, nullable=False),
)

meta = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


@dataclass(frozen=True, slots=True)
class IngestResult:
    new_items: tuple[Item, ...]
    matches: tuple[tuple[Item, Match], ...]


@dataclass(frozen=True, slots=True)
class Outbox:
    """Counts for status displays."""

    pending: int
    ready: int
    dead: int
    oldest_pending: datetime | None


def open_store(url: str) -> Store:
    """Create the engine, migrate the schema to the newest version, return the Store."""
    engine = create_engine(url)
    migrate(engine)
    return Store(engine)


def create_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        database = sa.engine.make_url(url).database
        if database and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        sa.event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return sa.create_engine(url, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The driver's own transaction handling is switched off so BEGIN IMMEDIATE can be issued:
    # a writer then waits for the lock up front instead of failing mid-transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin_immediate(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revisions (idempotent).

    "heads": independent branches of migrations (one per feature) all apply.
    """
    alembic_config = AlembicConfig()
    alembic_config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Workers starting together queue here, so exactly one of them migrates.
            connection.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK}
            )
        alembic_config.attributes["connection"] = connection
        command.upgrade(alembic_config, "heads")


def _insert(connection: Connection, table: sa.Table) -> Any:
    """The dialect's INSERT, which has on_conflict_do_nothing()."""
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _hits_json(hits: Sequence[Hit]) -> str:
    return json.dumps([[h.term, h.field, h.start, h.end] for h in hits], ensure_ascii=False)


def _hits_from(text: str) -> tuple[Hit, ...]:
    return tuple(Hit(term, field, start, end) for term, field, start, end in json.loads(text))


def _item_from(row: Any) -> Item:
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


def _feed_from(row: Any) -> FeedState:
    return FeedState(
        name=row.name,
        url=row.url,
        status=FeedStatus(row.status),
        etag=row.etag,
        last_modified=row.last_modified,
        body_hash=row.body_hash,
        next_poll_at=row.next_poll_at,
        last_success_at=row.last_success_at,
        last_error=row.last_error,
        error_since=row.error_since,
        consecutive_failures=row.consecutive_failures,
        items_total=row.items_total,
    )


class Store:
    """The database, behind methods named for what the pipeline needs."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as connection:
            yield connection

    def ping(self) -> bool:
        with self.engine.connect() as connection:
            return connection.execute(sa.text("SELECT 1")).scalar() == 1

    # ------------------------------------------------------------------ feeds

    def sync_feeds(self, configured: Mapping[str, str], now: datetime) -> None:
        """Make the feeds table hold the configured feeds (name -> URL); new ones are due now."""
        with self._tx() as tx:
            known = {row.name: row for row in tx.execute(sa.select(feeds))}
            for name, url in configured.items():
                row = known.get(name)
                if row is None:
                    tx.execute(
                        feeds.insert().values(
                            name=name, url=url, config_url=url, status="new", next_poll_at=now
                        )
                    )
                elif row.config_url != url:  # the user changed the URL: start over with it
                    tx.execute(
                        feeds.update()
                        .where(feeds.c.name == name)
                        .values(
                            url=url,
                            config_url=url,
                            etag=None,
                            last_modified=None,
                            body_hash=None,
                            next_poll_at=now,
                        )
                    )

    def feed_states(self) -> list[FeedState]:
        with self._tx() as tx:
            return [_feed_from(row) for row in tx.execute(sa.select(feeds).order_by(feeds.c.name))]

    def feed_state(self, name: str) -> FeedState | None:
        with self._tx() as tx:
            row = tx.execute(sa.select(feeds).where(feeds.c.name == name)).first()
            return _feed_from(row) if row else None

    def due_feeds(self, names: Iterable[str], now: datetime) -> list[FeedState]:
        query = (
            sa.select(feeds)
            .where(feeds.c.name.in_(list(names)))
            .where(feeds.c.status != FeedStatus.DISABLED.value)
            .where(sa.or_(feeds.c.next_poll_at.is_(None), feeds.c.next_poll_at <= now))
            .order_by(feeds.c.next_poll_at)
        )
        with self._tx() as tx:
            return [_feed_from(row) for row in tx.execute(query)]

    def update_feed(self, name: str, **values: Any) -> None:
        with self._tx() as tx:
            tx.execute(feeds.update().where(feeds.c.name == name).values(**values))

    # ------------------------------------------------------------------ items and matches

    def ingest(
        self,
        batch: Sequence[Item],
        match: Callable[[Item], Sequence[Match]],
        recipients: Mapping[str, Sequence[str]],
        now: datetime,
    ) -> IngestResult:
        """Store new items; match only those; queue a delivery per match and recipient.

        One transaction: an item is never stored without its matches and deliveries.
        """
        if not batch:
            return IngestResult((), ())
        first_seen: dict[str, Item] = {}
        for item in batch:
            first_seen.setdefault(item.key, item)
        unique = list(first_seen.values())
        with self._tx() as tx:
            inserted = tx.execute(
                _insert(tx, items)
                .values([_item_row(item, now) for item in unique])
                .on_conflict_do_nothing(index_elements=["key"])
                .returning(items.c.id, items.c.key)
            ).all()
            ids = {row.key: row.id for row in inserted}
            new_items = tuple(item for item in unique if item.key in ids)
            found = [(item, m) for item in new_items for m in match(item)]
            self._queue(tx, [(ids[item.key], m) for item, m in found], recipients, now)
            if new_items:
                tx.execute(
                    feeds.update()
                    .where(feeds.c.name == new_items[0].feed)
                    .values(items_total=feeds.c.items_total + len(new_items), last_new_item_at=now)
                )
        return IngestResult(new_items, tuple(found))

    def _queue(
        self,
        tx: Connection,
        found: Sequence[tuple[int, Match]],
        recipients: Mapping[str, Sequence[str]],
        now: datetime,
    ) -> None:
        for item_id, found_match in found:
            match_id = tx.execute(
                _insert(tx, matches)
                .values(
                    item_id=item_id,
                    watchlist=found_match.watchlist,
                    hits=_hits_json(found_match.hits),
                    created_at=now,
                )
                .on_conflict_do_nothing()
                .returning(matches.c.id)
            ).scalar()
            if match_id is None:
                continue
            rows = [
                {
                    "match_id": match_id,
                    "watchlist": found_match.watchlist,
                    "recipient": r,
                    "status": "pending",
                    "created_at": now,
                }
                for r in recipients.get(found_match.watchlist, ())
            ]
            if rows:
                tx.execute(deliveries.insert(), rows)

    def item_count(self) -> int:
        with self._tx() as tx:
            return int(tx.execute(sa.select(sa.func.count()).select_from(items)).scalar_one())

    # ------------------------------------------------------------------ outbox

    def pending_entries(
        self, watchlists: Iterable[str] | None = None
    ) -> list[tuple[str, DigestEntry]]:
        """Pending deliveries as (recipient, entry), oldest item first."""
        query = (
            sa.select(
                deliveries.c.id,
                deliveries.c.recipient,
                deliveries.c.watchlist,
                matches.c.hits,
                items,
            )
            .join(matches, deliveries.c.match_id == matches.c.id)
            .join(items, matches.c.item_id == items.c.id)
            .where(deliveries.c.status == "pending")
            .order_by(items.c.published_at.desc(), deliveries.c.id)
        )
        if watchlists is not None:
            query = query.where(deliveries.c.watchlist.in_(list(watchlists)))
        with self._tx() as tx:
            return [
                (
                    row.recipient,
                    DigestEntry((row.id,), row.watchlist, _item_from(row), _hits_from(row.hits)),
                )
                for row in tx.execute(query)
            ]

    def claim(self, message: OutgoingMessage, delivery_ids: Sequence[int], now: datetime) -> bool:
        """Store the rendered message and bind its deliveries to it, atomically.

        Returns False (and stores nothing) when another run claimed any of them first.
        """
        with self._tx() as tx:
            tx.execute(
                messages.insert().values(
                    message_id=message.message_id,
                    recipient=message.recipient,
                    mime=message.mime,
                    status="ready",
                    next_attempt_at=now,
                    created_at=now,
                )
            )
            claimed = tx.execute(
                deliveries.update()
                .where(deliveries.c.id.in_(list(delivery_ids)))
                .where(deliveries.c.status == "pending")
                .values(status="claimed", message_id=message.message_id)
            ).rowcount
            if claimed != len(delivery_ids):
                tx.rollback()
                return False
        return True

    def ready_messages(self, now: datetime) -> list[OutgoingMessage]:
        """Messages stored but not yet accepted by the server, due for an attempt."""
        query = (
            sa.select(messages.c.message_id, messages.c.recipient, messages.c.mime)
            .where(messages.c.status == "ready")
            .where(messages.c.next_attempt_at <= now)
            .order_by(messages.c.created_at)
        )
        with self._tx() as tx:
            return [
                OutgoingMessage(r.message_id, r.recipient, bytes(r.mime)) for r in tx.execute(query)
            ]

    def mark_sent(self, message_id: str, now: datetime) -> None:
        self._finish(message_id, "sent", now, None)

    def mark_dead(self, message_id: str, error: str, now: datetime) -> None:
        self._finish(message_id, "dead", now, error)

    def _finish(self, message_id: str, status: str, now: datetime, error: str | None) -> None:
        with self._tx() as tx:
            tx.execute(
                messages.update()
                .where(messages.c.message_id == message_id)
                .values(
                    status=status, sent_at=now, last_error=error, attempts=messages.c.attempts + 1
                )
            )
            tx.execute(
                deliveries.update()
                .where(deliveries.c.message_id == message_id)
                .values(status=status, sent_at=now)
            )

    def mark_retry(
        self, message_id: str, error: str, now: datetime, delay: Callable[[int], timedelta]
    ) -> None:
        """Record a transient failure; the next attempt waits delay(failed attempts so far)."""
        with self._tx() as tx:
            attempts = (
                tx.execute(
                    sa.select(messages.c.attempts).where(messages.c.message_id == message_id)
                ).scalar_one()
                + 1
            )
            tx.execute(
                messages.update()
                .where(messages.c.message_id == message_id)
                .values(last_error=error, attempts=attempts, next_attempt_at=now + delay(attempts))
            )

    def outbox(self) -> Outbox:
        with self._tx() as tx:
            pending = tx.execute(
                sa.select(sa.func.count(), sa.func.min(deliveries.c.created_at)).where(
                    deliveries.c.status.in_(("pending", "claimed"))
                )
            ).one()
            ready = tx.execute(
                sa.select(sa.func.count()).where(messages.c.status == "ready")
            ).scalar_one()
            dead = tx.execute(
                sa.select(sa.func.count()).where(deliveries.c.status == "dead")
            ).scalar_one()
        oldest = pending[1]
        if oldest is not None and oldest.tzinfo is None:  # aggregates bypass the type decorator
            oldest = oldest.replace(tzinfo=UTC)
        return Outbox(int(pending[0]), int(ready), int(dead), oldest)

    def dead_letters(self) -> list[tuple[str, str]]:
        """(recipient, last error) of each message the server refused for good."""
        with self._tx() as tx:
            rows = tx.execute(
                sa.select(messages.c.recipient, messages.c.last_error).where(
                    messages.c.status == "dead"
                )
            )
            return [(row.recipient, row.last_error or "") for row in rows]

    # ------------------------------------------------------------------ schedules and meta

    def last_slot(self, watchlist: str) -> datetime | None:
        with self._tx() as tx:
            return tx.execute(
                sa.select(schedule_state.c.last_slot).where(schedule_state.c.watchlist == watchlist)
            ).scalar()

    def set_last_slot(self, watchlist: str, slot: datetime) -> None:
        with self._tx() as tx:
            statement = _insert(tx, schedule_state).values(watchlist=watchlist, last_slot=slot)
            tx.execute(
                statement.on_conflict_do_update(
                    index_elements=["watchlist"], set_={"last_slot": slot}
                )
            )

    def get_meta(self, key: str) -> str | None:
        with self._tx() as tx:
            return tx.execute(sa.select(meta.c.value).where(meta.c.key == key)).scalar()

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as tx:
            statement = _insert(tx, meta).values(key=key, value=value)
            tx.execute(
                statement.on_conflict_do_update(index_elements=["key"], set_={"value": value})
            )


def _item_row(item: Item, now: datetime) -> dict[str, Any]:
    return {
        "key": item.key,
        "feed": item.feed,
        "guid": item.guid,
        "url": item.url,
        "title": item.title,
        "summary": item.summary,
        "language": item.language,
        "published_at": item.published,
        "first_seen_at": now,
    }
