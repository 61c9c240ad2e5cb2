"""Page sites' turns, back-offs and robots.txt across workers (monitor/store/sites.py).

Run on SQLite and on PostgreSQL (the store fixture's database_url is parametrized)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest

from monitor.store import Store, open_store
from tests.store.common import NOW

SITE = "https://example.org"
GAP = timedelta(seconds=2)


@pytest.fixture
def other(database_url: str) -> Iterator[Store]:
    """A second worker's store on the same database."""
    store = open_store(database_url)
    yield store
    store.close()


def hours(n: float) -> timedelta:
    return timedelta(hours=n)


def test_one_turn_per_gap_and_the_loser_learns_when(store: Store, other: Store) -> None:
    first = store.take_turn(SITE, NOW, GAP)
    second = other.take_turn(SITE, NOW + timedelta(seconds=1), GAP)
    third = other.take_turn(SITE, NOW + GAP, GAP)
    assert first.taken and first.site.next_at == NOW + GAP
    assert not second.taken and second.site.next_at == NOW + GAP
    assert third.taken and third.site.next_at == NOW + 2 * GAP
    assert store.take_turn("https://other.example", NOW, GAP).taken  # per site


def test_of_workers_taking_a_turn_at_once_exactly_one_wins(database_url: str) -> None:
    stores = [open_store(database_url) for _ in range(4)]
    won: list[bool] = []
    start = threading.Barrier(len(stores))

    def take(store: Store) -> None:
        start.wait()
        won.append(store.take_turn(SITE, NOW, GAP).taken)

    threads = [threading.Thread(target=take, args=(s,)) for s in stores]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for store in stores:
            store.close()
    assert sorted(won) == [False, False, False, True]


def test_a_blocked_site_gives_no_turn_until_its_block_ends(store: Store, other: Store) -> None:
    store.block_site(SITE, "it answered HTTP 429", lambda _: hours(1), NOW)
    refused = other.take_turn(SITE, NOW + timedelta(minutes=59), GAP)
    assert not refused.taken and refused.site.is_blocked(NOW + timedelta(minutes=59))
    assert refused.site.blocked_why == "it answered HTTP 429"
    assert other.take_turn(SITE, NOW + hours(1), GAP).taken


def test_strikes_count_in_a_row_across_workers_and_the_later_block_stands(
    store: Store, other: Store
) -> None:
    def doubling(strikes: int) -> timedelta:
        return hours(2 ** (strikes - 1))

    first = store.block_site(SITE, "it answered HTTP 403", doubling, NOW)
    second = other.block_site(SITE, "it answered HTTP 403", doubling, NOW)
    assert (first.strikes, first.blocked_until) == (1, NOW + hours(1))
    assert (second.strikes, second.blocked_until) == (2, NOW + hours(2))
    shorter = store.block_site(SITE, "it answered HTTP 503", lambda _: hours(1), NOW)
    assert (shorter.strikes, shorter.blocked_until) == (3, NOW + hours(2))
    assert shorter.blocked_why == "it answered HTTP 403"  # the block that stands says why
    other.clear_strikes(SITE)
    assert store.page_site(SITE).strikes == 0
    assert store.page_site(SITE).blocked_until == NOW + hours(2)  # a reset lifts no block


def test_blocked_sites_lists_the_blocks_in_force(store: Store) -> None:
    store.block_site(SITE, "it answered HTTP 403", lambda _: hours(1), NOW)
    store.block_site("https://b.example", "it answered HTTP 429", lambda _: hours(3), NOW)
    assert [s.site for s in store.blocked_sites(NOW)] == ["https://b.example", SITE]
    assert [s.site for s in store.blocked_sites(NOW + hours(2))] == ["https://b.example"]


def test_robots_read_by_one_worker_is_the_others(store: Store, other: Store) -> None:
    assert other.page_site(SITE).robots is None
    store.save_robots(SITE, "User-agent: *\nDisallow: /private/\n", NOW)
    seen = other.page_site(SITE)
    assert (seen.robots, seen.robots_at) == ("User-agent: *\nDisallow: /private/\n", NOW)
    store.take_turn(SITE, NOW, GAP)
    assert other.page_site(SITE).robots_at == NOW  # a turn keeps it
