"""Everything monitor keeps between runs, in SQLite (default) or PostgreSQL. Owns SQLAlchemy.

Each public method is one transaction, except `ingest_many` (two, see there). The outbox
invariant lives here: a match is stored with its item, and its pending deliveries follow in
the next transaction or, after a crash between the two, at the next start (`settle`); a
message's bytes are stored in the transaction that claims its deliveries, before anything
is sent.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import uuid
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import alembic.util.exc
import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from monitor.errors import UnavailableError
from monitor.lock import sqlite_file
from monitor.models import DigestEntry, FeedState, FeedStatus, Hit, Item, Match, OutgoingMessage
from monitor.stories import (
    Candidate,
    DedupeSettings,
    assign_stories,
    compact,
    content_hash,
    dedupe_keys,
    fingerprints,
    shingle_hashes,
    shingles,
)

log = logging.getLogger(__name__)


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


_READ_ONLY = "monitor_read_only"  # execution option of Store._read's connections
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


@dataclass(frozen=True, slots=True)
class IngestResult:
    new_items: tuple[Item, ...]
    matches: tuple[tuple[Item, Match], ...]
    updated: tuple[Item, ...] = ()  # known items whose title or summary changed


@dataclass(frozen=True, slots=True)
class Pruned:
    """Rows deleted by one `Store.prune`."""

    items: int
    keys: int
    bands: int
    stories: int
    messages: int
    digest_runs: int


@dataclass(frozen=True, slots=True)
class DigestRun:
    """One digest period handled for one recipient of one watchlist."""

    watchlist: str
    recipient: str
    slot: datetime


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A running monitor process, as registered in the database."""

    worker_id: str
    host: str
    pid: int
    config_hash: str
    heartbeat_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Outbox:
    """Counts for status displays."""

    pending: int
    ready: int
    dead: int
    oldest_pending: datetime | None


def open_store(url: str, dedupe: DedupeSettings | None = None) -> Store:
    """Create the engine, migrate the schema to the newest version, return the Store."""
    shown = sa.engine.make_url(url).render_as_string(hide_password=True)
    try:
        engine = create_engine(url)
    except OSError as error:  # the SQLite file's directory
        raise UnavailableError(f"database {shown}: cannot create its directory: {error}") from None
    try:
        migrate(engine)
    except sa.exc.OperationalError as error:  # down, refused, a file that cannot be made
        engine.dispose()
        reason = str(error.orig or error).strip().splitlines()[0]
        raise UnavailableError(f"database {shown}: cannot open it: {reason}{_hint(url)}") from None
    except BaseException:
        engine.dispose()
        raise
    return Store(engine, dedupe)


def _hint(url: str) -> str:
    """Under systemd, where the service may write: a relative `database:` is taken from the
    config file's directory, /etc/monitor, which it may not."""
    state, file = os.environ.get("STATE_DIRECTORY"), sqlite_file(url)
    if not state or file is None or str(file).startswith(state.split(":")[0]):
        return ""
    return f" (this service may write only in {state}: set database: {state}/monitor.db)"


def create_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        if (file := sqlite_file(url)) is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        sa.event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    engine = sa.create_engine(url, pool_pre_ping=True)
    sa.event.listen(engine, "rollback", _forget_staging)
    return engine


_STAGED = "monitor_staged"  # connection info: the session's staging tables (_copy_insert)


def _forget_staging(connection: Connection) -> None:
    """A rollback may have undone the creation of a staging table: create them again."""
    if not connection.invalidated:  # else its session is gone, and its info with it
        connection.info.pop(_STAGED, None)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The driver's own transaction handling is switched off so BEGIN IMMEDIATE can be issued:
    # a writer then waits for the lock up front instead of failing mid-transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    # Checkpoint every 64 MiB of WAL, not every 4 MiB: LSH band inserts touch pages all over
    # their index, and a page rewritten by many commits is then copied back once, not each
    # time (bench/bench_ingest.py: +15 % items/s at 100,000 items).
    cursor.execute("PRAGMA wal_autocheckpoint=16384")
    cursor.close()


def _sqlite_begin_immediate(connection: Connection) -> None:
    # A reader (Store._read) begins deferred: in WAL mode it reads a snapshot and never
    # waits for the writer's lock.
    reading = connection.get_execution_options().get(_READ_ONLY, False)
    connection.exec_driver_sql("BEGIN" if reading else "BEGIN IMMEDIATE")


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
        try:
            command.upgrade(alembic_config, "heads")
        except alembic.util.exc.CommandError as error:
            if "Can't locate revision" not in str(error):
                raise
            # A newer monitor migrated it (a rolling upgrade, a downgrade): refuse, plainly.
            raise UnavailableError(
                "the database's schema is newer than this monitor knows "
                f"({error}); upgrade monitor to the version that migrated it"
            ) from None


