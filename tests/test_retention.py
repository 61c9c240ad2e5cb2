"""Retention on SQLite and PostgreSQL: old items go, their keys stay, nothing re-alerts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from monitor.cli import main
from monitor.config import parse_config
from monitor.errors import ConfigError
from monitor.models import OutgoingMessage
from monitor.retention import prune_store
from monitor.store import Store, open_store
from tests.test_stories import BABUSCHKIN, NOW, RECIPIENTS, make_item, watch_xai

CONFIG = parse_config(
    """
feeds: [{name: heise, url: "https://heise.example/rss"}]
watchlists: [{name: xAI, terms: [xAI], recipients: [a@example.org]}]
"""
)
DAY = timedelta(days=1)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = open_store(database_url)
    yield store
    store.close()


def send_everything(store: Store) -> None:
    ids = [i for _, entry in store.pending_entries() for i in entry.delivery_ids]
    message = OutgoingMessage("<sent@test>", "a@example.org", b"x")
    assert store.claim_digest(message, ids, NOW)
    store.mark_sent(message.message_id, NOW)


def count(store: Store, table: str) -> int:
    with store.engine.connect() as connection:
        return int(connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_old_items_are_deleted_but_never_alert_again(store: Store) -> None:
    item = make_item("1", feed="n-tv", **BABUSCHKIN["a"])
    store.ingest([item], watch_xai, RECIPIENTS, NOW)
    send_everything(store)
    report = prune_store(store, CONFIG, NOW + 31 * DAY)
    assert (report.items, report.keys, report.messages) == (1, 0, 1)
    assert store.item_count() == 0
    assert count(store, "item_keys") == 2  # URL and GUID tombstones
    assert count(store, "story_bands") == count(store, "stories") == 0
    # the same item (re-dated), and its URL in another feed, are still known
    later = NOW + 40 * DAY
    again = store.ingest([replace(item, published=later)], watch_xai, RECIPIENTS, later)
    elsewhere = replace(item, feed="stern", guid="stern-1")
    assert again.new_items == ()
    assert store.ingest([elsewhere], watch_xai, RECIPIENTS, later).new_items == ()
    assert store.pending_entries() == []


def test_items_with_pending_deliveries_are_kept(store: Store) -> None:
    store.ingest([make_item("1", title="xAI")], watch_xai, RECIPIENTS, NOW)
    report = prune_store(store, CONFIG, NOW + 31 * DAY)
    assert report.items == 0 and store.item_count() == 1
    assert len(store.pending_entries()) == 2


def test_tombstones_expire_a_year_after_they_were_last_seen(store: Store) -> None:
    item = make_item("1", title="xAI")
    store.ingest([item], watch_xai, {}, NOW)
    store.ingest([item], watch_xai, {}, NOW + 200 * DAY)  # still in the feed: refreshed
    assert prune_store(store, CONFIG, NOW + 370 * DAY).keys == 0
    report = prune_store(store, CONFIG, NOW + 200 * DAY + 366 * DAY)
    assert report.keys == 2 and count(store, "item_keys") == 0


def test_bands_are_dropped_after_the_clustering_window(store: Store) -> None:
    store.ingest([make_item("1", **BABUSCHKIN["a"])], watch_xai, {}, NOW)
    assert count(store, "story_bands") > 0
    assert prune_store(store, CONFIG, NOW + 2 * DAY).bands == 0
    assert prune_store(store, CONFIG, NOW + 4 * DAY).bands > 0
    assert count(store, "story_bands") == 0 and store.item_count() == 1


def test_keys_must_outlive_items() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(
            """
feeds: [{name: heise, url: "https://heise.example/rss"}]
watchlists: [{name: xAI, terms: [xAI], recipients: [a@example.org]}]
retention: {items: 30d, keys: 7d}
"""
        )
    assert "retention: keys must be kept at least as long as items" in str(raised.value.problems)


def test_prune_command(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(
        {
            "feeds": [{"name": "heise", "url": "https://heise.example/rss"}],
            "watchlists": [{"name": "xAI", "terms": ["xAI"], "recipients": ["a@example.org"]}],
            "retention": {"items": "30d", "keys": "365d"},
        }
    )
    assert main(["--config", str(path), "prune"]) == 1  # nothing stored: no database made
    assert "there is no database at " in capsys.readouterr().err
    open_store(f"sqlite:///{path.parent / 'monitor.db'}").close()
    assert main(["--config", str(path), "prune"]) == 0
    assert capsys.readouterr().out.startswith("pruned 0 items first seen before ")


def test_dead_letters_old_digest_periods_and_crashed_workers_do_not_pile_up(
    store: Store,
) -> None:
    """A dead letter outlived its items (retry-dead would have sent a digest months old),
    digest_runs gained a row per message for ever (read in full every digest tick), and
    every crashed worker left its row."""
    from monitor.store import DigestRun, WorkerInfo

    store.ingest([make_item("1", title="xAI")], watch_xai, RECIPIENTS, NOW)
    ids = [i for _, entry in store.pending_entries() for i in entry.delivery_ids]
    refused = OutgoingMessage("<dead@test>", "a@example.org", b"x")
    assert store.claim_digest(refused, ids, NOW)
    store.mark_dead(refused.message_id, "550 no such user", NOW)
    for days in (0, 1, 2):  # three periods of one pair, one of another
        assert store.claim_digest(
            None, [], NOW, [DigestRun("xAI", "a@example.org", NOW + days * DAY)]
        )
    assert store.claim_digest(None, [], NOW, [DigestRun("xAI", "b@example.org", NOW)])
    store.heartbeat(WorkerInfo("crashed", "h", 1, "c", NOW), NOW)
    store.heartbeat(WorkerInfo("alive", "h", 2, "c", NOW + 40 * DAY), NOW + 40 * DAY)

    report = prune_store(store, CONFIG, NOW + 40 * DAY)
    assert report.items == 1 and report.messages == 1 and report.digest_runs == 2
    assert store.dead_letters() == [] and count(store, "messages") == 0
    assert store.last_runs() == {
        ("xAI", "a@example.org"): NOW + 2 * DAY,  # the latest of each pair stays
        ("xAI", "b@example.org"): NOW,
    }
    assert [w.worker_id for w in store.live_workers(NOW - DAY)] == ["alive"]
