"""Ingest throughput and size: normalize -> dedupe -> cluster, against a plain INSERT.

100,000 items in feed-sized batches of 500: 60 % unique, 30 % exact duplicates (the same
article from another feed, its link with tracking parameters, www./m./AMP variants) and
10 % near duplicates (a wire copy with a few words changed, under its own link). Each goes
through canonical_url/make_key, Store.ingest (dedupe keys, MinHash/LSH clustering, story
membership (for items that match: the bench watches "xAI", 2 % of items), matching) into
SQLite, and into PostgreSQL when MONITOR_TEST_POSTGRES_URL is
set. The baseline, measured in the same run: the same item rows through plain SQLAlchemy
INSERT ... ON CONFLICT DO NOTHING. Sizes: per ingested item before and after `prune`.
Last, precision and recall of same-story detection on tests/data/story_pairs.yaml.

Usage: python bench/bench_ingest.py [N]
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory

import sqlalchemy as sa
import yaml
from common import postgres_schema

from monitor.config import parse_config
from monitor.models import Hit, Item, Match
from monitor.parse import make_key
from monitor.retention import prune_store
from monitor.store import create_engine, open_store
from monitor.store.dialect import insert
from monitor.store.schema import item_row, items
from monitor.stories import DedupeSettings, assign_stories, fingerprints
from monitor.urls import canonical_url

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
BATCH = 500
FEEDS = [f"outlet{n}" for n in range(40)]
PAIRS = Path(__file__).resolve().parents[1] / "tests" / "data" / "story_pairs.yaml"
CONFIG = parse_config(
    """