def _insert(connection: Connection, table: sa.Table) -> Any:
    """The dialect's INSERT, which has on_conflict_do_nothing()."""
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _bulk_insert(
    tx: Connection,
    table: sa.Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    returning: Sequence[str] = (),
    *,
    new: bool = False,
) -> list[Any]:
    """INSERT ... ON CONFLICT DO NOTHING of many rows straight through the driver; the rows
    RETURNING `returning` of those inserted (not of those skipped). `new`: the caller knows
    none of the rows is stored (it found none of their keys in this transaction, or they
    belong to rows it just inserted), so that at most another worker inserting them at the
    same moment makes one conflict: PostgreSQL then tries a plain COPY first (_copy_new).

    The ingest hot path: SQLAlchemy's per-value parameter processing cost more than the
    database's own work (bench/bench_ingest.py). Values must be what the driver takes:
    datetimes go through `_stamp`. PostgreSQL gets new rows by one COPY into the table, and
    others by COPY into a staging table, then one INSERT ... SELECT; SQLite gets
    executemany, or multi-row VALUES when rows are returned.
    """
    if not rows:
        return []
    names = ", ".join(columns)
    tail = " ON CONFLICT DO NOTHING"
    if returning:
        tail += " RETURNING " + ", ".join(returning)
    cursor = tx.connection.cursor()
    try:
        if tx.dialect.name == "postgresql":
            if new:
                copied = _copy_new(cursor, table.name, columns, rows, returning)
                if copied is not None:
                    return copied
            staged = tx.connection.info.setdefault(_STAGED, set())
            return _copy_insert(cursor, staged, table, columns, rows, tail, bool(returning))
        one = "(" + ", ".join("?" * len(columns)) + ")"
        if not returning:
            cursor.executemany(f"INSERT INTO {table.name} ({names}) VALUES {one}{tail}", rows)
            return []
        found: list[Any] = []
        per_statement = max(1, 900 // len(columns))  # under SQLite's bound-parameter limit
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            values = ", ".join([one] * len(chunk))
            flat = [value for row in chunk for value in row]
            cursor.execute(f"INSERT INTO {table.name} ({names}) VALUES {values}{tail}", flat)
            found += cursor.fetchall()
        return found
    finally:
        cursor.close()


def _copy_new(
    cursor: Any,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    returning: Sequence[str],
) -> list[Any] | None:
    """`_bulk_insert` of rows new to the caller, on PostgreSQL: one COPY straight into the
    table, under a savepoint. None if a row turned out to exist after all (another worker
    inserted it meanwhile): the savepoint is rolled back and the caller inserts by the
    staging table, which skips such rows. Beside that path this writes each row once, not
    twice, and sorts nothing in the server: PostgreSQL's CPU for bench_workers' in-process
    cold and warm cycle of 600 feeds went from 2.00-2.09 s to 1.82-1.97 s (three pairs; the
    cycle's own time moved within its noise, 0.98x summed over ten pairs). The database
    server is what every worker shares.

    An "id" in `returning` that is not among the columns is taken from the table's id
    sequence beforehand. The rows go in the order of their first column, which must be
    their unique key, as _copy_insert orders them: two workers cannot deadlock."""
    from psycopg import errors

    names = list(columns)
    if any(name not in names and name != "id" for name in returning):
        return None  # only the staging path's RETURNING can give it
    ordered = sorted(rows, key=lambda row: row[0])
    # The savepoint is never released (that would cost a round trip): it ends with the
    # transaction, and a later one of the same name hides it until then.
    if "id" in returning and "id" not in names:
        # One round trip with the savepoint: no parameters, so psycopg sends both
        # statements as one query (the table is ours, the count a number).
        cursor.execute(
            "SAVEPOINT monitor_copy_new; "
            f"SELECT nextval(pg_get_serial_sequence('{table}', 'id')) "
            f"FROM generate_series(1, {len(ordered)})"
        )
        cursor.nextset()  # the SELECT's result
        ids = [row[0] for row in cursor.fetchall()]
        ordered = [(item_id, *row) for item_id, row in zip(ids, ordered, strict=True)]
        names.insert(0, "id")
    else:
        cursor.execute("SAVEPOINT monitor_copy_new")
    try:
        _copy_rows(cursor, table, names, ordered)
    except errors.UniqueViolation:
        cursor.execute("ROLLBACK TO SAVEPOINT monitor_copy_new")
        return None
    if not returning:
        return []
    at = [names.index(name) for name in returning]
    return [tuple(row[n] for n in at) for row in ordered]


def _copy_rows(
    cursor: Any, target: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """COPY rows into `target` (PostgreSQL): formatted in the driver's C code."""
    with cursor.copy(f"COPY {target} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def _copy_insert(
    cursor: Any,
    staged: set[str],
    table: sa.Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    tail: str,
    returns: bool,
) -> list[Any]:
    """PostgreSQL's half of `_bulk_insert`. COPY formats rows in the driver's C code, where
    unnest() arrays were dumped value by value in Python (the daemon's largest single cost
    on PostgreSQL), and it costs the server less too. The staging table is this session's,
    emptied at commit; its rows are taken out as they are inserted, so several inserts into
    one table share it in a transaction. Rows go in sorted, as every worker inserts them,
    so that two cannot deadlock on a unique index. `staged`: the staging tables this
    session has, created at most once per session (each creation was a round trip, seven
    per writer round); a rollback may undo a creation, so it empties the set
    (_forget_staging)."""
    names = ", ".join(columns)
    stage = f"monitor_stage_{table.name}_{zlib.crc32(names.encode()):08x}"  # one per column set
    if stage not in staged:
        cursor.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "
            f"SELECT {names} FROM {table.name} WITH NO DATA"
        )
        staged.add(stage)
    _copy_rows(cursor, stage, columns, rows)
    # Texts in code point order (COLLATE "C"), as Python sorts them for _copy_new.
    order = ", ".join(
        f'{column} COLLATE "C"' if isinstance(table.c[column].type, sa.String) else column
        for column in columns
    )
    cursor.execute(
        f"WITH staged AS (DELETE FROM {stage} RETURNING {names}) "
        f"INSERT INTO {table.name} ({names}) SELECT {names} FROM staged ORDER BY {order}{tail}"
    )
    return list(cursor.fetchall()) if returns else []


def _stamp(tx: Connection, moment: datetime) -> Any:
    """An aware datetime as `_bulk_insert` passes it: what UTCDateTime would have stored."""
    naive = moment.astimezone(UTC).replace(tzinfo=None)
    # SQLAlchemy's SQLite DATETIME text format, so reads parse it like any other row.
    return naive.isoformat(" ", "microseconds") if tx.dialect.name == "sqlite" else naive


def _aware(moment: datetime) -> datetime:
    """Aggregates (min/max) bypass the column type: make their datetimes UTC-aware."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


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
        host=row.host or host_of(row.url),
        last_polled_at=row.last_polled_at,
        last_new_item_at=row.last_new_item_at,
        last_error_at=row.last_error_at,
        redirect_url=row.redirect_url,
        redirect_count=row.redirect_count,
        ignore_validators=bool(row.ignore_validators),
        unchanged_streak=row.unchanged_streak,
        item_gap=row.item_gap,
        interval=row.interval,
        poll_reason=row.poll_reason,
        ttl=row.ttl,
    )


@dataclass(frozen=True, slots=True)
class Claim:
    """Feeds leased to one worker, and when each of their hosts was last asked."""

    feeds: list[FeedState]
    last_requests: dict[str, datetime | None]


def _release_hosts(
    tx: Connection, releases: Sequence[tuple[str, str, datetime, datetime | None]]
) -> None:
    """(host, owner, last request, blocked until). A host released twice in one call keeps
    the later request and the later block. On SQLite in host order; on PostgreSQL one
    statement locks them in the order its plan reads them. Claims never wait for a host
    (SKIP LOCKED) and a worker releases only hosts it holds (or a free host, repeating a
    release), so two releases of the same hosts at once are rare; should they deadlock,
    PostgreSQL aborts one, and the poller's writer retries its jobs one by one."""
    merged: dict[tuple[str, str], tuple[datetime, datetime | None]] = {}
    for host, owner, last, blocked in releases:
        if (host, owner) in merged:
            before, block = merged[host, owner]
            last = max(last, before)
            blocked = max(blocked, block) if blocked and block else blocked or block
        merged[host, owner] = (last, blocked)
    if not merged:
        return
    ordered = sorted(merged.items())
    if tx.dialect.name == "postgresql":  # one UPDATE ... FROM unnest(arrays)
        as_naive = UTCDateTime().process_bind_param
        tx.execute(
            _release_statement("postgresql"),
            {
                "released_hosts": _listed("postgresql", [host for (host, _), _ in ordered]),
                "owners": _listed("postgresql", [owner for (_, owner), _ in ordered]),
                "lasts": [as_naive(last, tx.dialect) for _, (last, _) in ordered],
                "blocks": [as_naive(block, tx.dialect) for _, (_, block) in ordered],
            },
        )
        return
    rows = [
        {"released_host": host, "owner": owner, "last": last, "blocked": blocked}
        for (host, owner), (last, blocked) in ordered
    ]
    tx.execute(_release_statement(tx.dialect.name), rows)


@functools.cache
def _release_statement(dialect: str) -> Any:
    """_release_hosts' UPDATE, built once: it runs with most claims and writer rounds. On
    PostgreSQL one statement for all the hosts (executemany ran one UPDATE per host: as
    long as the claim it came with); on SQLite one per host."""
    if dialect == "postgresql":
        released = (
            sa.func.unnest(
                sa.cast(sa.bindparam("released_hosts", type_=sa.Text), postgresql.ARRAY(sa.Text)),
                sa.cast(sa.bindparam("owners", type_=sa.Text), postgresql.ARRAY(sa.Text)),
                sa.bindparam("lasts", type_=postgresql.ARRAY(sa.DateTime)),
                sa.bindparam("blocks", type_=postgresql.ARRAY(sa.DateTime)),
            )
            .table_valued("host", "owner", "last", "blocked")
            .render_derived(name="released")
        )
        host, owner, last, blocked = (
            released.c.host,
            released.c.owner,
            released.c.last,
            released.c.blocked,
        )
    else:
        host = sa.bindparam("released_host")
        owner = sa.bindparam("owner")
        last = sa.bindparam("last", type_=hosts.c.last_request_at.type)
        blocked = sa.bindparam("blocked", type_=hosts.c.blocked_until.type)
    # A feed of the host claimed meanwhile keeps the host leased, to be released with that
    # feed: the worker's count of the host's feeds in flight can reach 0 just before it
    # counts a claim made in the same writer round.
    busy = (
        sa.exists()
        .where(feeds.c.host == hosts.c.host)
        .where(feeds.c.lease_owner == owner)
        .where(feeds.c.lease_expires_at > last)
    )
    return (
        hosts.update()
        .where(hosts.c.host == host)
        .where(sa.or_(hosts.c.lease_owner == owner, hosts.c.lease_owner.is_(None)))
        .values(
            lease_owner=sa.case((busy, hosts.c.lease_owner), else_=None),
            lease_expires_at=sa.case((busy, hosts.c.lease_expires_at), else_=None),
            # Never back: a release repeated after another worker asked the host (a claim
            # that failed after its releases committed, on PostgreSQL) keeps the newer time.
            last_request_at=sa.case(
                (sa.or_(hosts.c.last_request_at.is_(None), hosts.c.last_request_at < last), last),
                else_=hosts.c.last_request_at,
            ),
            # A host-wide Retry-After only ever moves later: it ends by itself.
            blocked_until=sa.case(
                (sa.or_(blocked.is_(None), hosts.c.blocked_until > blocked), hosts.c.blocked_until),
                else_=blocked,
            ),
        )
    )


def _lock_feeds(tx: Connection, names: Sequence[str]) -> None:
    """On PostgreSQL, lock these feed rows in name order before updating them, as every
    writer of several feed rows does: no deadlock between workers."""
    if names and tx.dialect.name == "postgresql":
        tx.execute(
            sa.select(feeds.c.id)
            .where(_among(tx, feeds.c.name, sorted(names), sa.Text))
            .order_by(feeds.c.name)
            .with_for_update()
        )


def _ensure_hosts(tx: Connection, names: Iterable[str]) -> None:
    rows = [{"host": name} for name in sorted(set(names))]
    if rows:
        tx.execute(_insert(tx, hosts).on_conflict_do_nothing(index_elements=["host"]), rows)


def host_of(url: str) -> str:
    """The host a feed URL points at: the unit of politeness."""
    return (urlsplit(url).hostname or "").lower()


class Store:
    """The database, behind methods named for what the pipeline needs."""

    def __init__(self, engine: Engine, dedupe: DedupeSettings | None = None) -> None:
        self.engine = engine
        self.dedupe = dedupe or DedupeSettings()
        # item id -> (first seen, candidate) of clustered items: a band match then costs no
        # re-read and re-shingling of the text (see _story_candidates).
        self._candidates: dict[int, tuple[datetime, Candidate]] = {}
        # Held to change _candidates: the poller's writer, the daemon's settling (digest
        # ticks) and pruning each run in a thread of their own.
        self._candidates_lock = threading.Lock()
        # Look for matches a crash left unqueued (see ingest_many) once, with the first items.
        self._sweep = True
        self._grouped: bool | None = None  # the dedupe key scheme, once a first ingest committed

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as connection:
            yield connection

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A transaction that only reads: on SQLite it neither takes nor waits for the
        write lock, so status displays and digest composing go on beside a long ingest."""
        options = {_READ_ONLY: True}
        with self.engine.connect() as connection, connection.execution_options(**options).begin():
            yield connection

    def ping(self) -> bool:
        with self.engine.connect() as connection:
            return connection.execute(sa.text("SELECT 1")).scalar() == 1

    # ------------------------------------------------------------------ feeds

    def sync_feeds(
        self, configured: Mapping[str, str], now: datetime, polled: Collection[str] | None = None
    ) -> None:
        """Make the feeds table hold the configured feeds (name -> URL); new ones are due now.
        Claims take only the `polled` ones (default: all configured): a feed removed from the
        configuration, or switched off in it, keeps its history but is no longer polled."""
        active = set(configured if polled is None else polled)
        with self._tx() as tx:
            known = {row.name: row for row in tx.execute(sa.select(feeds))}
            added = [
                {
                    "name": name,
                    "url": url,
                    "config_url": url,
                    "host": host_of(url),
                    "status": "new",
                    "next_poll_at": now,
                }
                for name, url in configured.items()
                if name not in known
            ]
            if added:  # workers starting together add the same feeds: the first one wins
                tx.execute(
                    _insert(tx, feeds).on_conflict_do_nothing(index_elements=["name"]), added
                )
            for name, url in sorted(configured.items()):  # rows locked in name order
                row = known.get(name)
                if row is not None and row.config_url != url:  # changed URL: start over
                    tx.execute(
                        feeds.update()
                        .where(feeds.c.name == name)
                        .values(
                            url=url,
                            config_url=url,
                            host=host_of(url),
                            status="new",
                            redirect_url=None,
                            redirect_count=0,
                            ignore_validators=False,
                            etag=None,
                            last_modified=None,
                            body_hash=None,
                            next_poll_at=now,
                        )
                    )
            _ensure_hosts(tx, [host_of(url) for url in configured.values()])
            switched = [row.name for row in known.values() if row.active != (row.name in active)]
            switched += [row["name"] for row in added if row["name"] not in active]
            _lock_feeds(tx, switched)
            for value in (True, False):
                names = sorted(name for name in switched if (name in active) is value)
                if names:
                    tx.execute(
                        feeds.update()
                        .where(_among(tx, feeds.c.name, names, sa.Text))
                        .values(active=value)
                    )
                    if known.keys() & set(names):
                        log.info(
                            "feeds %s: %s",
                            "polled again" if value else "no longer polled",
                            ", ".join(name for name in names if name in known),
                        )

    def feed_states(self, statuses: Iterable[FeedStatus] | None = None) -> list[FeedState]:
        """Every feed's state, by name; only those in `statuses` when given (the digest's
        health section asks for the unwell few on every compose)."""
        query = sa.select(feeds).order_by(feeds.c.name)
        if statuses is not None:
            query = query.where(feeds.c.status.in_([status.value for status in statuses]))
        with self._read() as tx:
            return [_feed_from(row) for row in tx.execute(query)]

    def feed_statuses(self) -> dict[str, FeedStatus]:
        """feed name -> status: what the status line and gauges count, every health tick,
        without reading (and converting) every feed's whole row."""
        with self._read() as tx:
            rows = tx.execute(sa.select(feeds.c.name, feeds.c.status))
            return {name: FeedStatus(status) for name, status in rows}

    def feed_state(self, name: str) -> FeedState | None:
        with self._read() as tx:
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
        with self._read() as tx:
            return [_feed_from(row) for row in tx.execute(query)]

    def update_feed(self, name: str, **values: Any) -> None:
        with self._tx() as tx:
            tx.execute(feeds.update().where(feeds.c.name == name).values(**values))

    # ------------------------------------------------------------------ feed and host leases

    def claim_feeds(
        self,
        owner: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        names: Iterable[str] | None = None,
        force: bool = False,
        releases: Sequence[tuple[str, str, datetime, datetime | None]] = (),
        *,
        cycle: str | None = None,
    ) -> Claim:
        """Lease up to `limit` due feeds, and their hosts, to `owner`: one poller per feed.
        With them, when each of their hosts was last asked (by any worker), for the gap.

        Without `names`, the feeds the configuration polls (sync_feeds), oldest due first;
        with them, just those (and with `force`, whether due or not, even disabled). A claim
        marks its feeds with `cycle`: later claims of the same cycle skip them, so a cycle
        polls each feed once (no cycle given: a cycle of its own). `releases` (as for
        `release_host`) are given back first: the owner's idle hosts, which this claim may
        lease again (on SQLite in the claim's transaction, on PostgreSQL just before it; a
        release repeated later is harmless).

        On PostgreSQL feed and host rows are taken FOR UPDATE SKIP LOCKED, so workers claiming
        at the same moment get disjoint sets; on SQLite BEGIN IMMEDIATE serializes claims.
        A host leased by another worker is skipped whole, so per-host politeness holds across
        workers. The leases of a worker that dies expire at `lease_until`.
        """
        dialect = self.engine.dialect.name
        named, with_disabled = names is not None, bool(force and names is not None)
        values: dict[str, Any] = {
            "now": now,
            "owner": owner,
            "limit": limit,
            "cycle": cycle or uuid.uuid4().hex,
            "lease_until": lease_until,
        }
        if names is not None:
            values["names"] = _listed(dialect, sorted(names))
        if dialect == "postgresql":
            # Pick, lease the feeds, lease their hosts and read the hosts' last requests in
            # one statement, each statement in its own transaction: a claim was six round
            # trips to the server. One statement is atomic by itself, and releasing the idle
            # hosts a moment before the claim needs no shared transaction.
            with self.engine.connect() as connection:
                autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
                _release_hosts(autocommit, releases)
                statement = _claim_statement(named, force, with_disabled)
                picked = autocommit.execute(statement, values).all()
            last_requests = {row.host: row.host_last_request_at for row in picked}
            return Claim([_feed_from(row) for row in picked], last_requests)
        with self._tx() as tx:
            _release_hosts(tx, releases)
            rows = tx.execute(_claim_query(dialect, named, force, with_disabled), values).all()
            last_requests = {}
            if rows:
                lease = {"lease_owner": owner, "lease_expires_at": lease_until}
                ids = [row.id for row in rows]
                tx.execute(
                    feeds.update()
                    .where(_among(tx, feeds.c.id, ids))
                    .values(**lease, poll_cycle=values["cycle"])
                )
                taken = sorted({row.host for row in rows})
                where = _among(tx, hosts.c.host, taken, sa.Text)
                returning = (hosts.c.host, hosts.c.last_request_at)
                leased = tx.execute(
                    hosts.update().where(where).values(**lease).returning(*returning)
                )
                last_requests = {row.host: row.last_request_at for row in leased}
        return Claim([_feed_from(row) for row in rows], last_requests)

    def renew_leases(
        self, owner: str, names: Sequence[str], held: Sequence[str], until: datetime
    ) -> None:
        """Extend `owner`'s leases of these feeds and hosts to `until`: its polls of them
        are still running. A lease another worker holds by now is left alone."""
        with self._tx() as tx:
            _lock_feeds(tx, names)  # the poller records outcomes of some of them meanwhile
            for key, keys in ((feeds.c.name, names), (hosts.c.host, held)):
                if keys:
                    table = key.table
                    tx.execute(
                        table.update()
                        .where(table.c.lease_owner == owner)
                        .where(_among(tx, key, sorted(keys), sa.Text))
                        .values(lease_expires_at=until)
                    )

    def release_feed_leases(self) -> None:
        """Drop every feed and host lease: on SQLite only one process runs, so they are stale."""
        with self._tx() as tx:
            tx.execute(feeds.update().values(lease_owner=None, lease_expires_at=None))
            tx.execute(hosts.update().values(lease_owner=None, lease_expires_at=None))

    def finish_poll(self, name: str, values: Mapping[str, Any]) -> None:
        """Record one poll's outcome and release the feed's lease, in one transaction."""
        self.finish_polls([(name, values)])

    def finish_polls(
        self,
        outcomes: Sequence[tuple[str, Mapping[str, Any]]],
        releases: Sequence[tuple[str, str, datetime, datetime | None]] = (),
    ) -> None:
        """`finish_poll` for many feeds and `release_host` for many (host, owner, last
        request, blocked until), in one transaction: one executemany per set of columns
        changed (SQLAlchemy built one statement per feed, the writer's main cost)."""
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for name, values in outcomes:
            row = {f"new_{column}": value for column, value in values.items()}
            groups.setdefault(tuple(sorted(values)), []).append({"feed_name": name, **row})
        with self._tx() as tx:
            _lock_feeds(tx, [name for name, _ in outcomes])
            for columns, rows in groups.items():
                changes = {c: sa.bindparam(f"new_{c}", type_=feeds.c[c].type) for c in columns}
                tx.execute(
                    feeds.update()
                    .where(feeds.c.name == sa.bindparam("feed_name"))
                    .values(**changes, lease_owner=None, lease_expires_at=None),
                    rows,
                )
            urls = [str(values["url"]) for _, values in outcomes if "url" in values]
            if urls:
                _ensure_hosts(tx, {host_of(url) for url in urls})
            _release_hosts(tx, releases)

    def release_host(
        self, host: str, owner: str, last_request_at: datetime, blocked_until: datetime | None
    ) -> None:
        """Give a host back after this worker's polls of it; keep its Retry-After, if any."""
        self.finish_polls((), [(host, owner, last_request_at, blocked_until)])

    def give_back(
        self, owner: str, names: Sequence[str], hosts: Sequence[str], now: datetime
    ) -> None:
        """Release feeds `owner` leased but will not poll (its cycle was cancelled), with
        no outcome recorded, and then their hosts. A feed leased by another worker since is
        left alone."""
        with self._tx() as tx:
            if names:
                _lock_feeds(tx, names)
                tx.execute(
                    feeds.update()
                    .where(_among(tx, feeds.c.name, sorted(names), sa.Text))
                    .where(feeds.c.lease_owner == owner)
                    .values(lease_owner=None, lease_expires_at=None)
                )
            _release_hosts(tx, [(host, owner, now, None) for host in hosts])

    # ------------------------------------------------------------------ items and matches

    def ingest(
        self,
        batch: Sequence[Item],
        match: Callable[[Item], Sequence[Match]],
        recipients: Mapping[str, Sequence[str]],
        now: datetime,
    ) -> IngestResult:
        """Store new items; match only those; queue a delivery per match and recipient.

        A known item (same URL identity, or same feed + GUID, even long after it was pruned)
        only records its outlet. A new item that joins a story whose match was already
        queued for a watchlist and recipient queues nothing more for them. See ingest_many
        for the transactions.
        """
        if not batch:
            return IngestResult((), ())
        return self.ingest_many([batch], match, recipients, now)[0]

    def ingest_many(
        self,
        batches: Sequence[Sequence[Item]],
        match: Callable[[Item], Sequence[Match]],
        recipients: Mapping[str, Sequence[str]],
        now: datetime,
    ) -> list[IngestResult]:
        """`ingest` each batch (one feed's items), in two transactions.

        The first stores every batch's items with their keys, outlets and matches, and may
        run beside other workers' (several feeds share one commit: it rewrites every index
        page touched). The second, one worker at a time (a story is decided once), puts the
        matched items into stories and queues their deliveries. A crash between the two
        leaves matches without deliveries: `_settle` finds them at the next start.
        """
        with self._tx() as tx:
            grouped = self._grouped if self._grouped is not None else _grouped_keys(tx)
            results, unsettled, rewritten = self._ingest(
                tx, batches, match, recipients, now, grouped
            )
        self._grouped = grouped  # stored: with the first keys, the scheme's row committed
        # Items whose text changed are shingled again when next needed; dropped once
        # committed, or a settle in another thread could cache the old text meanwhile.
        self._forget_candidates(rewritten)
        try:
            self._settle(unsettled, recipients, now)
        except Exception:  # the items are stored: their deliveries follow with the next batch
            self._sweep = True
            log.exception("queueing deliveries failed; retried with the next items stored")
        return results

    def _ingest(
        self,
        tx: Connection,
        batches: Sequence[Sequence[Item]],
        match: Callable[[Item], Sequence[Match]],
        recipients: Mapping[str, Sequence[str]],
        now: datetime,
        grouped: bool,
    ) -> tuple[list[IngestResult], list[_Recorded], list[int]]:
        """Store every batch's new items, in a few statements for all of them (on
        PostgreSQL each statement is a round trip). An item a batch shares with an earlier
        batch of the same call is handled as that batch's item seen again. `grouped`: the
        dedupe key scheme (_grouped_keys)."""
        uniques = [_first_of_each(batch, grouped) for batch in batches]
        known = _known_keys(tx, {h for u in uniques for _, hashes in u for h in hashes}, now)
        claimed: dict[int, Item] = {}  # key hash -> the new item of this call that has it
        fresh: list[list[tuple[Item, tuple[int, ...]]]] = []
        seen: list[tuple[Item, tuple[int, ...]]] = []
        repeats: list[tuple[Item, tuple[int, ...], Item]] = []  # (item, hashes, first)
        for unique in uniques:
            fresh.append([])
            for item, hashes in unique:
                first = next((claimed[h] for h in hashes if h in claimed), None)
                if not known.keys().isdisjoint(hashes):
                    seen.append((item, hashes))
                    # Its new keys (a changed link) name the stored item from now on, also
                    # for the batches after this one.
                    row = _stored(known, hashes)
                    for h in hashes:
                        known.setdefault(h, row._replace(hash=h, stale=False))
                elif first is not None:
                    repeats.append((item, hashes, first))
                else:
                    fresh[-1].append((item, hashes))
                    claimed.update(dict.fromkeys(hashes, item))
        # A known item in another feed: watchlists limited to that feed (or its language)
        # may match it now. Those in a story are queued below, to recipients its story has
        # not reached, under the story lock as _settle queues (two workers meeting one story
        # at once must not each find no one told yet); taken before any insert, as there.
        elsewhere = _matched_elsewhere(tx, seen, known, match)
        if elsewhere:
            _lock_stories(tx)
        updated = _seen_again(tx, seen, known, now)
        ids = _insert_items(tx, [pair for pairs in fresh for pair in pairs], now)
        _record_repeats(tx, repeats, ids, now)
        new_items = [tuple(item for item, _ in pairs if item.key in ids) for pairs in fresh]
        found = [[(item, m) for item in items for m in match(item)] for items in new_items]
        # Stories group alerts: only items that matched a watchlist are clustered (by
        # _settle). A near-copy of a matched story carries the same terms, so it matches too.
        rows = [(ids[item.key], item, m) for pairs in found for item, m in pairs]
        recorded = _record_matches(tx, rows, now)
        # The late matches: those not in a story yet are settled as new matches are.
        batch_of = {id(item): n for n, unique in enumerate(uniques) for item, _ in unique}
        if elsewhere:
            late = _record_matches(tx, [row for row, _ in elsewhere], now, new=False)
            storied = _stories_of(tx, {r.item_id for r in late})
            recorded += [r for r in late if r.item_id not in storied]
            into_stories = [r for r in late if r.item_id in storied]
            self._queue(tx, into_stories, recipients, now, storied, told_before=True)
            kept = {(r.item_id, r.watchlist) for r in late}
            for (item_id, item, m), copy in elsewhere:
                if (item_id, m.watchlist) in kept:
                    found[batch_of[id(copy)]].append((item, m))
        changed: dict[int, list[tuple[int, Item]]] = {}  # batch index -> (id, changed item)
        for item_id, item, original in updated:
            changed.setdefault(batch_of[id(original)], []).append((item_id, item))
        if changed and self.dedupe.realert_on_update:
            # Every feed's revisions in one insert each: each is a subtransaction on
            # PostgreSQL (_copy_new), and past 64 in one transaction every session's
            # snapshots slow down.
            again: list[tuple[int, int, Item, Match]] = []  # (batch index, id, item, match)
            for n, revised_items in changed.items():
                for rid, item in _insert_revisions(tx, revised_items, now):
                    again += [(n, rid, item, m) for m in match(item)]
            rows = [(rid, item, m) for _, rid, item, m in again]
            self._queue(tx, _record_matches(tx, rows, now), recipients, now)
            for n, _, item, m in again:
                found[n].append((item, m))
        results = [
            IngestResult(
                new_items[n], tuple(found[n]), tuple(item for _, item in changed.get(n, ()))
            )
            for n in range(len(batches))
        ]
        return results, recorded, [item_id for item_id, _, _ in updated]

    def settle(
        self,
        recipients: Mapping[str, Sequence[str]],
        now: datetime,
        since: datetime | None = None,
    ) -> None:
        """Queue the deliveries of matches that a crash between ingest_many's two
        transactions left without any: every such match (at start), or those stored since
        `since` (the daemon looks every digest tick: another worker may have died)."""
        if since is None:  # every one: the sweep under the story lock finds them
            self._sweep = True
            self._settle([], recipients, now)
            return
        with self._read() as tx:
            found = _unsettled_matches(tx, since)
        if found or self._sweep:
            self._settle(found, recipients, now)

    def _settle(
        self, unsettled: Sequence[_Recorded], recipients: Mapping[str, Sequence[str]], now: datetime
    ) -> None:
        """Cluster matched items not yet in a story and queue their deliveries."""
        if not unsettled and not self._sweep:
            return
        with self._tx() as tx:
            _lock_stories(tx)
            if self._sweep:  # left by a crash or a failed _settle
                unsettled = [*unsettled, *_unsettled_matches(tx)]
            # Another worker's sweep may have settled some meanwhile.
            done = _stories_of(tx, {r.item_id for r in unsettled})
            unsettled = [r for r in unsettled if r.item_id not in done]
            matched = {r.item_id: r.item for r in unsettled}
            in_story, clustered = self._cluster(tx, list(matched.items()), now)
            self._queue(tx, unsettled, recipients, now, in_story)
        self._sweep = False
        self._remember(clustered, now)  # only once committed: SQLite may reuse a rolled-back id

    def _cluster(
        self, tx: Connection, new: Sequence[tuple[int, Item]], now: datetime
    ) -> tuple[dict[int, int], list[Candidate]]:
        """Put each new item into a story (stored with its band hashes): item id -> story id,
        and the new items as candidates for later batches."""
        if not new:
            return {}, []
        prints = fingerprints([(item.title, item.summary) for _, item in new], self.dedupe)
        bands = {band for fingerprint in prints for band in fingerprint.bands}
        since = now - self.dedupe.window
        known = _story_candidates(tx, bands, since, self._candidates, self._candidates_lock)
        assigned = assign_stories(
            [(item_id, item.feed, fp) for (item_id, item), fp in zip(new, prints, strict=True)],
            known,
            self.dedupe.similarity,
        )
        pairs = [(item_id, a) for (item_id, _), a in zip(new, assigned, strict=True)]
        at = _stamp(tx, now)
        created = [(i, at) for i, a in pairs if a.is_new_story(i)]
        # Under the story lock, of items in no story yet: new rows.
        _bulk_insert(tx, stories, ("id", "created_at"), created, new=True)
        _bulk_insert(
            tx,
            story_members,
            ("item_id", "story_id", "similarity"),
            [(i, a.story_id, a.similarity) for i, a in pairs],
            new=True,
        )
        band_rows = [
            (band, item_id)
            for (item_id, _), fp in zip(new, prints, strict=True)
            for band in fp.bands
        ]
        if band_rows:
            _insert_bands(tx, band_rows)
        clustered = [
            Candidate(item_id, a.story_id, compact(fp.hashes), item.feed)
            for (item_id, item), a, fp in zip(new, assigned, prints, strict=True)
            if fp.bands
        ]
        return {item_id: a.story_id for item_id, a in pairs}, clustered

    def _forget_candidates(self, item_ids: Iterable[int]) -> None:
        """Drop these items from the candidate cache: shingled again when next needed."""
        with self._candidates_lock:
            for item_id in item_ids:
                self._candidates.pop(item_id, None)

    def _remember(self, clustered: Sequence[Candidate], now: datetime) -> None:
        with self._candidates_lock:
            cache = self._candidates
            if len(cache) + len(clustered) > _CANDIDATE_CACHE_SIZE:
                since = now - self.dedupe.window
                for item_id in [k for k, v in cache.items() if v[0] < since]:
                    del cache[item_id]
                if len(cache) + len(clustered) > _CANDIDATE_CACHE_SIZE:
                    cache.clear()
            for candidate in clustered:
                cache[candidate.item_id] = (now, candidate)

    def _queue(
        self,
        tx: Connection,
        recorded: Sequence[_Recorded],
        recipients: Mapping[str, Sequence[str]],
        now: datetime,
        in_story: Mapping[int, int] | None = None,
        *,
        told_before: bool = False,
    ) -> None:
        """Queue each recorded match for each recipient not yet queued its story (in_story:
        item id -> story id, for items that may have joined an earlier story; told_before:
        every story may have reached recipients already, even one the item began)."""
        created = _stamp(tx, now)
        told: dict[tuple[int, str], set[str]] = {}  # (story, watchlist) -> queued in this call
        rows = []
        for found in recorded:
            story = (in_story or {}).get(found.item_id, found.item_id)
            queued = told.get((story, found.watchlist))
            if queued is None:
                queued = told[story, found.watchlist] = set()
                if told_before or story != found.item_id:  # who was told already?
                    queued.update(_already_queued(tx, story, found.watchlist))
            wanted = [r for r in recipients.get(found.watchlist, ()) if r not in queued]
            queued.update(wanted)
            rows += [(found.match_id, found.watchlist, r, "pending", created) for r in wanted]
        columns = ("match_id", "watchlist", "recipient", "status", "created_at")
        # New rows: a match is queued once, with its item's story (_settle, under the story
        # lock, skips items already in one) or as a revision just stored.
        _bulk_insert(tx, deliveries, columns, rows, new=True)

    def prune(
        self, items_before: datetime, keys_before: datetime, bands_before: datetime
    ) -> Pruned:
        """Delete items first seen before items_before (unless a delivery of theirs is still
        pending), with their matches, deliveries, outlets and memberships; keep their keys as
        tombstones until keys_before; drop LSH bands of items older than bands_before (the
        clustering window), sent and dead messages that no longer have deliveries (a dead
        letter of a pruned item would otherwise be kept, and `retry-dead` send a digest
        months old), digest periods handled before items_before but the latest of each
        recipient of each watchlist (the one the schedule needs), and the rows of workers
        silent since before items_before (each crash left one)."""
        busy = (
            sa.select(matches.c.item_id)
            .join(deliveries, deliveries.c.match_id == matches.c.id)
            .where(deliveries.c.status.in_(("pending", "claimed")))
        )
        old = (
            sa.select(items.c.id)
            .where(items.c.first_seen_at < items_before)
            .where(items.c.id.not_in(busy))
        )
        recent = sa.select(items.c.id).where(items.c.first_seen_at >= bands_before)
        with self._candidates_lock:  # SQLite may give a deleted item's id to a new one
            self._candidates.clear()
        with self._tx() as tx:
            tx.execute(item_keys.update().where(item_keys.c.item_id.in_(old)).values(item_id=None))
            bands = tx.execute(story_bands.delete().where(story_bands.c.item_id.not_in(recent)))
            gone = tx.execute(items.delete().where(items.c.id.in_(old)))
            members = sa.select(story_members.c.story_id)
            empty = tx.execute(stories.delete().where(stories.c.id.not_in(members)))
            bound = sa.select(deliveries.c.message_id).where(deliveries.c.message_id.is_not(None))
            sent = tx.execute(
                messages.delete()
                .where(messages.c.status.in_(("sent", "dead")))
                .where(messages.c.created_at < items_before)
                .where(messages.c.message_id.not_in(bound))
            )
            keys = tx.execute(item_keys.delete().where(item_keys.c.last_seen_at < keys_before))
            pair = (digest_runs.c.watchlist, digest_runs.c.recipient)
            latest = sa.select(*pair, sa.func.max(digest_runs.c.slot)).group_by(*pair)
            runs = tx.execute(
                digest_runs.delete()
                .where(digest_runs.c.slot < items_before)
                .where(sa.tuple_(*pair, digest_runs.c.slot).not_in(latest))
            )
            tx.execute(workers.delete().where(workers.c.heartbeat_at < items_before))
        return Pruned(
            gone.rowcount,
            keys.rowcount,
            bands.rowcount,
            empty.rowcount,
            sent.rowcount,
            runs.rowcount,
        )

    def item_count(self) -> int:
        with self._read() as tx:
            return int(tx.execute(sa.select(sa.func.count()).select_from(items)).scalar_one())

    def recent_items(self, since: datetime) -> list[tuple[int, Item]]:
        """Items first seen at or after `since`, oldest first, with their ids (read-only)."""
        query = (
            sa.select(items)
            .where(items.c.first_seen_at >= since)
            .order_by(items.c.first_seen_at, items.c.id)
        )
        with self._read() as tx:
            return [(row.id, _item_from(row)) for row in tx.execute(query)]

    def stored_item(self, id_or_key: str) -> tuple[int, Item] | None:
        """One stored item by its numeric id or its key (read-only)."""
        where = items.c.key == id_or_key
        if id_or_key.isdigit():
            where = sa.or_(items.c.id == int(id_or_key), where)
        with self._read() as tx:
            row = tx.execute(sa.select(items).where(where).order_by(items.c.id)).first()
        return (row.id, _item_from(row)) if row else None

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
                items.c.id.label("item_pk"),
                story_members.c.story_id,
                story_members.c.revision_of,
            )
            .join(matches, deliveries.c.match_id == matches.c.id)
            .join(items, matches.c.item_id == items.c.id)
            .outerjoin(story_members, story_members.c.item_id == items.c.id)
            .where(deliveries.c.status == "pending")
            .order_by(items.c.published_at.desc(), deliveries.c.id)
        )
        if watchlists is not None:
            query = query.where(deliveries.c.watchlist.in_(list(watchlists)))
        with self._read() as tx:
            rows = tx.execute(query).all()
            outlets = _story_outlets(tx, {r.story_id for r in rows if r.story_id is not None})
        return _one_entry_per_story(rows, outlets)

    def claim(
        self,
        message: OutgoingMessage | None,
        delivery_ids: Sequence[int],
        now: datetime,
        runs: Sequence[DigestRun] = (),
    ) -> bool:
        """Record the digest runs, store the rendered message and bind its deliveries, at once.

        Returns False, storing nothing, when another process already handled one of the runs
        or claimed one of the deliveries: exactly one worker composes each digest period.
        """
        with self._tx() as tx:
            message_id = message.message_id if message else None
            if runs:
                recorded = tx.execute(
                    _insert(tx, digest_runs)
                    .values(
                        [
                            {
                                "watchlist": r.watchlist,
                                "recipient": r.recipient,
                                "slot": r.slot,
                                "message_id": message_id,
                                "created_at": now,
                            }
                            for r in runs
                        ]
                    )
                    .on_conflict_do_nothing()
                    .returning(digest_runs.c.watchlist)
                ).all()
                if len(recorded) != len(runs):
                    tx.rollback()
                    return False
            if message is None:
                return True
            stored = tx.execute(
                _insert(tx, messages)
                .values(
                    message_id=message.message_id,
                    recipient=message.recipient,
                    mime=message.mime,
                    kind=message.kind,
                    status="ready",
                    next_attempt_at=now,
                    created_at=now,
                )
                .on_conflict_do_nothing(index_elements=["message_id"])
            ).rowcount
            if not stored:  # another worker composed the very same message first
                tx.rollback()
                return False
            if delivery_ids:
                # One bound array, not a parameter per id: a digest binds hundreds, and
                # each count made a statement of its own to compile and plan (bench: a
                # fifth of the claim's time on PostgreSQL).
                claimed = tx.execute(
                    deliveries.update()
                    .where(_among(tx, deliveries.c.id, sorted(delivery_ids)))
                    .where(deliveries.c.status == "pending")
                    .values(status="claimed", message_id=message.message_id)
                ).rowcount
                if claimed != len(delivery_ids):
                    tx.rollback()
                    return False
        return True

    def last_runs(self) -> dict[tuple[str, str], datetime]:
        """The latest handled slot per (watchlist, recipient)."""
        query = sa.select(
            digest_runs.c.watchlist, digest_runs.c.recipient, sa.func.max(digest_runs.c.slot)
        ).group_by(digest_runs.c.watchlist, digest_runs.c.recipient)
        with self._read() as tx:
            return {(w, r): _aware(slot) for w, r, slot in tx.execute(query)}

    def pending_since(self) -> dict[tuple[str, str], datetime]:
        """When the oldest pending delivery of each (watchlist, recipient) was queued."""
        query = (
            sa.select(
                deliveries.c.watchlist, deliveries.c.recipient, sa.func.min(deliveries.c.created_at)
            )
            .where(deliveries.c.status == "pending")
            .group_by(deliveries.c.watchlist, deliveries.c.recipient)
        )
        with self._read() as tx:
            return {(w, r): _aware(created) for w, r, created in tx.execute(query)}

    def ready_messages(self, now: datetime) -> list[OutgoingMessage]:
        """Messages stored but not yet accepted by the server, due, and not being sent."""
        query = (
            sa.select(messages.c.message_id, messages.c.recipient, messages.c.mime, messages.c.kind)
            .where(messages.c.status == "ready")
            .where(messages.c.next_attempt_at <= now)
            .where(sa.or_(messages.c.lease_until.is_(None), messages.c.lease_until <= now))
            .order_by(messages.c.created_at)
        )
        with self._read() as tx:
            return [
                OutgoingMessage(r.message_id, r.recipient, bytes(r.mime), r.kind)
                for r in tx.execute(query)
            ]

    def release_message_leases(self) -> int:
        """Forget every send lease; only for a process that knows it is the sole sender.

        SQLite deployments hold a file lock, so a lease found at start-up belongs to a process
        that died mid-send: its message is resent now (the at-most-one repeat), not in 10 min.
        """
        with self._tx() as tx:
            return int(
                tx.execute(
                    messages.update()
                    .where(messages.c.lease_owner.is_not(None))
                    .values(lease_owner=None, lease_until=None)
                ).rowcount
            )

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def lease_message(self, message_id: str, owner: str, now: datetime, until: datetime) -> bool:
        """Take the right to send a message now; False if another worker holds it."""
        with self._tx() as tx:
            taken = tx.execute(
                messages.update()
                .where(messages.c.message_id == message_id)
                .where(messages.c.status == "ready")
                .where(
                    sa.or_(
                        messages.c.lease_until.is_(None),
                        messages.c.lease_until <= now,
                        messages.c.lease_owner == owner,
                    )
                )
                .values(lease_owner=owner, lease_until=until)
            ).rowcount
        return bool(taken)

    def mark_sent(self, message_id: str, now: datetime) -> None:
        self._finish(message_id, "sent", now, None)

    def mark_dead(self, message_id: str, error: str, now: datetime) -> None:
        self._finish(message_id, "dead", now, error)

    def _finish(self, message_id: str, status: str, now: datetime, error: str | None) -> None:
        """A sent message stays sent: a refusal reported late (by a worker whose lease ran
        out meanwhile) does not turn it, or its deliveries, into dead letters."""
        with self._tx() as tx:
            changed = tx.execute(
                messages.update()
                .where(messages.c.message_id == message_id)
                .where(messages.c.status != "sent")
                .values(
                    status=status,
                    sent_at=now,
                    last_error=error,
                    attempts=messages.c.attempts + 1,
                    lease_owner=None,
                    lease_until=None,
                )
            ).rowcount
            if changed:
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
                .values(
                    last_error=error,
                    attempts=attempts,
                    next_attempt_at=now + delay(attempts),
                    lease_owner=None,
                    lease_until=None,
                )
            )

    def outbox(self) -> Outbox:
        with self._read() as tx:
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
        oldest = _aware(pending[1]) if pending[1] is not None else None
        return Outbox(int(pending[0]), int(ready), int(dead), oldest)

    def retry_dead(self, now: datetime, recipient: str | None = None) -> int:
        """Send dead letters (of one recipient, or all) again, once their cause is fixed (a
        mailbox restored, a sender allowed): the same bytes and Message-ID, ready now, and
        their deliveries claimed by them again. Returns how many."""
        query = sa.select(messages.c.message_id).where(messages.c.status == "dead")
        if recipient is not None:
            query = query.where(messages.c.recipient == recipient)
        with self._tx() as tx:
            found = sorted(tx.execute(query).scalars())
            for chunk in _chunks(found):
                tx.execute(
                    messages.update()
                    .where(_among(tx, messages.c.message_id, chunk, sa.Text))
                    .values(
                        status="ready",
                        attempts=0,
                        last_error=None,
                        next_attempt_at=now,
                        sent_at=None,
                        lease_owner=None,
                        lease_until=None,
                    )
                )
                tx.execute(
                    deliveries.update()
                    .where(_among(tx, deliveries.c.message_id, chunk, sa.Text))
                    .where(deliveries.c.status == "dead")
                    .values(status="claimed", sent_at=None)
                )
        return len(found)

    def dead_letters(self) -> list[tuple[str, str]]:
        """(recipient, last error) of each message the server refused for good."""
        with self._read() as tx:
            rows = tx.execute(
                sa.select(messages.c.recipient, messages.c.last_error).where(
                    messages.c.status == "dead"
                )
            )
            return [(row.recipient, row.last_error or "") for row in rows]

    # ------------------------------------------------------------------ schedules and meta

    # ------------------------------------------------------------------ workers

    def heartbeat(self, worker: WorkerInfo, now: datetime) -> None:
        """Register this worker or refresh its heartbeat (and config hash, after a reload)."""
        with self._tx() as tx:
            statement = _insert(tx, workers).values(
                worker_id=worker.worker_id,
                host=worker.host,
                pid=worker.pid,
                config_hash=worker.config_hash,
                started_at=now,
                heartbeat_at=now,
            )
            tx.execute(
                statement.on_conflict_do_update(
                    index_elements=["worker_id"],
                    set_={"heartbeat_at": now, "config_hash": worker.config_hash},
                )
            )

    def live_workers(self, since: datetime) -> list[WorkerInfo]:
        """Workers whose last heartbeat is not older than `since`."""
        query = sa.select(workers).where(workers.c.heartbeat_at >= since).order_by(workers.c.host)
        with self._read() as tx:
            return [
                WorkerInfo(r.worker_id, r.host, r.pid, r.config_hash, r.heartbeat_at)
                for r in tx.execute(query)
            ]

    def retire_worker(self, worker_id: str, stale_before: datetime) -> None:
        """Remove this worker (clean exit) and rows of workers silent since `stale_before`."""
        with self._tx() as tx:
            tx.execute(
                workers.delete().where(
                    sa.or_(workers.c.worker_id == worker_id, workers.c.heartbeat_at < stale_before)
                )
            )

    def get_meta(self, key: str) -> str | None:
        with self._read() as tx:
            return tx.execute(sa.select(meta.c.value).where(meta.c.key == key)).scalar()

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as tx:
            statement = _insert(tx, meta).values(key=key, value=value)
            tx.execute(
                statement.on_conflict_do_update(index_elements=["key"], set_={"value": value})
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


# --------------------------------------------------------------------------- stories

_STORY_LOCK = 0x73746F72696573  # "stories": one clustering transaction at a time on PostgreSQL
_MAX_PARAMETERS = 20000  # values per IN list: bounds one statement's size
_KEY_SCHEME = "dedupe_keys"  # meta: "grouped", or no row for the earlier kind (_grouped_keys)
_TOUCH_AFTER = timedelta(days=1)  # refresh a key's last_seen_at at most daily
_CANDIDATE_CACHE_SIZE = 100_000  # clustered items kept in memory: ~0.5 KB each


def _chunks(values: Iterable[Any]) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for value in values:
        chunk.append(value)
        if len(chunk) == _MAX_PARAMETERS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@functools.cache
def _claim_query(dialect: str, named: bool, force: bool, with_disabled: bool) -> Any:
    """The due feeds a claim may take, with bound parameters now, owner, cycle, limit (and
    names): built and compiled once, not on every claim (SQLAlchemy's construction was most
    of a claim's own CPU time).

    It reads the due feeds in (next_poll_at, id) order from ix_feeds_due, each with its
    host, and stops at the limit: the cost follows the due feeds, not all feeds. A feed
    whose row, or host's row, another claim has locked is skipped (SKIP LOCKED); only the
    hosts of the rows returned are locked."""
    now = sa.bindparam("now", type_=UTCDateTime())
    owner = sa.bindparam("owner", type_=sa.Text)
    query = (
        sa.select(feeds)
        .join(hosts, hosts.c.host == feeds.c.host)
        .where(
            sa.or_(
                hosts.c.lease_owner.is_(None),
                hosts.c.lease_owner == owner,
                hosts.c.lease_expires_at <= now,
            )
        )
        .where(sa.or_(hosts.c.blocked_until.is_(None), hosts.c.blocked_until <= now))
        .where(sa.or_(feeds.c.lease_owner.is_(None), feeds.c.lease_expires_at <= now))
        .where(feeds.c.poll_cycle.is_distinct_from(sa.bindparam("cycle", type_=sa.Text)))
        .order_by(feeds.c.next_poll_at, feeds.c.id)
        .limit(sa.bindparam("limit", type_=sa.Integer))
        .with_for_update(skip_locked=True, of=[feeds, hosts])
    )
    if not with_disabled:  # only a user naming a feed polls a disabled one
        # In the SQL text, not a parameter: once psycopg prepares the claim, PostgreSQL may
        # plan it for any parameters, and guessed from `status <> $n` (every feed has the
        # same status) that almost no feed qualifies: it read and sorted all feeds on each
        # claim instead of taking the first due ones from ix_feeds_due.
        disabled = sa.literal_column(f"'{FeedStatus.DISABLED.value}'", sa.Text)  # fixed word
        query = query.where(feeds.c.status != disabled)
    if not force:  # never NULL when due: only a disabled feed has no next poll
        query = query.where(feeds.c.next_poll_at <= now)
    if named:
        names = sa.bindparam("names", type_=sa.Text)
        query = query.where(feeds.c.name.in_(_listed_select(dialect, names)))
    else:
        query = query.where(feeds.c.active)
    return query


@functools.cache
def _claim_statement(named: bool, force: bool, with_disabled: bool) -> Any:
    """PostgreSQL's claim in one statement: the picked feeds leased and marked with the
    cycle, their hosts leased, each feed returned with its host's last request
    (data-modifying CTEs)."""
    lease = {
        "lease_owner": sa.bindparam("owner", type_=sa.Text),
        "lease_expires_at": sa.bindparam("lease_until", type_=UTCDateTime()),
    }
    picked = _claim_query("postgresql", named, force, with_disabled)
    picked = picked.with_only_columns(feeds.c.id).cte("picked")
    leased = (
        feeds.update()
        .where(feeds.c.id.in_(sa.select(picked.c.id)))
        .values(**lease, poll_cycle=sa.bindparam("cycle", type_=sa.Text))
        .returning(*feeds.c)
        .cte("leased")
    )
    leased_hosts = (
        hosts.update()
        .where(hosts.c.host.in_(sa.select(leased.c.host)))
        .values(**lease)
        .returning(hosts.c.host, hosts.c.last_request_at)
        .cte("leased_hosts")
    )
    return (
        sa.select(leased, leased_hosts.c.last_request_at.label("host_last_request_at"))
        .join_from(leased, leased_hosts, leased.c.host == leased_hosts.c.host)
        .order_by(leased.c.next_poll_at, leased.c.id)
    )


def _listed(dialect: str, values: Sequence[Any]) -> str:
    """Values as one parameter for _listed_select: a PostgreSQL array literal of texts, or
    JSON for SQLite. psycopg would quote an array's elements one by one in Python (600 feed
    names: a third of a claim's own CPU time)."""
    if dialect == "postgresql":
        quoted = (v.replace("\\", "\\\\").replace('"', '\\"') for v in values)
        return "{" + ",".join(f'"{v}"' for v in quoted) + "}"
    return json.dumps(list(values))


def _listed_select(dialect: str, listed: Any) -> Any:
    """SELECT of the values in bound parameter `listed` (as _listed wrote them)."""
    if dialect == "postgresql":
        # IN (SELECT unnest(...)), not = ANY(...): see _among.
        return sa.select(sa.func.unnest(sa.cast(listed, postgresql.ARRAY(sa.Text))))
    return sa.select(sa.func.json_each(listed).table_valued("value").c.value)


def _among(tx: Connection, column: Any, values: Sequence[Any], kind: Any = sa.BigInteger) -> Any:
    """`column IN values` as one bound parameter: thousands of hashes per ingest (or feed
    names per claim) would otherwise cost a bind parameter each to compile."""
    # On PostgreSQL IN (SELECT unnest(...)), not = ANY(...): a prepared statement's generic
    # plan tests ANY element by element for every row it filters (a claim's 600 feed names
    # against each feed: 6.6 ms), where the set is hashed once (under 1 ms). Texts go as
    # one literal (_listed), numbers as an array.
    if tx.dialect.name == "postgresql" and kind is not sa.Text:
        array = sa.bindparam(None, list(values), postgresql.ARRAY(kind))
        return column.in_(sa.select(sa.func.unnest(array)))
    listed = sa.bindparam(None, _listed(tx.dialect.name, values), sa.Text)
    return column.in_(_listed_select(tx.dialect.name, listed))


def _grouped_keys(tx: Connection) -> bool:
    """Whether this database's dedupe keys are grouped (stories.dedupe_keys): those of a
    database that had none when this version first stored items. One that has keys of the
    earlier, ungrouped kind keeps that kind: its keys must still find its items. Decided in
    the first ingest's transaction, so the first keys and the scheme are stored together."""
    stored = tx.execute(sa.select(meta.c.value).where(meta.c.key == _KEY_SCHEME)).scalar()
    if stored is not None:
        return bool(stored == "grouped")
    if tx.execute(sa.select(item_keys.c.hash).limit(1)).first() is not None:
        return False
    row = {"key": _KEY_SCHEME, "value": "grouped"}
    tx.execute(_insert(tx, meta).values(row).on_conflict_do_nothing(index_elements=["key"]))
    return True


def _first_of_each(batch: Sequence[Item], grouped: bool) -> list[tuple[Item, tuple[int, ...]]]:
    """The batch without repeats (by any dedupe key), each item with its key hashes."""
    seen: set[int] = set()
    unique = []
    for item in batch:
        hashes = dedupe_keys(item, grouped)
        if not seen.intersection(hashes):
            unique.append((item, hashes))
        seen.update(hashes)
    return unique


def _lock_stories(tx: Connection) -> None:
    # Two workers clustering at once could each start a story for the same news. The lock is
    # taken before any insert, so it cannot deadlock with the unique indexes.
    if tx.dialect.name == "postgresql":
        tx.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _STORY_LOCK})


