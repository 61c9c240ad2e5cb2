"""Parse throughput: monitor's parse stage against feedparser.parse alone, on the same bytes.

Prints ms per feed for both, and the ratio: normalization (plain text, canonical links,
UTC dates, keys) should cost little on top of feedparser itself. The baseline is feedparser
as shipped: monitor.parse gives feedparser's parser a cheaper deepcopy (see _deepcopy there),
undone while the baseline runs; feedparser with that deepcopy alone is printed too. The
three run interleaved, round after round: the machine's speed drifts.
Uses the real publisher feeds in ../shared/corpus/feeds when present.
"""

from __future__ import annotations

import copy
import io
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import feedparser
import feedparser.mixin

from monitor.parse import parse_feed

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "feeds"


def main() -> int:
    files = sorted(CORPUS.glob("*.xml"))
    if not files:
        print(f"skipped: no feed corpus at {CORPUS}")
        return 0
    bodies = [path.read_bytes() for path in files]
    now = datetime.now(UTC)
    rounds = 5
    patched = feedparser.mixin.copy

    def shipped() -> int:
        feedparser.mixin.copy = copy
        try:
            return sum(len(feedparser.parse(io.BytesIO(body)).entries) for body in bodies)
        finally:
            feedparser.mixin.copy = patched

    def with_deepcopy() -> int:
        return sum(len(feedparser.parse(io.BytesIO(body)).entries) for body in bodies)

    def normalized() -> int:
        url = "https://example.org/"
        return sum(len(parse_feed(b, feed_name="f", url=url, now=now).items) for b in bodies)

    runs: list[tuple[str, Callable[[], int]]] = [
        ("feedparser", shipped),
        ("deepcopy", with_deepcopy),
        ("monitor", normalized),
    ]
    spent = dict.fromkeys([name for name, _ in runs], 0.0)
    items = 0
    for _ in range(rounds):
        for name, run in runs:
            started = time.perf_counter()
            found = run()
            spent[name] += time.perf_counter() - started
            items += found if name == "monitor" else 0
    baseline, lighter, ours = (spent[name] / (rounds * len(bodies)) for name, _ in runs)

    print(f"feeds: {len(bodies)}, items per round: {items // rounds}")
    print(f"baseline feedparser.parse alone, as shipped: {baseline * 1000:.2f} ms/feed")
    print(
        f"feedparser.parse with monitor's deepcopy: {lighter * 1000:.2f} ms/feed "
        f"({lighter / baseline:.2f}x)"
    )
    print(f"monitor parse_feed (normalized): {ours * 1000:.2f} ms/feed")
    print(f"ratio: {ours / baseline:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