feeds: [{name: outlet0, url: "https://outlet0.example/rss"}]
watchlists: [{name: xAI, terms: [xAI], recipients: [a@example.org]}]
"""
)


# --------------------------------------------------------------------------- the workload


def make_raw(count: int, seed: int = 5) -> list[tuple[str, str, str, str, str]]:
    """(feed, guid, link, title, summary) in arrival order, with duplicates mixed in."""
    rng = random.Random(seed)
    vocabulary = [_word(rng) for _ in range(30_000)]
    raw: list[tuple[str, str, str, str, str]] = []
    for n in range(count):
        kind = rng.random()
        if raw and kind < 0.30:  # the same article, linked differently, in another feed
            feed, _, link, title, summary = raw[rng.randrange(len(raw))]
            raw.append((rng.choice(FEEDS), f"dup{n}", _variant(rng, link), title, summary))
        elif raw and kind < 0.40:  # a wire copy with small edits under its own link
            _, _, _, title, summary = raw[rng.randrange(len(raw))]
            feed = rng.choice(FEEDS)
            raw.append((feed, f"near{n}", _link(feed, n), title, _edit(rng, summary, vocabulary)))
        else:
            feed = rng.choice(FEEDS)
            words = rng.choices(vocabulary, k=40)
            title = " ".join(words[:8]) + (" xAI" if rng.random() < 0.02 else "")
            raw.append((feed, f"g{n}", _link(feed, n), title, " ".join(words[8:])))
    return raw


def _word(rng: random.Random) -> str:
    return "".join(rng.choices("abcdefghijklmnopqrstuvwxyzäöü", k=rng.randint(4, 11)))


def _link(feed: str, n: int) -> str:
    return f"https://www.{feed}.example/news/{n}.html?utm_source=rss&utm_medium=feed"


def _variant(rng: random.Random, link: str) -> str:
    bare = link.split("?")[0]
    return rng.choice(
        [
            link,
            bare.replace("https://www.", "http://") + "?fbclid=x",
            bare.replace("https://www.", "https://m."),
            bare.replace(".html", ".amp.html"),
            bare + "?amp=1",
        ]
    )


def _edit(rng: random.Random, text: str, vocabulary: Sequence[str]) -> str:
    words = text.split()
    for _ in range(3):  # three of 32 words changed: a lightly edited reprint
        words[rng.randrange(len(words))] = rng.choice(vocabulary)
    return " ".join(words)


def normalize(raw: Sequence[tuple[str, str, str, str, str]]) -> list[Item]:
    """The normalize stage: canonical link, dedupe key, plain Item."""
    normalized = []
    for feed, guid, link, title, summary in raw:
        url = canonical_url(link)
        normalized.append(Item(make_key(feed, guid, url), feed, guid, url, title, summary, NOW, ""))
    return normalized


def watch_xai(item: Item) -> list[Match]:
    return [Match("xAI", (Hit("xAI", "title", 0, 3),))] if item.title.endswith("xAI") else []


# --------------------------------------------------------------------------- the runs


def batches(values: Sequence[Item]) -> Iterator[Sequence[Item]]:
    for start in range(0, len(values), BATCH):
        yield values[start : start + BATCH]


def run_pipeline(url: str, raw: Sequence[tuple[str, str, str, str, str]]) -> tuple[float, int]:
    store = open_store(url)
    try:
        started = time.perf_counter()
        new = 0
        for batch in batches(normalize(raw)):
            new += len(store.ingest(batch, watch_xai, {"xAI": ("a@example.org",)}, NOW).new_items)
        return time.perf_counter() - started, new
    finally:
        store.close()


def run_baseline(url: str, raw: Sequence[tuple[str, str, str, str, str]]) -> float:
    """The same item rows, INSERT ... ON CONFLICT DO NOTHING, executemany per batch."""
    open_store(url).close()  # same schema
    engine = create_engine(url)
    try:
        started = time.perf_counter()
        for batch in batches(normalize(raw)):
            rows = [item_row(item, NOW) for item in batch]
            with engine.begin() as tx:
                tx.execute(insert(tx, items).on_conflict_do_nothing(), rows)
        return time.perf_counter() - started
    finally:
        engine.dispose()


def sizes(url: str, count: int) -> tuple[float, float]:
    """Bytes per ingested item now, and after pruning with the default retention."""
    before = database_bytes(url)
    store = open_store(url)
    try:
        prune_store(store, CONFIG, NOW + timedelta(days=31))
    finally:
        store.close()
    return before / count, database_bytes(url) / count


def database_bytes(url: str) -> int:
    engine = sa.create_engine(url)  # not monitor's: that one opens every transaction at once
    try:
        if engine.dialect.name == "sqlite":
            with engine.connect() as connection:
                connection.exec_driver_sql("VACUUM")
                pages = connection.exec_driver_sql("PRAGMA page_count").scalar_one()
                size = connection.exec_driver_sql("PRAGMA page_size").scalar_one()
                return int(pages) * int(size)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM FULL")
            total = connection.execute(
                sa.text(
                    "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
                )
            ).scalar_one()
            return int(total or 0)
    finally:
        engine.dispose()


def report(backend: str, count: int, seconds: float, baseline: float, new: int) -> None:
    print(
        f"{backend:10} pipeline {count / seconds:9,.0f} items/s ({seconds:6.2f} s, {new:,} new)"
        f" | baseline INSERT ON CONFLICT {count / baseline:9,.0f} items/s ({baseline:5.2f} s)"
        f" | pipeline/baseline time {seconds / baseline:4.1f}x"
    )


def bench_backend(backend: str, urls: Callable[[], str], raw: Sequence[tuple]) -> None:
    url = urls()
    seconds, new = run_pipeline(url, raw)
    baseline_url = urls()
    baseline = run_baseline(baseline_url, raw)
    report(backend, len(raw), seconds, baseline, new)
    per_item, pruned = sizes(url, len(raw))
    plain = database_bytes(baseline_url) / len(raw)
    print(
        f"{backend:10} size per ingested item: {per_item:6.0f} B before prune, "
        f"{pruned:5.0f} B after prune (target <= 2048) | baseline items table {plain:6.0f} B"
    )


# --------------------------------------------------------------------------- quality


def precision_recall() -> None:
    """Each labeled pair through fingerprints -> LSH bands -> exact Jaccard, per threshold."""
    pairs = yaml.safe_load(PAIRS.read_text(encoding="utf-8"))["pairs"]
    default = DedupeSettings().similarity
    print(f"same-story detection on {len(pairs)} labeled pairs (LSH candidates + exact Jaccard):")
    for threshold in (0.30, 0.33, 0.36, 0.39, 0.42, 0.45, 0.50):
        settings = replace(DedupeSettings(), similarity=threshold)
        tp = fp = fn = 0
        for pair in pairs:
            a, b = fingerprints([tuple(pair["a"].values()), tuple(pair["b"].values())], settings)
            assigned = assign_stories([(1, "a", a), (2, "b", b)], {}, threshold)
            same = assigned[1].story_id == 1
            truth = pair["kind"] != "topic"
            tp, fp, fn = tp + (same and truth), fp + (same and not truth), fn + (truth and not same)
        precision = tp / (tp + fp) if tp + fp else 1.0
        recall = tp / (tp + fn)
        mark = "  <- default" if threshold == default else ""
        print(f"  threshold {threshold:.2f}: precision {precision:.3f} recall {recall:.3f}{mark}")


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    raw = make_raw(count)
    print(f"{count:,} items, batches of {BATCH}: 60 % unique, 30 % exact, 10 % near duplicates")
    with TemporaryDirectory() as directory:
        counter = iter(range(100))
        bench_backend("sqlite", lambda: f"sqlite:///{Path(directory) / f'{next(counter)}.db'}", raw)
    postgres = os.environ.get("MONITOR_TEST_POSTGRES_URL")
    if postgres:
        with postgres_schema(postgres) as fresh:
            bench_backend("postgresql", fresh, raw)
    else:
        print("postgresql skipped: MONITOR_TEST_POSTGRES_URL is not set")
    precision_recall()
    return 0


if __name__ == "__main__":
    sys.exit(main())