class _Known(NamedTuple):
    """A stored dedupe key, with its item (feed, key, title and summary are None once the
    item was pruned)."""

    hash: int
    item_id: int | None
    stale: bool  # last seen long enough ago to refresh
    feed: str | None
    key: str | None
    title: str | None
    summary: str | None


def _known_keys(tx: Connection, hashes: Iterable[int], now: datetime) -> dict[int, _Known]:
    """hash -> what is stored under it, for the stored ones. One query per round, on the
    ingest hot path."""
    rows = _select_among(
        tx,
        "SELECT k.hash, k.item_id, k.last_seen_at < {p}, i.feed, i.key, i.title, i.summary "
        "FROM item_keys k LEFT JOIN items i ON i.id = k.item_id WHERE k.hash {among}",
        set(hashes),
        _stamp(tx, now - _TOUCH_AFTER),
    )
    return {row[0]: _Known(*row) for row in rows}


def _select_among(tx: Connection, sql: str, values: Iterable[int], *before: Any) -> list[Any]:
    """The rows of `sql`, straight through the driver: thousands per round would cost more
    in SQLAlchemy's row processing. `{among}` in it stands for `IN values` (a chunk at a
    time, bound as one parameter, as `_among` does), `{p}` for a parameter from `before`."""
    postgres = tx.dialect.name == "postgresql"
    statement = sql.format(
        p="%s" if postgres else "?",
        among="= ANY(%s)" if postgres else "IN (SELECT value FROM json_each(?))",
    )
    rows: list[Any] = []
    cursor = tx.connection.cursor()
    try:
        for chunk in _chunks(values):
            cursor.execute(statement, (*before, chunk if postgres else json.dumps(chunk)))
            rows += cursor.fetchall()
    finally:
        cursor.close()
    return rows


