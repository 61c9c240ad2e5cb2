"""Claims: what leasing the next window of due feeds costs as the number of feeds grows.

A worker claims `concurrency` (20) feeds at a time, so a cycle of N feeds makes N/20 claims,
and a steady state claims every few seconds whatever is due. For 600, 10,000 and 60,000
feeds (one host per 5 feeds, as across real outlets) on SQLite and PostgreSQL:
- a cycle: every feed due, claims of 20 until 40 claims are done (30 at 600 feeds; past the
  point where psycopg prepares the statement and PostgreSQL may switch to a generic plan),
  each claim's feeds then finished as polled, as the poller does;
- the steady state: 10 feeds due among all the others, claimed in one claim;
- a cycle over the smallest size's feeds when the largest size's were configured once and
  the rest removed since (they stay due, and first in due order, for ever).
Baseline, same run and connection pool: a `SELECT 1` round trip (the floor of any claim).
A claim should cost about the same at 600 feeds as at 60,000. Needs
MONITOR_TEST_POSTGRES_URL for PostgreSQL; prints 'skipped' otherwise.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory

import sqlalchemy as sa
from common import postgres_schema

from monitor.models import FeedUpdate
from monitor.store import Store, open_store

SIZES = [int(n) for n in os.environ.get("BENCH_FEEDS", "600,10000,60000").split(",")]
CLAIMS = 40
WINDOW = 20
FEEDS_PER_HOST = 5
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def milliseconds(seconds: list[float]) -> str:
    median = statistics.median(seconds) * 1000
    worst = max(seconds) * 1000
    return f"median {median:7.2f} ms, worst {worst:8.2f} ms"


def filled(url: str, count: int, polled: int | None = None) -> Store:
    """`count` feeds, all due; only the last `polled` in the configuration, if given (the
    others were removed from it and keep their old next poll)."""
    store = open_store(url)
    hosts = max(1, count // FEEDS_PER_HOST)
    urls = {f"feed-{n:06d}": f"https://h{n % hosts}.example.org/{n}.xml" for n in range(count)}
    store.sync_feeds(urls, NOW - timedelta(hours=1))
    if polled is not None:
        store.sync_feeds(dict(list(urls.items())[-polled:]), NOW)  # the newest stay
    with store.engine.begin() as connection:
        connection.execute(sa.text("ANALYZE"))
    return store


def cycle(store: Store, count: int) -> list[float]:
    """Up to CLAIMS claims of one cycle, each window finished as polled."""
    spent, run, until = [], uuid.uuid4().hex, NOW + timedelta(minutes=5)
    for _ in range(min(CLAIMS, count // WINDOW)):  # every claim finds a full window
        started = time.perf_counter()
        claim = store.claim_feeds("w1", NOW, until, WINDOW, cycle=run)
        spent.append(time.perf_counter() - started)
        later = FeedUpdate(next_poll_at=NOW + timedelta(hours=1), last_polled_at=NOW)
        store.finish_polls(
            [(feed.name, later) for feed in claim.feeds],
            [(host, "w1", NOW, None) for host in claim.last_requests],
        )
    return spent


def steady(store: Store, count: int) -> list[float]:
    """Ten due feeds among `count`, claimed at once, ten times over."""
    spent, until = [], NOW + timedelta(minutes=5)
    with store.engine.begin() as connection:  # everything polled: due in an hour
        connection.execute(sa.text("UPDATE feeds SET next_poll_at = :at"), {"at": NOW + 2 * HOUR})
    for round_ in range(10):
        due = [f"feed-{(round_ * 10 + k) * (count // 100):06d}" for k in range(10)]
        for name in due:
            store.update_feed(name, next_poll_at=NOW - timedelta(minutes=1))
        started = time.perf_counter()
        claim = store.claim_feeds("w1", NOW, until, WINDOW)
        spent.append(time.perf_counter() - started)
        assert sorted(f.name for f in claim.feeds) == sorted(due), "claimed the wrong feeds"
        store.finish_polls(
            [(feed.name, {"next_poll_at": NOW + 2 * HOUR}) for feed in claim.feeds],
            [(host, "w1", NOW, None) for host in claim.last_requests],
        )
    return spent


def round_trips(store: Store) -> list[float]:
    spent = []
    for _ in range(CLAIMS):
        started = time.perf_counter()
        store.ping()
        spent.append(time.perf_counter() - started)
    return spent


def bench(backend: str, urls: Callable[[], str]) -> None:
    for count in SIZES:
        store = filled(urls(), count)
        try:
            floor = statistics.median(round_trips(store)) * 1000
            print(
                f"{backend:10} {count:6,} feeds | cycle claim {milliseconds(cycle(store, count))}"
                f" | steady claim {milliseconds(steady(store, count))}"
                f" | baseline SELECT 1 {floor:5.2f} ms",
                flush=True,
            )
        finally:
            store.close()
    # Feeds removed from the configuration stay due forever, first in due order: the claim
    # must not step over them (its index holds only the polled feeds).
    count, polled = max(SIZES), min(SIZES)
    store = filled(urls(), count, polled)
    try:
        print(
            f"{backend:10} {count:6,} feeds, {count - polled:,} of them removed from the config"
            f" | cycle claim {milliseconds(cycle(store, polled))}",
            flush=True,
        )
    finally:
        store.close()


def main() -> int:
    print(f"claims of {WINDOW} feeds, {CLAIMS} per cycle; one host per {FEEDS_PER_HOST} feeds")
    with TemporaryDirectory() as directory:
        counter = iter(range(100))
        bench("sqlite", lambda: f"sqlite:///{Path(directory) / f'{next(counter)}.db'}")
    postgres = os.environ.get("MONITOR_TEST_POSTGRES_URL")
    if postgres:
        with postgres_schema(postgres) as fresh:
            bench("postgresql", fresh)
    else:
        print("postgresql skipped: MONITOR_TEST_POSTGRES_URL is not set")
    return 0


if __name__ == "__main__":
    sys.exit(main())
