"""One store suite, run on SQLite and on PostgreSQL (database_url is parametrized)."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import astuple
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from monitor.models import FeedStatus, Hit, Item, Match, OutgoingMessage
from monitor.store import (
    ITEM_COLUMNS,
    DigestRun,
    Store,
    _bulk_insert,
    _claim_statement,
    _stamp,
    item_values,
    items,
    metadata,
    open_store,
)
from monitor.stories import dedupe_keys

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = open_store(database_url)
    yield store
    store.close()


def make_item(n: int, feed: str = "heise", title: str = "Musk und xAI") -> Item:
    return Item(
        f"u:example.org/{n}",
        feed,
        f"g{n}",
        f"https://example.org/{n}",
        title,
        # words of their own per n: different news, not one story (see tests/test_stories.py)
        f"Zusammenfassung {' '.join(f'n{n}w{k}' for k in range(12))} mit Umlauten: äöü",
        NOW - timedelta(hours=n),
        "de",
    )


def match_all(item: Item) -> list[Match]:
    return [Match("xAI", (Hit("xAI", "title", 9, 12),))]


RECIPIENTS = {"xAI": ("a@example.org", "b@example.org")}


def test_migrations_are_idempotent(database_url: str) -> None:
    open_store(database_url).close()
    second = open_store(database_url)
    assert second.ping()
    second.close()


def test_the_migrations_build_the_schema_the_code_declares(database_url: str) -> None:
    # Alembic's autogenerate comparison: a table, column, index or type that a migration
    # forgot (or the declaration in store.py) shows up as a difference.
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    store = open_store(database_url)
    try:
        with store.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
    finally:
        store.close()


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


def test_claim_is_exclusive_and_mark_sent_finishes(store: Store) -> None:
    store.ingest([make_item(1)], match_all, RECIPIENTS, NOW)
    ids = [e.delivery_ids[0] for r, e in store.pending_entries() if r == "a@example.org"]
    first = OutgoingMessage("<m1@x>", "a@example.org", b"Subject: one\r\n\r\nbody")
    second = OutgoingMessage("<m2@x>", "a@example.org", b"Subject: two\r\n\r\nbody")
    assert store.claim(first, ids, NOW)
    assert not store.claim(second, ids, NOW)  # already claimed: nothing stored
    assert [m.message_id for m in store.ready_messages(NOW)] == ["<m1@x>"]
    assert store.ready_messages(NOW)[0].mime == first.mime
    store.mark_sent("<m1@x>", NOW)
    assert store.ready_messages(NOW) == []
    outbox = store.outbox()
    assert (outbox.pending, outbox.ready, outbox.dead) == (1, 0, 0)  # b@ still pending


def test_rows_thought_new_that_another_worker_stored_meanwhile_are_skipped(store: Store) -> None:
    # On PostgreSQL, rows the caller found absent go in by one COPY; if another worker
    # stored one of them meanwhile, the COPY is undone and the staging path inserts the rest.
    def rows(tx: Any, *numbers: int) -> list[tuple[Any, ...]]:
        stamp = _stamp(tx, NOW)
        return [item_values(make_item(n), stamp, stamp) for n in numbers]

    with store.engine.begin() as tx:
        _bulk_insert(tx, items, ITEM_COLUMNS, rows(tx, 2), new=True)
    with store.engine.begin() as tx:
        # Its savepoint stays open; undoing the next COPY must not undo this one.
        _bulk_insert(tx, items, ITEM_COLUMNS, rows(tx, 5), new=True)
        inserted = _bulk_insert(
            tx, items, ITEM_COLUMNS, rows(tx, 1, 2, 3), returning=("id", "key"), new=True
        )
        _bulk_insert(tx, items, ITEM_COLUMNS, rows(tx, 4), new=True)  # the transaction goes on
    assert sorted(key for _, key in inserted) == ["u:example.org/1", "u:example.org/3"]
    with store.engine.connect() as connection:
        stored = dict(connection.execute(sa.select(items.c.key, items.c.id)).all())
    assert sorted(stored) == [f"u:example.org/{n}" for n in (1, 2, 3, 4, 5)]
    assert {key: stored[key] for _, key in inserted} == {key: i for i, key in inserted}


def test_marking_a_message_finds_its_deliveries_by_index(store: Store) -> None:
    # mark_sent / mark_dead update the deliveries a message carries. Without an index on
    # deliveries.message_id each send read every delivery ever made.
    update = "UPDATE deliveries SET status = 'sent' WHERE message_id = '<m@x>'"
    with store.engine.begin() as connection:
        if store.is_sqlite:
            plan = " ".join(
                str(row[-1]) for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {update}")
            )
        else:  # the table is tiny: forbid the scan, so only an index can avoid it
            connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = " ".join(str(row[0]) for row in connection.exec_driver_sql(f"EXPLAIN {update}"))
    assert "ix_deliveries_message_id" in plan, plan


def test_retry_then_dead_letter(store: Store) -> None:
    store.ingest([make_item(1)], match_all, {"xAI": ("a@example.org",)}, NOW)
    ids = [e.delivery_ids[0] for _, e in store.pending_entries()]
    store.claim(OutgoingMessage("<m@x>", "a@example.org", b"x"), ids, NOW)
    store.mark_retry("<m@x>", "451 try later", NOW, lambda attempts: timedelta(minutes=attempts))
    assert store.ready_messages(NOW) == []
    assert len(store.ready_messages(NOW + timedelta(minutes=1))) == 1
    store.mark_dead("<m@x>", "550 no such user", NOW)
    assert store.outbox().dead == 1
    assert store.dead_letters() == [("a@example.org", "550 no such user")]


def test_feed_sync_and_due(store: Store) -> None:
    store.sync_feeds({"heise": "https://heise.de/a", "spiegel": "https://spiegel.de/a"}, NOW)
    assert [f.name for f in store.due_feeds(["heise", "spiegel"], NOW)] == ["heise", "spiegel"]
    store.update_feed("heise", next_poll_at=NOW + timedelta(minutes=5), etag='"v1"')
    assert [f.name for f in store.due_feeds(["heise", "spiegel"], NOW)] == ["spiegel"]
    store.sync_feeds({"heise": "https://heise.de/b"}, NOW)  # URL changed: validators reset
    state = store.feed_state("heise")
    assert state is not None and state.url == "https://heise.de/b" and state.etag is None


def test_digest_runs_make_one_claimant_per_period(store: Store) -> None:
    store.ingest([make_item(1)], match_all, {"xAI": ("a@example.org",)}, NOW)
    ids = [e.delivery_ids[0] for _, e in store.pending_entries()]
    run = DigestRun("xAI", "a@example.org", NOW)
    first = OutgoingMessage("<d1@x>", "a@example.org", b"one")
    second = OutgoingMessage("<d2@x>", "a@example.org", b"two")
    assert store.claim(first, ids, NOW, [run])
    assert not store.claim(second, [], NOW, [run])  # same period: another worker lost
    assert [m.message_id for m in store.ready_messages(NOW)] == ["<d1@x>"]
    assert store.last_runs() == {("xAI", "a@example.org"): NOW}
    assert store.claim(None, [], NOW, [DigestRun("xAI", "a@example.org", NOW + timedelta(days=1))])
    assert store.last_runs()[("xAI", "a@example.org")] == NOW + timedelta(days=1)


def test_send_lease_excludes_other_workers(store: Store) -> None:
    store.claim(OutgoingMessage("<m@x>", "a@example.org", b"x"), [], NOW)
    later = NOW + timedelta(minutes=10)
    assert store.lease_message("<m@x>", "worker-1", NOW, later)
    assert not store.lease_message("<m@x>", "worker-2", NOW, later)
    assert store.ready_messages(NOW) == []  # leased: nobody else picks it up
    assert store.lease_message("<m@x>", "worker-2", later, later + timedelta(minutes=10))
    store.mark_sent("<m@x>", later)
    assert not store.lease_message("<m@x>", "worker-3", later, later)


def test_pending_since_and_meta(store: Store) -> None:
    store.ingest([make_item(1)], match_all, {"xAI": ("a@example.org",)}, NOW)
    assert store.pending_since() == {("xAI", "a@example.org"): NOW}
    store.set_meta("k", "v")
    store.set_meta("k", "w")
    assert store.get_meta("k") == "w"


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


def test_a_host_stays_leased_while_another_of_its_feeds_is_claimed(store: Store) -> None:
    # The poller's count of a host's feeds in flight can reach 0 just before it counts a new
    # claim of the same host; the release must then keep the host leased.
    urls = {"a": "https://heise.de/a", "b": "https://heise.de/b"}
    store.sync_feeds(urls, NOW)
    until = NOW + timedelta(minutes=10)
    assert [f.name for f in store.claim_feeds("w1", NOW, until, 1, ["a"], force=True).feeds] == [
        "a"
    ]
    assert [f.name for f in store.claim_feeds("w1", NOW, until, 1, ["b"], force=True).feeds] == [
        "b"
    ]
    store.finish_poll("a", {"last_polled_at": NOW})
    store.release_host("heise.de", "w1", NOW, None)
    assert store.claim_feeds("w2", NOW, until, 5, force=True).feeds == []  # still w1's host
    store.finish_poll("b", {"last_polled_at": NOW})
    store.release_host("heise.de", "w1", NOW, None)
    claim = store.claim_feeds("w2", NOW, until, 5, force=True)
    assert len(claim.feeds) == 2
    # When w1 last asked the host comes with the claim: w2 keeps the minimum gap after it.
    assert claim.last_requests == {"heise.de": NOW}


def test_a_host_wide_retry_after_only_moves_later(store: Store) -> None:
    store.sync_feeds({"a": "https://heise.de/a"}, NOW)
    until = NOW + timedelta(minutes=10)
    store.claim_feeds("w1", NOW, until, 5, force=True)
    store.finish_poll("a", {"last_polled_at": NOW})
    store.release_host("heise.de", "w1", NOW, NOW + timedelta(hours=1))
    # A later release without a block (another feed of the host, polled meanwhile) and one
    # with an earlier block keep the hour.
    store.release_host("heise.de", "w1", NOW, None)
    store.release_host("heise.de", "w1", NOW, NOW + timedelta(minutes=5))
    assert store.claim_feeds("w2", NOW + timedelta(minutes=59), until, 5, force=True).feeds == []
    later = NOW + timedelta(hours=1, minutes=1)
    assert len(store.claim_feeds("w2", later, later + timedelta(minutes=10), 5).feeds) == 1


def test_giving_back_a_claim_leaves_another_workers_lease_alone(store: Store) -> None:
    store.sync_feeds({"a": "https://heise.de/a", "b": "https://golem.de/b"}, NOW)
    until = NOW + timedelta(minutes=10)
    assert len(store.claim_feeds("w1", NOW, until, 1, ["a"], force=True).feeds) == 1
    assert len(store.claim_feeds("w2", NOW, until, 1, ["b"], force=True).feeds) == 1
    store.give_back("w1", ["a", "b"], ["heise.de", "golem.de"], NOW)
    # "a" and its host are free again; "b" and its host are still w2's.
    assert [f.name for f in store.claim_feeds("w3", NOW, until, 5, force=True).feeds] == ["a"]


def test_a_claim_by_name_takes_exactly_the_named_feeds_whatever_their_names(
    store: Store,
) -> None:
    # Names go to the database as one array literal (PostgreSQL) or JSON text (SQLite):
    # quotes, backslashes, commas, braces and "NULL" must arrive as written.
    names = ['say "hi"', "back\\slash", "a,b", "{braces}", "NULL", "Ümläut ✓", "it's"]
    urls = {name: f"https://h{n}.example.org/feed" for n, name in enumerate(names)}
    store.sync_feeds({**urls, "other": "https://other.example.org/feed"}, NOW)
    until = NOW + timedelta(minutes=10)
    claim = store.claim_feeds("w1", NOW, until, 50, names, force=True)
    assert sorted(f.name for f in claim.feeds) == sorted(names)
    assert [f.name for f in store.claim_feeds("w2", NOW, until, 50).feeds] == ["other"]


def test_a_claim_takes_due_enabled_feeds_unless_a_user_names_them(store: Store) -> None:
    store.sync_feeds(
        {
            "due": "https://a.example.org/f",
            "later": "https://b.example.org/f",
            "gone": "https://c.example.org/f",
        },
        NOW,
    )
    store.finish_poll("later", {"next_poll_at": NOW + timedelta(hours=1)})
    store.finish_poll("gone", {"status": FeedStatus.DISABLED.value})
    until = NOW + timedelta(minutes=10)
    assert [f.name for f in store.claim_feeds("w1", NOW, until, 50).feeds] == ["due"]
    store.give_back("w1", ["due"], ["a.example.org"], NOW)
    forced = store.claim_feeds("w1", NOW, until, 50, force=True).feeds
    assert sorted(f.name for f in forced) == ["due", "later"]  # forced, but not the disabled
    store.give_back("w1", ["due", "later"], ["a.example.org", "b.example.org"], NOW)
    named = store.claim_feeds("w1", NOW, until, 50, ["gone", "due"], force=True).feeds
    assert sorted(f.name for f in named) == ["due", "gone"]


def test_a_claim_takes_only_the_feeds_the_configuration_polls(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    urls = {name: f"https://{name}.example.org/f" for name in ("kept", "off", "dropped")}
    store.sync_feeds(urls, NOW, polled={"kept", "dropped"})
    until = NOW + timedelta(minutes=10)

    def claimed(**kwargs: Any) -> list[str]:
        names = [f.name for f in store.claim_feeds("w1", NOW, until, 50, **kwargs).feeds]
        store.give_back("w1", names, [f"{name}.example.org" for name in names], NOW)
        return sorted(names)

    assert claimed() == ["dropped", "kept"]
    with caplog.at_level(logging.INFO, logger="monitor.store"):
        store.sync_feeds({"kept": urls["kept"], "off": urls["off"]}, NOW, polled={"kept"})
    assert "feeds no longer polled: dropped" in caplog.text
    assert claimed() == ["kept"]
    # Switched on again, and a user naming a feed polls it whatever the configuration says.
    store.sync_feeds(urls, NOW)
    assert claimed() == ["dropped", "kept", "off"]
    store.sync_feeds(urls, NOW, polled=set())
    assert claimed(names=["off"]) == ["off"]
    assert store.feed_state("dropped") is not None  # its history stays


def test_a_prepared_claim_still_reads_the_due_index(postgres_url: str) -> None:
    # psycopg prepares a statement on its fifth run, and PostgreSQL may then plan it once for
    # any parameters. With the disabled status as a parameter, that generic plan guessed
    # that almost no feed qualifies (every feed has the same status) and read and sorted
    # every feed on each claim instead of the first due ones from ix_feeds_due.
    from psycopg import sql

    store = open_store(postgres_url)
    try:
        urls = {f"feed-{n:04d}": f"https://h{n % 50}.example.org/{n}.xml" for n in range(600)}
        store.sync_feeds(urls, NOW - timedelta(hours=1))
        with store.engine.connect() as connection:
            connection.execute(sa.text("ANALYZE feeds"))
            connection.execute(sa.text("ANALYZE hosts"))
            connection.execute(sa.text("SET plan_cache_mode = force_generic_plan"))
            compiled = _claim_statement(False, False, False).compile(dialect=connection.dialect)
            names: list[str] = []  # pyformat parameters -> $1, $2, ... in order of appearance

            def numbered(found: re.Match[str]) -> str:
                if found.group(1) not in names:
                    names.append(found.group(1))
                return f"${names.index(found.group(1)) + 1}"

            prepared = re.sub(r"%\((\w+)\)s", numbered, str(compiled))
            connection.exec_driver_sql(f"PREPARE claim AS {prepared}")
            now = NOW.replace(tzinfo=None)
            given = {**compiled.params, "now": now, "lease_until": now + timedelta(minutes=10)}
            given |= {"owner": "w1", "cycle": "c1", "limit": 20}
            driver = connection.connection.driver_connection
            arguments = ", ".join(sql.Literal(given[n]).as_string(driver) for n in names)
            explained = connection.exec_driver_sql(f"EXPLAIN EXECUTE claim({arguments})")
            plan = "\n".join(row[0] for row in explained)
            connection.rollback()
    finally:
        store.close()
    picking = plan.split("CTE leased")[0]  # the plan of the CTE that picks the due feeds
    assert "ix_feeds_due" in picking, plan
    assert "Seq Scan on feeds" not in picking, plan


def test_one_cycle_claims_each_feed_once(store: Store) -> None:
    store.sync_feeds({name: f"https://{name}.example.org/f" for name in "abc"}, NOW)
    until = NOW + timedelta(minutes=10)
    taken = []
    for _ in range(4):  # still due after each poll, as a failing feed with a short backoff
        claim = store.claim_feeds("w1", NOW, until, 2, force=True, cycle="one")
        taken += [f.name for f in claim.feeds]
        store.finish_polls(
            [(f.name, {"next_poll_at": NOW}) for f in claim.feeds],
            [(host, "w1", NOW, None) for host in claim.last_requests],
        )
    assert sorted(taken) == ["a", "b", "c"]
    again = store.claim_feeds("w1", NOW, until, 5, cycle="two").feeds
    assert sorted(f.name for f in again) == ["a", "b", "c"]


def test_renewing_leases_extends_only_the_owners_own(store: Store) -> None:
    store.sync_feeds({"a": "https://heise.de/a", "b": "https://golem.de/b"}, NOW)
    until = NOW + timedelta(minutes=1)
    store.claim_feeds("w1", NOW, until, 1, ["a"], force=True)
    store.claim_feeds("w2", NOW, until, 1, ["b"], force=True)
    store.renew_leases("w1", ["a", "b"], ["heise.de", "golem.de"], NOW + timedelta(hours=1))
    # Two minutes on, w2's lease of "b" (and its host) has ended; w1's of "a" has not.
    later = NOW + timedelta(minutes=2)
    taken = store.claim_feeds("w3", later, later + timedelta(minutes=1), 5, force=True).feeds
    assert [f.name for f in taken] == ["b"]


def test_a_repeated_release_never_moves_the_last_request_back(store: Store) -> None:
    # On PostgreSQL a claim's releases commit before the claim; if the claim fails, the
    # poller releases the same hosts again later, maybe after another worker asked them.
    store.sync_feeds({"a": "https://heise.de/a"}, NOW)
    store.release_host("heise.de", "w1", NOW + timedelta(seconds=1), None)
    store.claim_feeds("w2", NOW, NOW + timedelta(minutes=10), 5, force=True)
    store.finish_poll("a", {"last_polled_at": NOW})
    store.release_host("heise.de", "w2", NOW + timedelta(seconds=10), None)
    store.release_host("heise.de", "w1", NOW + timedelta(seconds=1), None)  # the repeat
    claim = store.claim_feeds("w3", NOW, NOW + timedelta(minutes=10), 5, force=True)
    assert claim.last_requests == {"heise.de": NOW + timedelta(seconds=10)}


def test_hosts_released_together_each_keep_their_own_outcome(store: Store) -> None:
    # One statement for all of them on PostgreSQL: each row gets its own values, a host
    # released twice keeps the later request and block, another worker's host is untouched.
    hosts = {"a": "heise.de", "b": "golem.de", "c": "t3n.de", "d": "spiegel.de"}
    store.sync_feeds({name: f"https://{host}/{name}" for name, host in hosts.items()}, NOW)
    until = NOW + timedelta(minutes=10)
    assert len(store.claim_feeds("w1", NOW, until, 5, ["a", "b", "c"], force=True).feeds) == 3
    assert len(store.claim_feeds("w2", NOW, until, 5, ["d"], force=True).feeds) == 1
    second = timedelta(seconds=1)
    store.finish_polls(
        [(name, {"last_polled_at": NOW}) for name in "abc"],
        [
            ("heise.de", "w1", NOW + 5 * second, NOW + timedelta(hours=1)),
            ("golem.de", "w1", NOW + 2 * second, None),
            ("heise.de", "w1", NOW + second, None),
            ("spiegel.de", "w1", NOW + 3 * second, None),  # not w1's
        ],
    )
    claim = store.claim_feeds("w3", NOW, until, 5, force=True)
    assert [f.name for f in claim.feeds] == ["b"]  # heise blocked, t3n w1's, spiegel w2's
    assert claim.last_requests == {"golem.de": NOW + 2 * second}
    later = NOW + timedelta(hours=1, minutes=1)
    claim = store.claim_feeds("w3", later, later + timedelta(minutes=10), 5, ["a"], force=True)
    assert claim.last_requests == {"heise.de": NOW + 5 * second}


def test_a_claim_of_a_never_asked_host_says_so(store: Store) -> None:
    store.sync_feeds({"a": "https://heise.de/a"}, NOW)
    claim = store.claim_feeds("w1", NOW, NOW + timedelta(minutes=10), 5, force=True)
    assert [f.name for f in claim.feeds] == ["a"]
    assert claim.last_requests == {"heise.de": None}


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


def test_sqlite_readers_do_not_wait_for_the_writer(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/monitor.db")
    store.sync_feeds({"a": "https://a.example/feed"}, NOW)
    holding, done = threading.Event(), threading.Event()

    def writer() -> None:  # holds the write lock until the reads below are done
        with store._tx() as tx:
            tx.execute(sa.text("UPDATE feeds SET etag = 'changing'"))
            holding.set()
            done.wait(60)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert holding.wait(10)
        # Were reads to wait for the lock, they would fail after the 30 s busy timeout.
        assert [(f.name, f.etag) for f in store.feed_states()] == [("a", None)]
        assert store.get_meta("first_poll_done") is None
        assert store.pending_entries() == []
    finally:
        done.set()
        thread.join()
        store.close()


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


def test_a_schema_a_newer_monitor_migrated_is_refused_in_one_line(database_url: str) -> None:
    """Every command of an older monitor (a rolling upgrade) ended in a traceback."""
    from monitor.errors import UnavailableError

    open_store(database_url).close()
    engine = sa.create_engine(database_url)
    with engine.begin() as connection:
        # A revision this monitor does not have, beside its own heads.
        connection.execute(sa.text("INSERT INTO alembic_version VALUES ('f00dfeed')"))
    engine.dispose()
    with pytest.raises(UnavailableError, match="schema is newer than this monitor knows"):
        open_store(database_url)


def test_recipients_stored_with_an_upper_case_domain_are_the_configured_mailbox(
    database_url: str,
) -> None:
    """The config writes domains in lower case now (RFC 5321: one mailbox); what an older
    version stored under another spelling must not be left behind, never sent, and the one
    person who got two copies gets one."""
    from monitor.store import migrate

    store = open_store(database_url)
    try:
        twice = {"xAI": ("a@example.org", "a@EXAMPLE.org", "b@Example.ORG")}
        store.ingest([make_item(1)], match_all, twice, NOW)
        store.claim(None, [], NOW, [DigestRun("xAI", "b@Example.ORG", NOW)])
        with store.engine.begin() as connection:  # as before migration 0008_i28
            connection.execute(
                sa.text("DELETE FROM alembic_version WHERE version_num = :r"),
                {"r": "0008_i28_recipient_domains"},
            )
        migrate(store.engine)
        pending = sorted(recipient for recipient, _ in store.pending_entries())
        assert pending == ["a@example.org", "b@example.org"]
        assert ("xAI", "b@example.org") in store.last_runs()
    finally:
        store.close()
