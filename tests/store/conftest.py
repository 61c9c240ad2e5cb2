"""The store, opened on SQLite and on PostgreSQL for each test (database_url)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from monitor.store import Store, open_store


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = open_store(database_url)
    yield store
    store.close()
