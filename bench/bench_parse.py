"""Parse throughput: monitor's parse stage against feedparser.parse alone, on the same bytes.

Prints ms per feed for both, and the ratio: normalization (plain text, canonical links,
UTC dates, keys) should cost little on top of feedparser itself.
Uses the real publisher feeds in ../shared/corpus/feeds when present.
"""

from __future__ import annotations

import io
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import feedparser

from monitor.parse import parse_feed

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "feeds"


def main() -> int:
    files = sorted(CORPUS.glob("*.xml"))
    if not files:
        print(f"skipped: no feed corpus at {CORPUS}")
        return 0
    bodies = [path.read_bytes() for path in files]
    now = datetime.now(UTC)
    rounds = 3

    started = time.perf_counter()
    for _ in range(rounds):
        for body in bodies:
            feedparser.parse(io.BytesIO(body))
    baseline = (time.perf_counter() - started) / (rounds * len(bodies))

    started = time.perf_counter()
    items = 0
    for _ in range(rounds):
        for body in bodies:
            items += len(parse_feed(body, feed_name="f", url="https://example.org/", now=now).items)
    ours = (time.perf_counter() - started) / (rounds * len(bodies))

    print(f"feeds: {len(bodies)}, items per round: {items // rounds}")
    print(f"baseline feedparser.parse alone: {baseline * 1000:.2f} ms/feed")
    print(f"monitor parse_feed (normalized): {ours * 1000:.2f} ms/feed")
    print(f"ratio: {ours / baseline:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