def _stored(known: Mapping[int, _Known], hashes: Iterable[int]) -> _Known:
    """What a known item's keys name: a live item (by the first key that has one), else a
    tombstone."""
    rows = [known[h] for h in hashes if h in known]
    return next((r for r in rows if r.key is not None), rows[0])


def _seen_again(
    tx: Connection,
    seen: Sequence[tuple[Item, tuple[int, ...]]],
    known: Mapping[int, _Known],
    now: datetime,
) -> list[tuple[int, Item, Item]]:
    """Record the outlet and any new key of each known item; return (id, item with the
    stored key, item as given) of those whose text changed in the feed that first carried
    them (the stored text is updated)."""
    sources: list[tuple[Any, ...]] = []
    new_keys: list[tuple[Any, ...]] = []
    stale: list[int] = []
    updated: list[tuple[int, Item, Item]] = []
    seen_at = _stamp(tx, now)
    for item, hashes in seen:
        row = _stored(known, hashes)
        stale += [known[h].hash for h in hashes if h in known and known[h].stale]
        new_keys += [(h, row.item_id, seen_at) for h in hashes]
        if row.key is None or row.item_id is None:  # pruned: a tombstone, nothing to record
            continue
        sources.append((row.item_id, item.feed, item.url, seen_at))
        if row.feed == item.feed and (row.title, row.summary) != (item.title, item.summary):
            updated.append((row.item_id, replace(item, key=row.key), item))
    _bulk_insert(tx, item_keys, ("hash", "item_id", "last_seen_at"), sorted(new_keys))
    for chunk in _chunks(sorted(stale)):
        tx.execute(
            item_keys.update().where(_among(tx, item_keys.c.hash, chunk)).values(last_seen_at=now)
        )
    _bulk_insert(tx, item_sources, ("item_id", "feed", "url", "seen_at"), sources)
    for item_id, item, _ in updated:
        tx.execute(
            items.update()
            .where(items.c.id == item_id)
            .values(title=item.title, summary=item.summary)
        )
    return updated


