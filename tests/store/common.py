"""What the store tests share: a clock, items, a matcher, recipients."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from monitor.models import Hit, Item, Match

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


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
