"""Spikes: what judging every watchlist costs per poll cycle, and what the digest's charts weigh.

1,000 watchlists, 90 days of history at 50,000 stories a day (one in five stories carried
by two outlets, so 60,000 items and matches a day). The 88 complete days before the window
sit in story_days, as the daemon leaves them (each day is counted once, an hour after it
ends: measured here too, "count a day"); the last two days are real items, stories and
matches, which the window is counted from. One watchlist in a hundred went quiet two days
ago (its last match is looked up). A cycle is Store.spike_histories plus every verdict.
Target: <= 200 ms per cycle on SQLite and on PostgreSQL. The window query's plan is printed.

Then a digest of 10 watchlists with 5 entries each, with and without their 14-day charts:
target < 100 KB. Needs MONITOR_TEST_POSTGRES_URL for PostgreSQL; prints 'skipped' otherwise.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from common import postgres_schema

from monitor.digest import DigestSettings, Renderer
from monitor.models import DigestEntry, Item
from monitor.spike_alerts import histories
from monitor.spikes import DAY, PRESETS, Sensitivity, silence, spike
from monitor.store import Store, open_store
from monitor.store.schema import (
    items,
    matches,
    meta,
    spike_watchlists,
    stories,
    story_days,
    story_members,
)
from monitor.store.spikes import COUNTED_THROUGH, _count, _matches_since, _stories_since

WATCHLISTS = int(os.environ.get("BENCH_WATCHLISTS", "1000"))
STORIES_PER_DAY = int(os.environ.get("BENCH_STORIES", "50000"))
DAYS = 90
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
MIDNIGHT = NOW.replace(hour=0)
CYCLES = 20
SETTINGS = PRESETS[Sensitivity.BALANCED]


def name(n: int) -> str:
    return f"watchlist-{n:04d}"


def fill(store: Store) -> None:
    """The counted days, and the last two days as items, stories and matches."""
    with store.engine.begin() as tx:
        per_list = STORIES_PER_DAY // WATCHLISTS
        first = MIDNIGHT - DAYS * DAY
        tx.execute(
            spike_watchlists.insert(),
            [{"watchlist": name(w), "first_match_at": first} for w in range(WATCHLISTS)],
        )
        counted = (MIDNIGHT - 2 * DAY).date() - timedelta(days=1)
        rows = [
            {"day": day, "watchlist": name(w), "stories": per_list + (w + k) % 7}
            for k in range(DAYS - 2)
            for w in range(WATCHLISTS)
            if (day := (first + k * DAY).date()) <= counted
        ]
        for start in range(0, len(rows), 20000):
            tx.execute(story_days.insert(), rows[start : start + 20000])
        tx.execute(meta.insert().values(key=COUNTED_THROUGH, value=counted.isoformat()))
    for back in (2, 1, 0):
        _fill_day(store, MIDNIGHT - back * DAY, back)
    with store.engine.begin() as tx:
        tx.execute(sa.text("ANALYZE"))


def _fill_day(store: Store, day: datetime, back: int) -> None:
    """One day's stories (today's until NOW), each matched by one watchlist."""
    span = (NOW - day) if back == 0 else DAY
    count = int(STORIES_PER_DAY * (span / DAY))
    base = 10_000_000 * (3 - back)
    item_rows, story_rows, member_rows, match_rows = [], [], [], []
    item_id = base
    for s in range(count):
        watchlist = s % WATCHLISTS
        if watchlist % 100 == 0:  # went quiet two days ago
            continue
        at = day + span * (s / count)
        story_id = item_id + 1
        for _ in range(2 if s % 5 == 0 else 1):
            item_id += 1
            item_rows.append(_item(item_id, at))
            member_rows.append({"item_id": item_id, "story_id": story_id, "similarity": 1.0})
            match_rows.append(
                {"item_id": item_id, "watchlist": name(watchlist), "hits": "[]", "created_at": at}
            )
        story_rows.append({"id": story_id, "created_at": at})
    with store.engine.begin() as tx:
        for table, rows in (
            (items, item_rows),
            (stories, story_rows),
            (story_members, member_rows),
            (matches, match_rows),
        ):
            for start in range(0, len(rows), 20000):
                tx.execute(table.insert(), rows[start : start + 20000])


def _item(item_id: int, at: datetime) -> dict[str, object]:
    return {
        "id": item_id,
        "key": f"u:example.org/{item_id}",
        "feed": f"feed-{item_id % 500}",
        "guid": str(item_id),
        "url": f"https://example.org/{item_id}",
        "title": "t",
        "summary": "",
        "language": "en",
        "published_at": at,
        "first_seen_at": at,
    }


def cycle(store: Store, now: datetime) -> int:
    """What check_spikes does each poll cycle, but compose (no verdict stored here)."""
    settings_of = {name(w): SETTINGS for w in range(WATCHLISTS)}
    judged = histories(store, settings_of, now, SETTINGS.window)
    verdicts = [spike(h, SETTINGS) or silence(h, SETTINGS) for h in judged]
    return sum(v is not None for v in verdicts)


def plan(store: Store, query: sa.Select[Any]) -> str:
    """A query's plan, as the database shows it (the parameters bound)."""
    with store.engine.connect() as connection:
        compiled = query.compile(connection, compile_kwargs={"render_postcompile": True})
        if store.is_sqlite:
            sql, params = f"EXPLAIN QUERY PLAN {compiled}", tuple(compiled.params.values())
        else:
            sql, params = f"EXPLAIN {compiled}", compiled.params  # type: ignore[assignment]
        rows = connection.exec_driver_sql(sql, params)
        return "\n".join(f"    {row[-1] if store.is_sqlite else row[0]}" for row in rows)