def _matched_elsewhere(
    tx: Connection,
    seen: Sequence[tuple[Item, tuple[int, ...]]],
    known: Mapping[int, _Known],
    match: Callable[[Item], Sequence[Match]],
) -> list[tuple[tuple[int, Item, Match], Item]]:
    """((stored item id, item, match), copy) of known items carried by another feed than
    the first, for watchlists that did not match the stored item: one limited to that feed
    or its language matches only now. The stored text is matched (the digest shows it), as
    the copy's feed and language."""
    pairs = [(_stored(known, hashes), copy) for copy, hashes in seen]
    pairs = [
        (row, copy) for row, copy in pairs if row.item_id and row.key and row.feed != copy.feed
    ]
    if not pairs:
        return []
    dates = _published_of(tx, {row.item_id for row, _ in pairs if row.item_id})
    candidates: list[tuple[tuple[int, Item, Match], Item]] = []
    for row, copy in pairs:
        assert row.item_id is not None and row.key is not None
        stored = replace(
            copy,
            key=row.key,
            title=row.title or "",
            summary=row.summary or "",
            published=dates.get(row.item_id, copy.published),  # backlog is judged by it
        )
        candidates += [((row.item_id, stored, m), copy) for m in match(stored)]
    if not candidates:
        return []
    sql = "SELECT item_id, watchlist FROM matches WHERE item_id {among}"
    had = set(map(tuple, _select_among(tx, sql, sorted({c[0][0] for c in candidates}))))
    fresh, taken = [], set(had)
    for (item_id, stored, m), copy in candidates:
        if (item_id, m.watchlist) not in taken:
            taken.add((item_id, m.watchlist))
            fresh.append(((item_id, stored, m), copy))
    return fresh


