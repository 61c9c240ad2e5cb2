"""The SQLite/PostgreSQL differences, each named once (`Dialect`), and what is built on
them: bulk inserts (COPY on PostgreSQL), lists bound as one parameter, and statements that
go straight to the driver on the hot path."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine


@dataclass(frozen=True, slots=True)
class Dialect:
    """What the store does differently on each engine. Code asks for a capability, never
    for an engine's name."""

    name: str
    # Writers take row locks (FOR UPDATE, SKIP LOCKED) and advisory locks, and may run at
    # once; SQLite has one writer at a time instead (BEGIN IMMEDIATE), so needs neither.
    row_locks: bool
    copy: bool  # bulk loads by COPY FROM STDIN, formatted in the driver's C code
    arrays: bool  # array parameters (unnest, = ANY); else JSON text read by json_each
    text_datetimes: bool  # datetimes stored as text, in SQLAlchemy's format
    placeholder: str  # the driver's parameter marker
    insert: Callable[[sa.Table], Any]  # the INSERT that has on_conflict_do_nothing()


SQLITE = Dialect(
    "sqlite",
    row_locks=False,
    copy=False,
    arrays=False,
    text_datetimes=True,
    placeholder="?",
    insert=sqlite.insert,
)
POSTGRESQL = Dialect(
    "postgresql",
    row_locks=True,
    copy=True,
    arrays=True,
    text_datetimes=False,
    placeholder="%s",
    insert=postgresql.insert,
)


def dialect_of(connection: Connection | Engine) -> Dialect:
    return POSTGRESQL if connection.dialect.name == "postgresql" else SQLITE


def insert(connection: Connection, table: sa.Table) -> Any:
    """The dialect's INSERT, which has on_conflict_do_nothing()."""
    return dialect_of(connection).insert(table)


def bulk_insert(
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
    datetimes go through `stamp`. PostgreSQL gets new rows by one COPY into the table, and
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
        if dialect_of(tx).copy:
            if new:
                copied = _copy_new(cursor, table.name, columns, rows, returning)
                if copied is not None:
                    return copied
            staged = tx.connection.info.setdefault(STAGED, set())
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
    """`bulk_insert` of rows new to the caller, on PostgreSQL: one COPY straight into the
    table, under a savepoint. None if a row turned out to exist after all (another worker
    inserted it meanwhile): the savepoint is rolled back and the caller inserts by the
    staging table, which skips such rows. Beside that path this writes each row once, not
    twice, and sorts nothing in the server, which every worker shares (docs/store.md).

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
        copy_rows(cursor, table, names, ordered)
    except errors.UniqueViolation:
        cursor.execute("ROLLBACK TO SAVEPOINT monitor_copy_new")
        return None
    if not returning:
        return []
    at = [names.index(name) for name in returning]
    return [tuple(row[n] for n in at) for row in ordered]


def copy_rows(
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
    """PostgreSQL's half of `bulk_insert`. COPY formats rows in the driver's C code, where
    unnest() arrays were dumped value by value in Python (the daemon's largest single cost
    on PostgreSQL), and it costs the server less too. The staging table is this session's,
    emptied at commit; its rows are taken out as they are inserted, so several inserts into
    one table share it in a transaction. Rows go in sorted, as every worker inserts them,
    so that two cannot deadlock on a unique index. `staged`: the staging tables this
    session has, created at most once per session (each creation was a round trip, seven
    per writer round); a rollback may undo a creation, so it empties the set
    (forget_staging)."""
    names = ", ".join(columns)
    stage = f"monitor_stage_{table.name}_{zlib.crc32(names.encode()):08x}"  # one per column set
    if stage not in staged:
        cursor.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "
            f"SELECT {names} FROM {table.name} WITH NO DATA"
        )
        staged.add(stage)
    copy_rows(cursor, stage, columns, rows)
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


def stamp(tx: Connection, moment: datetime) -> Any:
    """An aware datetime as `bulk_insert` passes it: what UTCDateTime would have stored."""
    naive = moment.astimezone(UTC).replace(tzinfo=None)
    # SQLAlchemy's SQLite DATETIME text format, so reads parse it like any other row.
    return naive.isoformat(" ", "microseconds") if dialect_of(tx).text_datetimes else naive


def aware(moment: datetime) -> datetime:
    """Aggregates (min/max) bypass the column type: make their datetimes UTC-aware."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


MAX_PARAMETERS = 20000  # values per IN list: bounds one statement's size


def chunks(values: Iterable[Any]) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for value in values:
        chunk.append(value)
        if len(chunk) == MAX_PARAMETERS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def listed(dialect: Dialect, values: Sequence[Any]) -> str:
    """Values as one parameter for listed_select: a PostgreSQL array literal of texts, or
    JSON for SQLite. psycopg would quote an array's elements one by one in Python (600 feed
    names: a third of a claim's own CPU time)."""
    if dialect.arrays:
        quoted = (v.replace("\\", "\\\\").replace('"', '\\"') for v in values)
        return "{" + ",".join(f'"{v}"' for v in quoted) + "}"
    return json.dumps(list(values))


def listed_select(dialect: Dialect, parameter: Any) -> Any:
    """SELECT of the values in bound parameter `parameter` (as `listed` wrote them)."""
    if dialect.arrays:
        # IN (SELECT unnest(...)), not = ANY(...): see among.
        return sa.select(sa.func.unnest(sa.cast(parameter, postgresql.ARRAY(sa.Text))))
    return sa.select(sa.func.json_each(parameter).table_valued("value").c.value)


def among(tx: Connection, column: Any, values: Sequence[Any], kind: Any = sa.BigInteger) -> Any:
    """`column IN values` as one bound parameter: thousands of hashes per ingest (or feed
    names per claim) would otherwise cost a bind parameter each to compile."""
    # On PostgreSQL IN (SELECT unnest(...)), not = ANY(...): a prepared statement's generic
    # plan tests ANY element by element for every row it filters, where the set is hashed
    # once (docs/store.md). Texts go as one literal (listed), numbers as an array.
    dialect = dialect_of(tx)
    if dialect.arrays and kind is not sa.Text:
        array = sa.bindparam(None, list(values), postgresql.ARRAY(kind))
        return column.in_(sa.select(sa.func.unnest(array)))
    parameter = sa.bindparam(None, listed(dialect, values), sa.Text)
    return column.in_(listed_select(dialect, parameter))


def select_among(tx: Connection, sql: str, values: Iterable[int], *before: Any) -> list[Any]:
    """The rows of `sql`, straight through the driver: thousands per round would cost more
    in SQLAlchemy's row processing. `{among}` in it stands for `IN values` (a chunk at a
    time, bound as one parameter, as `among` does), `{p}` for a parameter from `before`."""
    arrays, marker = dialect_of(tx).arrays, dialect_of(tx).placeholder
    statement = sql.format(
        p=marker,
        among=f"= ANY({marker})" if arrays else f"IN (SELECT value FROM json_each({marker}))",
    )
    rows: list[Any] = []
    cursor = tx.connection.cursor()
    try:
        for chunk in chunks(values):
            cursor.execute(statement, (*before, chunk if arrays else json.dumps(chunk)))
            rows += cursor.fetchall()
    finally:
        cursor.close()
    return rows


STAGED = "monitor_staged"  # connection info: the session's staging tables (_copy_insert)


def forget_staging(connection: Connection) -> None:
    """A rollback may have undone the creation of a staging table: create them again."""
    if not connection.invalidated:  # else its session is gone, and its info with it
        connection.info.pop(STAGED, None)
