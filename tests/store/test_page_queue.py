"""The page queue: a full-text feed's new item waits for its page from the moment it is
stored, and workers claim pages from the queue (store.texts, store.items)."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from monitor.store import PageOutcome, PageStatus, Store, open_store
from monitor.store.engine import migrate
from tests.store.common import NOW, RECIPIENTS, make_item, match_all

CLAIM = timedelta(minutes=5)


def statuses(store: Store) -> dict[str, str]:
    """item URL -> its page's status."""
    query = sa.text("SELECT i.url, t.status FROM item_texts t JOIN items i ON i.id = t.item_id")
    with store.engine.connect() as connection:
        return dict(connection.execute(query).all())


def claim(store: Store, feeds: set[str], now=NOW, limit: int = 10) -> list[str]:
    tasks = store.claim_pages(
        feeds,
        since=now - timedelta(days=1),
        now=now,
        until=now + CLAIM,
        limit=limit,
        backlog=timedelta(days=30),
    )
    return [task.item.url for task in tasks]


def test_only_a_full_text_feeds_new_items_wait_for_their_pages(store: Store) -> None:
    store.page_feeds = frozenset({"heise"})
    store.ingest([make_item(1), make_item(2)], match_all, RECIPIENTS, NOW)
    store.ingest([make_item(3, feed="spiegel")], match_all, RECIPIENTS, NOW)
    store.ingest([make_item(1, feed="spiegel")], match_all, RECIPIENTS, NOW)  # seen again
    assert statuses(store) == {
        "https://example.org/1": "waiting",
        "https://example.org/2": "waiting",
    }


def test_pages_are_claimed_oldest_first_once_and_given_back_to_the_queue(store: Store) -> None:
    store.page_feeds = frozenset({"heise"})
    store.ingest([make_item(1)], match_all, RECIPIENTS, NOW - timedelta(minutes=2))
    store.ingest([make_item(2)], match_all, RECIPIENTS, NOW - timedelta(minutes=1))

    assert claim(store, {"heise"}, limit=1) == ["https://example.org/1"]
    assert claim(store, {"heise"}) == ["https://example.org/2"]
    assert claim(store, {"heise"}) == []  # both claimed
    first = store.find_items("u:example.org/1")[0][0]
    store.release_page(first)  # its host asked to wait
    assert statuses(store)["https://example.org/1"] == "waiting"
    assert claim(store, {"heise"}) == ["https://example.org/1"]
    # A claim past its deadline was a dead worker's: the page is claimed again.
    assert claim(store, {"heise"}, now=NOW + CLAIM + timedelta(seconds=1)) == [
        "https://example.org/1",
        "https://example.org/2",
    ]


def test_pages_no_one_will_fetch_leave_the_queue(store: Store) -> None:
    """A feed whose full text was switched off, an item older than fulltext.max_age: their
    pages are not fetched, and do not wait for ever."""
    store.page_feeds = frozenset({"heise", "spiegel"})
    store.ingest([make_item(1)], match_all, RECIPIENTS, NOW - timedelta(days=2))
    store.ingest([make_item(2), make_item(3, feed="spiegel")], match_all, RECIPIENTS, NOW)

    assert claim(store, {"heise"}) == ["https://example.org/2"]  # spiegel's is off now

    assert statuses(store) == {"https://example.org/2": "claimed"}


def test_pages_left_unfetched_by_an_older_version_are_queued_at_the_upgrade(
    database_url: str,
) -> None:
    store = open_store(database_url)
    try:
        store.ingest([make_item(1)], match_all, RECIPIENTS, NOW)  # fetched before the upgrade
        store.ingest([make_item(2), make_item(3)], match_all, RECIPIENTS, NOW)  # not yet
        store.ingest([make_item(4, feed="spiegel")], match_all, RECIPIENTS, NOW)  # no full text
        first = store.find_items("u:example.org/1")[0][0]
        with store.engine.begin() as connection:  # as before migration 0010_i22_page_queue
            connection.execute(
                sa.text(
                    "INSERT INTO item_texts (item_id, feed, status, words) VALUES (:i, 'heise', 'text', 300)"
                ),
                {"i": first},
            )
            connection.execute(sa.text("DROP INDEX ix_item_texts_status"))
            connection.execute(
                sa.text("UPDATE alembic_version SET version_num = :old WHERE version_num = :new"),
                {"old": "0009_i22_page_sites", "new": "0010_i22_page_queue"},
            )
        migrate(store.engine)
        assert statuses(store) == {
            "https://example.org/1": "text",
            "https://example.org/2": "waiting",
            "https://example.org/3": "waiting",
        }
        assert claim(store, {"heise"}) == ["https://example.org/2", "https://example.org/3"]
    finally:
        store.close()


def test_a_page_saved_leaves_the_queue(store: Store) -> None:
    store.page_feeds = frozenset({"heise"})
    store.ingest([make_item(1)], match_all, RECIPIENTS, NOW)
    (task,) = store.claim_pages(
        {"heise"}, NOW - timedelta(days=1), NOW, NOW + CLAIM, 10, timedelta(days=30)
    )
    outcome = PageOutcome(PageStatus.FAILED, error="HTTP 404")
    assert store.save_pages([(task.item_id, outcome)], lambda *_: [], RECIPIENTS, NOW) == [[]]
    assert statuses(store) == {"https://example.org/1": "failed"}
    assert claim(store, {"heise"}) == []
