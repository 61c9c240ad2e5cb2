"""Feeds: the configured feeds and their state (monitor/store/feeds.py).

Run on SQLite and on PostgreSQL (the store fixture's database_url is parametrized)."""

from __future__ import annotations

from datetime import timedelta

from monitor.store import Store
from tests.store.common import NOW


def test_feed_sync_and_due(store: Store) -> None:
    store.sync_feeds({"heise": "https://heise.de/a", "spiegel": "https://spiegel.de/a"}, NOW)
    assert [f.name for f in store.due_feeds(["heise", "spiegel"], NOW)] == ["heise", "spiegel"]
    store.update_feed("heise", next_poll_at=NOW + timedelta(minutes=5), etag='"v1"')
    assert [f.name for f in store.due_feeds(["heise", "spiegel"], NOW)] == ["spiegel"]
    store.sync_feeds({"heise": "https://heise.de/b"}, NOW)  # URL changed: validators reset
    state = store.feed_state("heise")
    assert state is not None and state.url == "https://heise.de/b" and state.etag is None
