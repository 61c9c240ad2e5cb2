"""`monitor migrate-db --to URL`: copy all state from one database to another.

For moving from SQLite to PostgreSQL when one machine is no longer enough. The target is
migrated to the current schema first and must be empty; rows are copied table by table in
dependency order, in one transaction, so a failed copy leaves the target as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from monitor.errors import MonitorError, UnavailableError
from monitor.store import create_engine, migrate

SKIPPED = {"alembic_version", "workers"}  # the schema version is the target's own; workers are live
CHUNK = 2000


def copy_database(source_url: str, target_url: str) -> dict[str, int]:
    """Copy every table's rows from source to target; return rows copied per table."""
    source, target = create_engine(source_url), _target_engine(target_url)
    try:
        migrate(source)
        _migrate_target(target)
        tables = _tables(source)
        copied: dict[str, int] = {}
        with source.connect() as reader, target.begin() as writer:
            target_tables = _reflected(writer)
            for table in tables:
                _require_empty(writer, target_tables[table.name])
            for table in tables:
                copied[table.name] = _copy(reader, writer, table, target_tables[table.name])
            if writer.dialect.name == "postgresql":
                _reset_sequences(writer, [target_tables[t.name] for t in tables])
        return copied
    finally:
        source.dispose()
        target.dispose()


def _target_engine(url: str) -> sa.Engine:
    try:
        return create_engine(url)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as error:
        raise MonitorError(
            f"--to {_shown(url)}: not a database URL monitor can use ({error}); "
            "write e.g. postgresql+psycopg://monitor@db.example.org/monitor"
        ) from None


def _migrate_target(target: sa.Engine) -> None:
    """The target's schema; a server that is down or refuses is one line, not a traceback."""
    try:
        migrate(target)
    except sa.exc.OperationalError as error:
        reason = (str(error.orig or error).strip().splitlines() or ["no answer"])[0]
        raise UnavailableError(
            f"the target database {_shown(str(target.url))} cannot be reached: {reason}; "
            "check that the server runs and that host, port, user and password are right. "
            "Nothing was copied"
        ) from None


def _shown(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url.split("@")[-1]  # whatever it is, never the part a password is in


def _tables(engine: sa.Engine) -> list[sa.Table]:
    reflected = sa.MetaData()
    reflected.reflect(engine)
    return [t for t in reflected.sorted_tables if t.name not in SKIPPED]


def _reflected(connection: Connection) -> dict[str, sa.Table]:
    reflected = sa.MetaData()
    reflected.reflect(connection)
    return dict(reflected.tables)


def _require_empty(connection: Connection, table: sa.Table) -> None:
    if connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one():
        raise MonitorError(
            f"the target database already has rows in {table.name!r}; "
            "migrate-db copies into an empty database only"
        )


# Leases name the process that held them. The source is one stopped SQLite process (its
# file lock), so any lease left there belongs to no one; copied, it held a message unsent
# (and feeds and hosts unpolled) for up to 10 minutes on the new database.
_LEASES = {"lease_owner", "lease_expires_at", "lease_until"}


def _copy(reader: Connection, writer: Connection, source: sa.Table, target: sa.Table) -> int:
    columns = [c.name for c in source.columns if c.name in target.columns]
    count = 0
    for rows in _chunks(reader.execute(sa.select(*(source.c[name] for name in columns)))):
        copied = [dict(zip(columns, row, strict=True)) for row in rows]
        for row in copied:
            row.update(dict.fromkeys(_LEASES & row.keys()))
        writer.execute(target.insert(), copied)
        count += len(rows)
    return count


def _chunks(result: sa.CursorResult[Any]) -> Iterator[list[Any]]:
    while rows := result.fetchmany(CHUNK):
        yield list(rows)


def _reset_sequences(connection: Connection, tables: list[sa.Table]) -> None:
    """Explicit ids were copied; move each serial sequence past the largest."""
    for table in tables:
        if "id" not in table.columns or not isinstance(table.c.id.type, sa.Integer):
            continue
        connection.execute(
            sa.text(
                "SELECT setval(pg_get_serial_sequence(:table, 'id'), "
                f"COALESCE((SELECT MAX(id) FROM {table.name}), 0) + 1, false)"
            ),
            {"table": table.name},
        )
