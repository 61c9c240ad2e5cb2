"""Items: new items stored once, with their keys and outlets (monitor/store/items.py).

Run on SQLite and on PostgreSQL (the store fixture's database_url is parametrized)."""

from __future__ import annotations

from dataclasses import astuple

import pytest
import sqlalchemy as sa

from monitor.models import Hit, Item, Match
from monitor.store import Store, open_store
from monitor.stories import dedupe_keys
from tests.store.common import NOW, RECIPIENTS, make_item, match_all


def test_ingest_stores_new_items_once_and_queues_deliveries(store: Store) -> None:
    first = store.ingest([make_item(1), make_item(2), make_item(1)], match_all, RECIPIENTS, NOW)
    assert [i.key for i in first.new_items] == ["u:example.org/1", "u:example.org/2"]
    again = store.ingest([make_item(1), make_item(3)], match_all, RECIPIENTS, NOW)
    assert [i.key for i in again.new_items] == ["u:example.org/3"]
    assert store.item_count() == 3
    pending = store.pending_entries()
    assert len(pending) == 6  # 3 items x 2 recipients
    _recipient, entry = pending[0]
    assert entry.item.summary.endswith("äöü")
    assert entry.item.published.tzinfo is not None
    assert entry.hits == (Hit("xAI", "title", 9, 12),)


def test_same_url_in_another_feed_is_not_new(store: Store) -> None:
    store.ingest([make_item(1, feed="heise")], match_all, RECIPIENTS, NOW)
    result = store.ingest([make_item(1, feed="spiegel")], match_all, RECIPIENTS, NOW)
    assert result.new_items == ()


def test_one_article_in_two_feeds_of_one_ingest_is_stored_once_with_both_outlets(
    store: Store,
) -> None:
    first = make_item(1, feed="heise")
    # The same article under a tracking-free mobile link, and its own GUID, in another feed.
    copy = Item(first.key, "spiegel", "spiegel-7", "https://m.example.org/1", *astuple(first)[4:])
    heise, spiegel = store.ingest_many([[first], [copy]], match_all, RECIPIENTS, NOW)
    assert heise.new_items == (first,) and spiegel.new_items == ()
    assert spiegel.matches == ()
    assert store.item_count() == 1
    entries = [
        entry for recipient, entry in store.pending_entries() if recipient == "a@example.org"
    ]
    assert len(entries) == 1
    assert entries[0].also_reported_by == (("spiegel", copy.url),)
    # Its GUID was recorded too: the copy is known on its own from now on.
    assert store.ingest([copy], match_all, RECIPIENTS, NOW).new_items == ()


def _stored_keys(store: Store) -> set[int]:
    with store.engine.connect() as connection:
        return set(connection.execute(sa.text("SELECT hash FROM item_keys")).scalars())


def test_a_new_database_groups_its_dedupe_keys_and_an_earlier_one_keeps_its_own(
    database_url: str,
) -> None:
    """A database that had no keys groups them by host and feed (stories.dedupe_keys); one
    whose keys were stored ungrouped, by an earlier version, keeps finding its items."""
    store = open_store(database_url)
    try:
        store.ingest([make_item(1)], match_all, RECIPIENTS, NOW)
        assert store.get_meta("dedupe_keys") == "grouped"
        assert _stored_keys(store) == set(dedupe_keys(make_item(1)))
    finally:
        store.close()
    earlier = open_store(database_url)
    try:  # the same database, as an earlier version left it: ungrouped keys, no scheme row
        with earlier.engine.begin() as connection:
            for table in ("deliveries", "matches", "story_bands", "story_members", "stories"):
                connection.execute(sa.text(f"DELETE FROM {table}"))
            connection.execute(sa.text("DELETE FROM item_sources"))
            connection.execute(sa.text("DELETE FROM item_keys"))
            connection.execute(sa.text("DELETE FROM items"))
            connection.execute(sa.text("DELETE FROM meta WHERE key = 'dedupe_keys'"))
        earlier._grouped = False  # what it did
        earlier.ingest([make_item(1)], match_all, RECIPIENTS, NOW)
        assert _stored_keys(earlier) == set(dedupe_keys(make_item(1), grouped=False))
    finally:
        earlier.close()
    upgraded = open_store(database_url)
    try:
        assert upgraded.ingest([make_item(1)], match_all, RECIPIENTS, NOW).new_items == ()
        assert upgraded.ingest([make_item(2)], match_all, RECIPIENTS, NOW).new_items
        assert upgraded.get_meta("dedupe_keys") is None
        ungrouped = {*dedupe_keys(make_item(1), False), *dedupe_keys(make_item(2), False)}
        assert _stored_keys(upgraded) == ungrouped
    finally:
        upgraded.close()