def bench(label: str, url: Callable[[], str]) -> None:
    store = open_store(url())
    started = time.perf_counter()
    fill(store)
    print(f"{label}: filled in {time.perf_counter() - started:.0f} s")
    first = time.perf_counter()
    fired = cycle(store, NOW)  # counts yesterday's and the day before's matches, once
    print(f"  first cycle (counts 2 days into story_days): {time.perf_counter() - first:.2f} s")
    timings = []
    for k in range(CYCLES):
        start = time.perf_counter()
        fired = cycle(store, NOW + timedelta(seconds=5 * k))
        timings.append(time.perf_counter() - start)
    median, worst = statistics.median(timings) * 1000, max(timings) * 1000
    verdict = "ok" if median <= 200 else "OVER the 200 ms target"
    print(
        f"  cycle over {WATCHLISTS} watchlists: median {median:.1f} ms, worst {worst:.1f} ms "
        f"({verdict}); {fired} verdicts"
    )
    start = time.perf_counter()
    with store.engine.begin() as tx:
        tx.execute(story_days.delete().where(story_days.c.day == (MIDNIGHT - DAY).date()))
        _count(tx, (MIDNIGHT - DAY).date(), (MIDNIGHT - DAY).date())
    print(
        f"  count a day ({STORIES_PER_DAY} stories): {(time.perf_counter() - start) * 1000:.0f} ms"
    )
    print(f"  plan, matches per watchlist (every cycle):\n{plan(store, _matches_since(NOW - DAY))}")
    exact = _stories_since(NOW - DAY).where(matches.c.watchlist.in_([name(1), name(2)]))
    print(f"  plan, stories of the few that might fire:\n{plan(store, exact)}")
    store.close()


def digest_size() -> None:
    renderer = Renderer(DigestSettings("monitor@example.org", ZoneInfo("Europe/Berlin")))
    entries = [
        DigestEntry(
            (w * 10 + k,),
            f"Watchlist {w}",
            Item(
                f"k{w}-{k}",
                "heise",
                "g",
                f"https://example.org/{w}/{k}",
                f"Headline number {k} about watchlist {w}",
                "A summary of the article. " * 8,
                NOW,
                "en",
            ),
        )
        for w in range(10)
        for k in range(5)
    ]
    trends = {f"Watchlist {w}": [(w * 3 + d * 7) % 40 for d in range(14)] for w in range(10)}
    charted = len(renderer.render("a@example.org", entries, NOW, trends=trends).mime)
    plain = len(renderer.render("a@example.org", entries, NOW).mime)
    verdict = "ok" if charted < 100_000 else "OVER the 100 KB target"
    print(
        f"digest, 10 watchlists x 5 entries: {charted / 1000:.1f} KB with 10 charts ({verdict}), "
        f"{plain / 1000:.1f} KB without: {(charted - plain) / 10_000:.1f} KB a chart"
    )


def main() -> int:
    digest_size()
    with TemporaryDirectory() as directory:
        bench("sqlite", lambda: f"sqlite:///{Path(directory) / 'bench.db'}")
    postgres = os.environ.get("MONITOR_TEST_POSTGRES_URL")
    if postgres:
        with postgres_schema(postgres) as fresh:
            bench("postgresql", fresh)
    else:
        print("postgresql skipped: MONITOR_TEST_POSTGRES_URL is not set")
    return 0


if __name__ == "__main__":
    sys.exit(main())