def _published_of(tx: Connection, item_ids: Iterable[int]) -> dict[int, datetime]:
    """item id -> its stored date, for the few known items another feed carries."""
    query = sa.select(items.c.id, items.c.published_at).where(items.c.id.in_(sorted(item_ids)))
    return {item_id: _aware(published) for item_id, published in tx.execute(query)}


def _stories_of(tx: Connection, item_ids: Iterable[int]) -> dict[int, int]:
    """item id -> its story, for those of these items in one."""
    sql = "SELECT item_id, story_id FROM story_members WHERE item_id {among}"
    return dict(_select_among(tx, sql, sorted(item_ids)))


def _record_repeats(
    tx: Connection,
    repeats: Sequence[tuple[Item, tuple[int, ...], Item]],
    ids: Mapping[str, int],
    now: datetime,
) -> None:
    """Items that an earlier batch of the same ingest carries as new (item, its key hashes,
    that batch's item): their keys and their outlet, as for any item seen again."""
    stored = [(item, hashes, ids[first.key]) for item, hashes, first in repeats if first.key in ids]
    seen_at = _stamp(tx, now)
    keys = sorted((h, item_id, seen_at) for _, hashes, item_id in stored for h in hashes)
    _bulk_insert(tx, item_keys, ("hash", "item_id", "last_seen_at"), keys)
    outlets = [(item_id, item.feed, item.url, seen_at) for item, _, item_id in stored]
    _bulk_insert(tx, item_sources, ("item_id", "feed", "url", "seen_at"), outlets)