def test_a_rolled_back_first_ingest_leaves_the_key_scheme_undecided(store: Store) -> None:
    def failing(item: Item) -> list[Match]:
        raise RuntimeError("matcher bug")

    with pytest.raises(RuntimeError):
        store.ingest([make_item(1)], failing, RECIPIENTS, NOW)
    assert store.get_meta("dedupe_keys") is None and not _stored_keys(store)
    # On PostgreSQL the rollback also undid the creation of the session's staging tables:
    # the next ingest must create them again (store._forget_staging).
    store.ingest([make_item(1)], match_all, RECIPIENTS, NOW)
    assert store.get_meta("dedupe_keys") == "grouped"
    assert _stored_keys(store) == set(dedupe_keys(make_item(1)))


def test_a_changed_link_seen_by_two_feeds_of_one_ingest_stays_one_item(store: Store) -> None:
    first = make_item(1, feed="heise")
    store.ingest([first], match_all, RECIPIENTS, NOW)
    # heise moves the article to a new link (same GUID, new text); spiegel carries that link.
    moved = Item(
        "u:example.org/new",
        "heise",
        first.guid,
        "https://example.org/new",
        "Musk und xAI",
        "Neuer Text",
        NOW,
        "de",
    )
    copy = Item(
        "u:example.org/new",
        "spiegel",
        "s-1",
        "https://example.org/new",
        "Musk und xAI",
        "Anderer Text",
        NOW,
        "de",
    )
    heise, spiegel = store.ingest_many([[moved], [copy]], match_all, RECIPIENTS, NOW)
    assert heise.new_items == () and spiegel.new_items == ()
    assert store.item_count() == 1
    assert len(store.pending_entries()) == 2  # the first alert only, to 2 recipients


def test_find_items_by_id_key_url_or_title_words(store: Store) -> None:
    titles = ["Musk und xAI", "Wetter: Schnee in München", "ÜBERNAHME 100% sicher", "xAI wächst"]
    batch = [make_item(n, title=title) for n, title in enumerate(titles)]
    store.ingest(batch, lambda item: [], {}, NOW)
    ids = {item.title: item_id for item_id, item in store.find_items("", limit=10)}
    weather = ids["Wetter: Schnee in München"]

    def found(wanted: str, urls: tuple[str, ...] = ()) -> list[str]:
        return [item.title for _, item in store.find_items(wanted, urls)]

    assert found(str(weather)) == ["Wetter: Schnee in München"]
    assert found("u:example.org/1") == ["Wetter: Schnee in München"]
    assert found("https://x", ("https://example.org/1",)) == ["Wetter: Schnee in München"]
    assert found("schnee IN münchen") == ["Wetter: Schnee in München"]
    assert found("xai") == ["Musk und xAI", "xAI wächst"]
    assert found("100%") == ["ÜBERNAHME 100% sicher"]  # % is a character, not a wildcard
    assert found("0%") == ["ÜBERNAHME 100% sicher"] and found("_") == []
    assert found("ÜBERNAHME") == ["ÜBERNAHME 100% sicher"]
    assert found("Mondlandung") == []
