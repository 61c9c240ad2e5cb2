"""The engine: connections, SQLite's pragmas, migrations, and the base every part of the
store builds on (one transaction per public method: `_tx` to write, `_read` to read)."""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import alembic.util.exc
import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy.engine import Connection, Engine

from monitor.config import database_url
from monitor.errors import UnavailableError
from monitor.files import adopt, describe, make_dirs
from monitor.lock import sqlite_file
from monitor.store.dialect import SQLITE, dialect_of, forget_staging, insert
from monitor.store.schema import meta
from monitor.stories import (
    DedupeSettings,
)

_READ_ONLY = "monitor_read_only"  # execution option of Store._read's connections
_MIGRATION_LOCK = 0x6D6F6E69746F72  # "monitor": the advisory lock id for migrations


def hint(url: str) -> str:
    """Under systemd, where the service may write: a relative `database:` is taken from the
    config file's directory, /etc/monitor, which it may not. And which file this user may
    not write (one an older monitor made under sudo), and whose it is."""
    state, file = os.environ.get("STATE_DIRECTORY"), sqlite_file(url)
    if file is not None:
        family = (file.parent, file, *(file.with_name(file.name + s) for s in ("-wal", "-shm")))
        for path in family:
            if path.exists() and not os.access(path, os.W_OK):
                return f"; {describe(PermissionError(errno.EACCES, 'denied', str(path)))}"
    if not state or file is None or str(file).startswith(state.split(":")[0]):
        return ""
    return f" (this service may write only in {state}: set database: {state}/monitor.db)"


def create_engine(url: str) -> Engine:
    url = database_url(url)  # `migrate-db --to` takes one from the command line
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        if (file := sqlite_file(url)) is not None:
            make_dirs(file.parent)
            sa.event.listen(engine, "connect", functools.partial(_adopt_files, file))
        sa.event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    engine = sa.create_engine(url, pool_pre_ping=True)
    sa.event.listen(engine, "rollback", forget_staging)
    return engine


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
    # time (docs/store.md).
    cursor.execute("PRAGMA wal_autocheckpoint=16384")
    cursor.close()


def _adopt_files(file: Path, _dbapi_connection: Any, _record: Any) -> None:
    """The database, -wal and -shm (made by the pragmas) stay the owner's of their
    directory under `sudo monitor ...` (monitor.files), so the service can go on writing."""
    for path in (file, file.with_name(file.name + "-wal"), file.with_name(file.name + "-shm")):
        adopt(path)


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
    migrations = Path(__file__).parent.parent / "migrations"
    alembic_config.set_main_option("script_location", str(migrations))
    with engine.begin() as connection:
        if dialect_of(connection).row_locks:
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


class StoreBase:
    """The engine and the transactions every part of the store runs in."""

    def __init__(self, engine: Engine, dedupe: DedupeSettings | None = None) -> None:
        self.engine = engine
        self.dedupe = dedupe or DedupeSettings()
        # The feeds whose new items' article pages are queued at ingest (fulltext.py).
        self.page_feeds: frozenset[str] = frozenset()

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

    @property
    def is_sqlite(self) -> bool:
        return dialect_of(self.engine) is SQLITE

    def get_meta(self, key: str) -> str | None:
        with self._read() as tx:
            return tx.execute(sa.select(meta.c.value).where(meta.c.key == key)).scalar()

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as tx:
            statement = insert(tx, meta).values(key=key, value=value)
            tx.execute(
                statement.on_conflict_do_update(index_elements=["key"], set_={"value": value})
            )


# SQLite's and the PostgreSQL driver's words for a database that cannot do its work, and
# what to do about each; the first that a message contains applies.
_TROUBLE_HINTS = (
    ("readonly database", "the file (or its directory) is read-only for this user; let it write"),
    ("disk is full", "is its disk full? monitor goes on once there is space"),
    ("disk i/o error", "is its disk full or failing? monitor goes on once it can write"),
    ("database is locked", "another process held the write lock too long; monitor retries"),
    ("unable to open", "check that the file and its directory exist and are writable"),
)


def database_trouble(error: BaseException) -> str | None:
    """One line for an error of the database itself (disk full, read-only, server down),
    saying what to do; None for any other error (a bug, whose traceback is wanted)."""
    if not isinstance(error, sa.exc.OperationalError | sa.exc.InterfaceError):
        return None
    reason = (str(error.orig or error).strip().splitlines() or [type(error).__name__])[0]
    hint = next((h for words, h in _TROUBLE_HINTS if words in reason.lower()), None)
    return f"the database: {reason}" + (f"; {hint}" if hint else "")
