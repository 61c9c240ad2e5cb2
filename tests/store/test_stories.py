"""Settling: matches clustered and queued once, also after a crash (monitor/store/stories.py).

Run on SQLite and on PostgreSQL (the store fixture's database_url is parametrized)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from monitor.store import Store, open_store
from tests.store.common import NOW, RECIPIENTS, make_item, match_all


def test_matches_left_unqueued_by_a_crash_are_queued_once_after_restart(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first transaction (items, matches) commits; the second (stories, deliveries) fails,
    # as if the process died between them.
    crashed = open_store(database_url)
    crashed.settle(RECIPIENTS, NOW)

    def die(*args: object, **kwargs: object) -> object:
        raise RuntimeError("killed between the transactions")

    monkeypatch.setattr(crashed, "_cluster", die)
    result = crashed.ingest([make_item(1), make_item(2)], match_all, RECIPIENTS, NOW)
    assert len(result.new_items) == 2 and len(result.matches) == 2
    assert crashed.pending_entries() == []
    crashed.close()

    restarted = open_store(database_url)
    restarted.settle(RECIPIENTS, NOW)
    assert len(restarted.pending_entries()) == 4  # 2 items x 2 recipients
    restarted.settle(RECIPIENTS, NOW)
    again = open_store(database_url)
    again.settle(RECIPIENTS, NOW)  # another worker starting: nothing twice
    assert len(again.pending_entries()) == 4
    again.close()
    restarted.close()


def test_a_failed_queueing_is_retried_with_the_next_items(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = store._cluster
    monkeypatch.setattr(store, "_cluster", lambda *args: 1 / 0)
    store.ingest([make_item(1)], match_all, RECIPIENTS, NOW)
    assert store.pending_entries() == []
    monkeypatch.setattr(store, "_cluster", cluster)
    store.ingest([make_item(2)], match_all, RECIPIENTS, NOW)
    assert sorted(e.item.key for _, e in store.pending_entries()) == [
        "u:example.org/1",
        "u:example.org/1",
        "u:example.org/2",
        "u:example.org/2",
    ]


def test_a_live_worker_queues_what_a_dead_one_left(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = open_store(database_url)
    live.settle(RECIPIENTS, NOW)  # its start-up sweep is done: what dies later is not seen
    dead = open_store(database_url)
    monkeypatch.setattr(dead, "_cluster", lambda *args: 1 / 0)  # dies between the two
    dead.ingest([make_item(1)], match_all, RECIPIENTS, NOW)
    dead.close()
    assert live.pending_entries() == []
    live.settle(RECIPIENTS, NOW, since=NOW - timedelta(hours=1))  # the digest tick's look
    assert len(live.pending_entries()) == 2
    live.settle(RECIPIENTS, NOW, since=NOW - timedelta(hours=1))
    assert len(live.pending_entries()) == 2
    live.close()
