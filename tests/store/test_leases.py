"""Feed and host leases: claims, renewals, releases (monitor/store/leases.py).

Run on SQLite and on PostgreSQL (the store fixture's database_url is parametrized)."""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from monitor.models import FeedStatus, FeedUpdate
from monitor.store import Store, open_store
from monitor.store.leases import _claim_statement
from tests.store.common import NOW


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
    store.finish_poll("a", FeedUpdate(last_polled_at=NOW))
    store.release_host("heise.de", "w1", NOW, None)
    assert store.claim_feeds("w2", NOW, until, 5, force=True).feeds == []  # still w1's host
    store.finish_poll("b", FeedUpdate(last_polled_at=NOW))
    store.release_host("heise.de", "w1", NOW, None)
    claim = store.claim_feeds("w2", NOW, until, 5, force=True)
    assert len(claim.feeds) == 2
    # When w1 last asked the host comes with the claim: w2 keeps the minimum gap after it.
    assert claim.last_requests == {"heise.de": NOW}


def test_a_host_wide_retry_after_only_moves_later(store: Store) -> None:
    store.sync_feeds({"a": "https://heise.de/a"}, NOW)
    until = NOW + timedelta(minutes=10)
    store.claim_feeds("w1", NOW, until, 5, force=True)
    store.finish_poll("a", FeedUpdate(last_polled_at=NOW))
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
    store.finish_poll("later", FeedUpdate(next_poll_at=NOW + timedelta(hours=1)))
    store.finish_poll("gone", FeedUpdate(status=FeedStatus.DISABLED))
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
            [(f.name, FeedUpdate(next_poll_at=NOW)) for f in claim.feeds],
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
    store.finish_poll("a", FeedUpdate(last_polled_at=NOW))
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
        [(name, FeedUpdate(last_polled_at=NOW)) for name in "abc"],
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
