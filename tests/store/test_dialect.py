"""Dialect: bulk inserts on each engine (monitor/store/dialect.py).

Run on SQLite and on PostgreSQL (the store fixture's database_url is parametrized)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from monitor.store import Store
from monitor.store.dialect import bulk_insert, stamp
from monitor.store.schema import ITEM_COLUMNS, item_values, items
from tests.store.common import NOW, make_item


def test_rows_thought_new_that_another_worker_stored_meanwhile_are_skipped(store: Store) -> None:
    # On PostgreSQL, rows the caller found absent go in by one COPY; if another worker
    # stored one of them meanwhile, the COPY is undone and the staging path inserts the rest.
    def rows(tx: Any, *numbers: int) -> list[tuple[Any, ...]]:
        at = stamp(tx, NOW)
        return [item_values(make_item(n), at, at) for n in numbers]

    with store.engine.begin() as tx:
        bulk_insert(tx, items, ITEM_COLUMNS, rows(tx, 2), new=True)
    with store.engine.begin() as tx:
        # Its savepoint stays open; undoing the next COPY must not undo this one.
        bulk_insert(tx, items, ITEM_COLUMNS, rows(tx, 5), new=True)
        inserted = bulk_insert(
            tx, items, ITEM_COLUMNS, rows(tx, 1, 2, 3), returning=("id", "key"), new=True
        )
        bulk_insert(tx, items, ITEM_COLUMNS, rows(tx, 4), new=True)  # the transaction goes on
    assert sorted(key for _, key in inserted) == ["u:example.org/1", "u:example.org/3"]
    with store.engine.connect() as connection:
        stored = dict(connection.execute(sa.select(items.c.key, items.c.id)).all())
    assert sorted(stored) == [f"u:example.org/{n}" for n in (1, 2, 3, 4, 5)]
    assert {key: stored[key] for _, key in inserted} == {key: i for i, key in inserted}
