"""Parse throughput: monitor's parse stage against feedparser.parse alone, on the same bytes.

Prints ms per feed for both, and the ratio: normalization (plain text, canonical links,
UTC dates, keys) should cost little on top of feedparser itself. The baseline is feedparser
as shipped: monitor.parse makes two of feedparser's hot paths cheaper (a deepcopy and
FeedParserDict's lookups, see _speed_ups there), undone while the baseline runs
(feedparser_as_shipped); feedparser with them alone is printed too. The three run
interleaved, round after round: the machine's speed drifts.
Uses the real publisher feeds in ../shared/corpus/feeds when present.
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import feedparser

from monitor.parse import feedparser_as_shipped, parse_feed

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "feeds"


def main() -> int:
    files = sorted(CORPUS.glob("*.xml"))
    if not files:
        print(f"skipped: no feed corpus at {CORPUS}")
        return 0
    bodies = [path.read_bytes() for path in files]
    now = datetime.now(UTC)
    rounds = 5

    def shipped() -> int:
        with feedparser_as_shipped():
            return sum(len(feedparser.parse(io.BytesIO(body)).entries) for body in bodies)

    def sped_up() -> int:
        return sum(len(feedparser.parse(io.BytesIO(body)).entries) for body in bodies)

    def normalized() -> int:
        url = "https://example.org/"
        return sum(len(parse_feed(b, feed_name="f", url=url, now=now).items) for b in bodies)

    runs: list[tuple[str, Callable[[], int]]] = [
        ("feedparser", shipped),
        ("sped up", sped_up),
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
        f"feedparser.parse with monitor's speed-ups: {lighter * 1000:.2f} ms/feed "
        f"({lighter / baseline:.2f}x)"
    )
    print(f"monitor parse_feed (normalized): {ours * 1000:.2f} ms/feed")
    print(f"ratio: {ours / baseline:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