def _insert_items(
    tx: Connection, fresh: Sequence[tuple[Item, tuple[int, ...]]], now: datetime
) -> dict[str, int]:
    """Insert the new items with their keys and own outlet; item key -> id."""
    if not fresh:
        return {}
    seen_at = _stamp(tx, now)
    inserted = _bulk_insert(
        tx,
        items,
        ITEM_COLUMNS,
        # In key order, as every worker inserts them: two cannot deadlock on the index.
        sorted(item_values(item, _stamp(tx, item.published), seen_at) for item, _ in fresh),
        returning=("id", "key"),
        new=True,
    )
    ids = {key: item_id for item_id, key in inserted}
    stored = [(item, hashes) for item, hashes in fresh if item.key in ids]
    _bulk_insert(
        tx,
        item_keys,
        ("hash", "item_id", "last_seen_at"),
        sorted((h, ids[item.key], seen_at) for item, hashes in stored for h in hashes),
        new=True,
    )
    _bulk_insert(
        tx,
        item_sources,
        ("item_id", "feed", "url", "seen_at"),
        [(ids[item.key], item.feed, item.url, seen_at) for item, _ in stored],
        new=True,
    )
    return ids


def _story_candidates(
    tx: Connection,
    bands: Iterable[int],
    since: datetime,
    cache: dict[int, tuple[datetime, Candidate]],
    lock: threading.Lock,
) -> dict[int, list[Candidate]]:
    """band -> the stored items (first seen since `since`) that share it, with their story.

    Unrelated news shares a band now and then (~1 in 700 pairs of the bench's articles), so
    each new item meets dozens of candidates, again in every batch: `cache` (item id ->
    first seen, candidate) keeps them, and only the (band, item id) pairs are read each time.
    An entry older than the window is read again: its id may have been reused after a prune.
    `lock` is held to change `cache`; other threads may change it meanwhile.
    """
    pairs = _band_members(tx, bands)
    missing = {i for _, i in pairs if (entry := cache.get(i)) is None or entry[0] < since}
    fetched = _candidates_by_id(tx, missing)
    with lock:
        cache.update(fetched)
    found: dict[int, list[Candidate]] = {}
    for band, item_id in pairs:
        entry = fetched.get(item_id) or cache.get(item_id)
        if entry is not None and entry[0] >= since:
            found.setdefault(band, []).append(entry[1])
    # A story takes new members for the window after it began, not for as long as each new
    # member is close to the last: a daily column carried by two feeds chained every edition
    # into its first day's story, and none was alerted again.
    closed = _stories_begun_before(tx, {c.story_id for cs in found.values() for c in cs}, since)
    if closed:
        found = {
            band: kept
            for band, candidates in found.items()
            if (kept := [c for c in candidates if c.story_id not in closed])
        }
    return found


def _stories_begun_before(tx: Connection, story_ids: set[int], since: datetime) -> set[int]:
    if not story_ids:
        return set()
    sql = "SELECT id FROM stories WHERE created_at < {p} AND id {among}"
    return {story for (story,) in _select_among(tx, sql, sorted(story_ids), _stamp(tx, since))}


def _band_members(tx: Connection, bands: Iterable[int]) -> list[tuple[int, int]]:
    """(band, item id) of the stored items with any of these bands."""
    sql = "SELECT band, item_id FROM story_bands WHERE band {among}"
    pairs: list[tuple[int, int]] = _select_among(tx, sql, bands)
    return pairs


def _candidates_by_id(
    tx: Connection, item_ids: Iterable[int]
) -> dict[int, tuple[datetime, Candidate]]:
    found = {}
    for chunk in _chunks(item_ids):
        query = (
            sa.select(
                items.c.id,
                items.c.feed,
                items.c.title,
                items.c.summary,
                items.c.first_seen_at,
                story_members.c.story_id,
            )
            .join(story_members, story_members.c.item_id == items.c.id)
            .where(_among(tx, items.c.id, chunk))
        )
        for row in tx.execute(query):
            hashes = compact(shingle_hashes(shingles(row.title, row.summary)))
            found[row.id] = (row.first_seen_at, Candidate(row.id, row.story_id, hashes, row.feed))
    return found


def _story_outlets(tx: Connection, story_ids: Iterable[int]) -> dict[int, list[tuple[str, str]]]:
    """story id -> (outlet, url) of every item in it, first seen first."""
    outlets: dict[int, list[tuple[str, str]]] = {}
    for chunk in _chunks(story_ids):
        query = (
            sa.select(story_members.c.story_id, item_sources.c.feed, item_sources.c.url)
            .join(item_sources, item_sources.c.item_id == story_members.c.item_id)
            .where(story_members.c.story_id.in_(chunk))
            .order_by(item_sources.c.seen_at, item_sources.c.item_id)
        )
        for row in tx.execute(query):
            outlets.setdefault(row.story_id, []).append((row.feed, row.url))
    return outlets


def _one_entry_per_story(
    rows: Sequence[Any], outlets: Mapping[int, Sequence[tuple[str, str]]]
) -> list[tuple[str, DigestEntry]]:
    """One entry per recipient, watchlist and story, under the story's first item (else its
    earliest), naming the other outlets that carried it; every delivery id is kept."""
    groups: dict[tuple[str, str, Any], list[Any]] = {}
    for row in rows:
        story = row.story_id if row.story_id is not None else ("item", row.item_pk)
        groups.setdefault((row.recipient, row.watchlist, story), []).append(row)
    entries = []
    for (recipient, watchlist, _), group in groups.items():
        shown = min(group, key=lambda r: (r.item_pk != r.story_id, r.published_at))
        also: dict[str, str] = {}  # outlet -> its first link to the story
        for outlet, url in outlets.get(shown.story_id, ()):
            if outlet != shown.feed:
                also.setdefault(outlet, url)
        entry = DigestEntry(
            tuple(r.id for r in group),
            watchlist,
            _item_from(shown),
            _hits_from(shown.hits),
            also_reported_by=tuple(also.items()),
            updated=shown.revision_of is not None,
        )
        entries.append((recipient, entry))
    return entries


def _insert_bands(tx: Connection, rows: Sequence[tuple[int, int]]) -> None:
    # 32 rows per new item: straight to the driver's executemany (SQLite) or COPY, which are
    # 5x faster than SQLAlchemy's per-row parameter processing (bench/bench_ingest.py). The
    # item ids are new, so only an item's own repeated band could conflict: set() drops it.
    ordered = sorted(set(rows))  # in key order: fewer B-tree pages touched
    if tx.dialect.name == "postgresql":
        cursor = tx.connection.cursor()
        try:
            _copy_rows(cursor, "story_bands", ("band", "item_id"), ordered)
        finally:
            cursor.close()
    else:
        sql = "INSERT OR IGNORE INTO story_bands (band, item_id) VALUES (?, ?)"
        tx.exec_driver_sql(sql, ordered)


@dataclass(frozen=True, slots=True)
class _Recorded:
    """A match stored by the first ingest transaction, to be queued by `_settle`."""

    match_id: int
    item_id: int
    watchlist: str
    item: Item


def _record_matches(
    tx: Connection, found: Sequence[tuple[int, Item, Match]], now: datetime, *, new: bool = True
) -> list[_Recorded]:
    """Store (item id, item, match) rows; the recorded ones (a repeat is skipped). `new`:
    the items (or revisions) are this transaction's own, so no other worker has matches
    for them."""
    inserted = _bulk_insert(
        tx,
        matches,
        ("item_id", "watchlist", "hits", "created_at"),
        [(item_id, m.watchlist, _hits_json(m.hits), _stamp(tx, now)) for item_id, _, m in found],
        returning=("id", "item_id", "watchlist"),
        new=new,
    )
    ids = {(item_id, watchlist): match_id for match_id, item_id, watchlist in inserted}
    recorded = []
    for item_id, item, m in found:
        match_id = ids.pop((item_id, m.watchlist), None)
        if match_id is not None:
            recorded.append(_Recorded(match_id, item_id, m.watchlist, item))
    return recorded


def _unsettled_matches(tx: Connection, since: datetime | None = None) -> list[_Recorded]:
    """Matches never queued (stored since `since`): without deliveries, of items in no
    story."""
    query = (
        sa.select(matches.c.id.label("match_id"), matches.c.watchlist, items)
        .join(items, items.c.id == matches.c.item_id)
        .where(~sa.exists().where(story_members.c.item_id == matches.c.item_id))
        .where(~sa.exists().where(deliveries.c.match_id == matches.c.id))
        .order_by(matches.c.id)
    )
    if since is not None:
        query = query.where(matches.c.created_at >= since)
    return [
        _Recorded(row.match_id, row.id, row.watchlist, _item_from(row)) for row in tx.execute(query)
    ]


def _already_queued(tx: Connection, story: int, watchlist: str) -> set[str]:
    """Recipients with a live (not dead-lettered) delivery of this story for this watchlist."""
    query = (
        sa.select(deliveries.c.recipient)
        .join(matches, matches.c.id == deliveries.c.match_id)
        .join(story_members, story_members.c.item_id == matches.c.item_id)
        .where(story_members.c.story_id == story)
        .where(deliveries.c.watchlist == watchlist)
        .where(deliveries.c.status != "dead")
    )
    return set(tx.execute(query).scalars())


def _insert_revisions(
    tx: Connection, updated: Sequence[tuple[int, Item]], now: datetime
) -> list[tuple[int, Item]]:
    """Store each changed text as a revision item in its original's story, to alert again.

    The revision's key names its text, so the same change seen twice is stored once.
    """
    revised = []
    for original_id, item in updated:
        revision = replace(item, key=f"{item.key}#{content_hash(item)}")
        revision_id = tx.execute(
            _insert(tx, items)
            .values(item_row(revision, now))
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(items.c.id)
        ).scalar()
        if revision_id is None:
            continue
        story = tx.execute(
            sa.select(story_members.c.story_id).where(story_members.c.item_id == original_id)
        ).scalar()
        if story is None:  # the original is in no story (unmatched, or not settled yet):
            # the revision starts its own; the original's story is _settle's to decide.
            tx.execute(stories.insert().values(id=revision_id, created_at=now))
            story = revision_id
        tx.execute(
            story_members.insert().values(
                item_id=revision_id, story_id=story, similarity=1.0, revision_of=original_id
            )
        )
        revised.append((revision_id, revision))
    return revised
